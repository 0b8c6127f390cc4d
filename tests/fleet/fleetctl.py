#!/usr/bin/python3
"""Build, start and stop a test fleet of real Debian hosts on this machine, without a container engine.

Each host has its own root filesystem (an overlay over a cached debootstrap image), hostname (UTS namespace),
PID and mount namespaces, network namespace with one veth address on a private bridge, its own sshd and its
own Zabbix agent from that release's Debian packages. The bridge lives in a dedicated network namespace
(zts-hub); the controller reaches it through one veth (10.231.0.1/24). Nothing is routed anywhere: the hosts
have no default route and no forwarding is set up.

    fleetctl.py build [IMAGE ...]          build the cached images (debootstrap minbase + packages)
    fleetctl.py up (--spec FILE | --agents N) [--inventory DIR]
                                           start a fleet and write its inventories
    fleetctl.py down                       stop every host, remove namespaces, veths and run dirs
    fleetctl.py status                     list what runs

Needs root, debootstrap, iproute2, util-linux (unshare), overlayfs. Caches under /root/.cache/zts (ZTS_CACHE).
"""

from __future__ import print_function

import argparse
import fcntl
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

CACHE = os.environ.get("ZTS_CACHE", "/root/.cache/zts")
IMAGES_DIR = os.path.join(CACHE, "rootfs")
RUN_DIR = os.path.join(CACHE, "fleet-run")
SSH_DIR = os.path.join(CACHE, "ssh")
KEY = os.path.join(SSH_DIR, "id_ed25519")
STATE = os.path.join(RUN_DIR, "state.json")
HERE = os.path.dirname(os.path.abspath(__file__))
BOOT = os.path.join(HERE, "boot.sh")

MIRROR = os.environ.get("ZTS_MIRROR", "http://deb.debian.org/debian")
def _python27_prefix():
    """The installation prefix of CentOS 7's Python for the Python 2.7 host: $ZTS_PY27, else the newest pyenv 2.7.x
    that tests/interpreters.py finds (loaded by path: this tool runs as a script)."""
    if os.environ.get("ZTS_PY27"):
        return os.environ["ZTS_PY27"]
    spec = importlib.util.spec_from_file_location("interpreters", os.path.join(HERE, os.pardir, "interpreters.py"))
    interpreters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(interpreters)
    python = interpreters.find_interpreters(["2.7"]).get("2.7")
    return os.path.dirname(os.path.dirname(python)) if python else ""


PY27 = _python27_prefix()

NET_PREFIX = "10.231.0."
CONTROLLER_IP = NET_PREFIX + "1"
HUB_NS = "zts-hub"
HOST_NS_PREFIX = "zts-h-"
CTL_VETH = "zts-ctl"
SSH_PORT = 22
AGENT_PORT = 10050
SHAPE = os.path.join(HERE, "shape.sh")
# Agent configuration shapes real fleets have, applied by shape.sh at a host's first boot (see there).
SHAPES = ("", "el7", "incdir", "psk", "unsafe")
# Where the server host keeps each PSK agent's key (root only), for zabbix_get --tls-psk-file.
SERVER_PSK_DIR = "/etc/zts-psk"

BASE_PACKAGES = ["openssh-server"]
IMAGES = {
    "bullseye-agent": {"suite": "bullseye", "packages": BASE_PACKAGES + ["python3", "zabbix-agent"]},
    # net-tools: the old recipe's script (netstat) works on the hosts shaped as the recipe left them (shape.sh).
    "bookworm-agent": {"suite": "bookworm", "packages": BASE_PACKAGES + ["python3", "zabbix-agent", "net-tools"]},
    "bookworm-agent2": {"suite": "bookworm", "packages": BASE_PACKAGES + ["python3", "zabbix-agent2"]},
    "trixie-agent": {"suite": "trixie", "packages": BASE_PACKAGES + ["python3", "zabbix-agent"]},
    # CentOS 7's Python: no python3 at all, /usr/bin/python is a Python 2.7 (pyenv's build, copied in).
    "bookworm-py27": {"suite": "bookworm", "packages": BASE_PACKAGES + ["zabbix-agent", "net-tools"], "python27": True},
    # The Zabbix "server" side: zabbix_get ships in the proxy/server packages.
    "bookworm-server": {"suite": "bookworm", "packages": BASE_PACKAGES + ["python3", "zabbix-proxy-sqlite3"]},
}

# A scale fleet (--agents N): the server plus N agents cycling through these images.
SCALE_CYCLE = ["bookworm-agent", "bullseye-agent", "trixie-agent", "bookworm-agent2"]


def log(msg):
    sys.stderr.write("fleetctl: {0}\n".format(msg))
    sys.stderr.flush()


def run(cmd, check=True, **kw):
    proc = subprocess.run(cmd, **kw)
    if check and proc.returncode != 0:
        raise SystemExit("fleetctl: command failed ({0}): {1}".format(proc.returncode, " ".join(cmd)))
    return proc


def out(cmd):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          universal_newlines=True).stdout


# ---------------------------------------------------------------------------------------------------------
# images

def chroot_run(root, script):
    """Run a shell script chrooted in root, in its own PID and mount namespaces: whatever a package's
    maintainer script starts dies with the namespace, and /proc, /dev, /sys mounts never outlive it."""
    wrapper = (
        'set -e; R="$1"; '
        'mount -t proc proc "$R/proc"; mount -t sysfs sys "$R/sys"; '
        'mount --rbind /dev "$R/dev"; '
        'cp /etc/resolv.conf "$R/etc/resolv.conf"; '
        'chroot "$R" /bin/sh -ec "$2"'
    )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8",
               PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
         "sh", "-c", wrapper, "chroot_run", root, script], env=env)


def images_lock():
    """Held while building: two runs never build the same image at once."""
    os.makedirs(IMAGES_DIR, exist_ok=True)
    lock = open(os.path.join(IMAGES_DIR, ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def image_current(name):
    """The cached image exists and was built from the packages IMAGES lists now (a changed list rebuilds it)."""
    marker = os.path.join(IMAGES_DIR, name, ".zts-image")
    try:
        with open(marker) as fh:
            return json.load(fh).get("packages") == IMAGES[name]["packages"]
    except (OSError, ValueError):
        return False


def build_image(name, force=False):
    spec = IMAGES[name]
    final = os.path.join(IMAGES_DIR, name)
    if image_current(name) and not force:
        return 0.0
    t0 = time.time()
    suite = spec["suite"]
    base_tar = os.path.join(IMAGES_DIR, "{0}-minbase.tar".format(suite))
    work = final + ".build"
    if os.path.exists(work):
        shutil.rmtree(work)
    if not os.path.exists(base_tar):
        base = os.path.join(IMAGES_DIR, "{0}-minbase.build".format(suite))
        if os.path.exists(base):
            shutil.rmtree(base)
        log("debootstrap --variant=minbase {0} (from {1})".format(suite, MIRROR))
        run(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
             "debootstrap", "--variant=minbase", suite, base, MIRROR],
            stdout=subprocess.DEVNULL)
        run(["tar", "-C", base, "--numeric-owner", "-cf", base_tar + ".tmp", "."])
        os.rename(base_tar + ".tmp", base_tar)
        shutil.rmtree(base)
    os.makedirs(work)
    run(["tar", "-C", work, "--numeric-owner", "-xf", base_tar])
    # Like this machine: apt never starts services; hosts start their daemons at boot (boot.sh).
    with open(os.path.join(work, "usr/sbin/policy-rc.d"), "w") as fh:
        fh.write("#!/bin/sh\nexit 101\n")
    os.chmod(os.path.join(work, "usr/sbin/policy-rc.d"), 0o755)
    log("{0}: apt-get install {1}".format(name, " ".join(spec["packages"])))
    chroot_run(work, "apt-get -q update >/dev/null; "
                     "apt-get -q -y install --no-install-recommends {0} >/dev/null; "
                     "apt-get clean; rm -rf /var/lib/apt/lists/*".format(" ".join(spec["packages"])))
    if spec.get("python27"):
        dest = os.path.join(work, "opt/python2.7")
        shutil.copytree(PY27, dest, symlinks=True)
        with open(os.path.join(work, "etc/ld.so.conf.d/python2.7.conf"), "w") as fh:
            fh.write("/opt/python2.7/lib\n")
        chroot_run(work, "ldconfig; ln -sf /opt/python2.7/bin/python2.7 /usr/bin/python2.7; "
                         "ln -sf python2.7 /usr/bin/python2; ln -sf python2.7 /usr/bin/python; "
                         "test ! -e /usr/bin/python3; /usr/bin/python -c 'import json, socket, struct'")
    with open(os.path.join(work, ".zts-image"), "w") as fh:
        json.dump({"image": name, "suite": suite, "packages": spec["packages"],
                   "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, fh)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(work, final)
    took = time.time() - t0
    log("{0}: built in {1:.0f}s".format(name, took))
    return took


def cmd_build(args):
    names = args.images or sorted(IMAGES)
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise SystemExit("fleetctl: unknown image(s) {0}; known: {1}".format(unknown, ", ".join(sorted(IMAGES))))
    t0 = time.time()
    with images_lock():
        if args.force:
            # Rebuild from a fresh debootstrap too (new point releases).
            for suite in set(IMAGES[n]["suite"] for n in names):
                tarball = os.path.join(IMAGES_DIR, "{0}-minbase.tar".format(suite))
                if os.path.exists(tarball):
                    os.remove(tarball)
        for name in names:
            build_image(name, force=args.force)
    log("images ready in {0:.0f}s: {1}".format(time.time() - t0, ", ".join(names)))


# ---------------------------------------------------------------------------------------------------------
# fleet

def fleet_hosts(spec_file, agents):
    """The hosts to start. A spec is a JSON list of molecule-style platforms: name, image, address
    (10.231.0.N), groups (zabbix_servers marks the server), optional broken: allowlist (the agent's Server=
    leaves out the fleet's server), optional shape: the agent configuration's shape (SHAPES, shape.sh).
    molecule/fleet's create.yml passes its platforms."""
    if spec_file:
        with open(spec_file) as fh:
            platforms = json.load(fh)
    else:
        platforms = [{"name": "zbx-server", "image": "bookworm-server", "address": NET_PREFIX + "10",
                      "groups": ["zabbix_servers"]}]
        for i in range(agents or 0):
            platforms.append({"name": "agent{0:02d}".format(i + 1), "image": SCALE_CYCLE[i % len(SCALE_CYCLE)],
                              "address": NET_PREFIX + str(11 + i), "groups": ["zabbix_agents"]})
    hosts = []
    for p in platforms:
        if p.get("image") not in IMAGES:
            raise SystemExit("fleetctl: {0}: unknown image {1!r}; known: {2}".format(
                p.get("name"), p.get("image"), ", ".join(sorted(IMAGES))))
        address = p.get("address", "")
        if not address.startswith(NET_PREFIX) or not 2 <= int(address[len(NET_PREFIX):] or 0) <= 254:
            raise SystemExit("fleetctl: {0}: address must be {1}2-254, got {2!r}".format(
                p["name"], NET_PREFIX, address))
        if p.get("shape", "") not in SHAPES:
            raise SystemExit("fleetctl: {0}: unknown shape {1!r}; known: {2}".format(
                p["name"], p.get("shape"), ", ".join(s for s in SHAPES if s)))
        hosts.append({"name": p["name"], "image": p["image"], "address": address,
                      "ip": int(address[len(NET_PREFIX):]), "groups": list(p.get("groups", [])),
                      "server": "zabbix_servers" in p.get("groups", []), "broken": p.get("broken", ""),
                      "shape": p.get("shape", "")})
    if sum(1 for h in hosts if h["server"]) != 1:
        raise SystemExit("fleetctl: a fleet needs exactly one host in group zabbix_servers")
    return hosts


def ensure_key():
    if not os.path.exists(KEY):
        os.makedirs(SSH_DIR, mode=0o700, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "zts-fleet", "-f", KEY])
    with open(KEY + ".pub") as fh:
        return fh.read()


def netns_exists(name):
    return os.path.exists(os.path.join("/run/netns", name))


def setup_hub():
    if netns_exists(HUB_NS):
        return
    run(["ip", "netns", "add", HUB_NS])
    hub = ["ip", "-n", HUB_NS]
    run(hub + ["link", "set", "lo", "up"])
    run(hub + ["link", "add", "br0", "type", "bridge"])
    run(hub + ["link", "set", "br0", "up"])
    run(["ip", "link", "add", CTL_VETH, "type", "veth", "peer", "name", "ctl", "netns", HUB_NS])
    run(hub + ["link", "set", "ctl", "master", "br0", "up"])
    run(["ip", "addr", "add", CONTROLLER_IP + "/24", "dev", CTL_VETH])
    run(["ip", "link", "set", CTL_VETH, "up"])


def setup_host_net(host):
    ns = HOST_NS_PREFIX + host["name"]
    peer = "v{0}".format(host["ip"])
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", HUB_NS])
    run(["ip", "-n", HUB_NS, "link", "set", peer, "master", "br0", "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "addr", "add", "{0}{1}/24".format(NET_PREFIX, host["ip"]), "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    return ns


def psk_identity(host):
    return "zts-psk-" + host["name"]


def make_psks(hosts):
    """A fresh PSK for every psk-shaped host, made at each start (never stored in the repository): the agent's
    copy goes to its host dir, the server's copy of each to the server's host dir (psk/NAME.psk)."""
    server = [h for h in hosts if h["server"]][0]
    server_dir = os.path.join(RUN_DIR, server["name"], "psk")
    for h in hosts:
        if h["shape"] != "psk":
            continue
        key = secrets.token_hex(32) + "\n"
        for path in (os.path.join(RUN_DIR, h["name"], "psk.key"), os.path.join(server_dir, h["name"] + ".psk")):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(key)


def start_host(host, pubkey, server_ip):
    hdir = os.path.join(RUN_DIR, host["name"])
    for sub in ("upper", "work", "root"):
        os.makedirs(os.path.join(hdir, sub), exist_ok=True)
    with open(os.path.join(hdir, "authorized_keys"), "w") as fh:
        fh.write(pubkey)
    ns = setup_host_net(host)
    if host["broken"] not in ("", "allowlist"):
        raise SystemExit("fleetctl: {0}: unknown broken mode {1!r} (known: allowlist)".format(
            host["name"], host["broken"]))
    servers = "127.0.0.1" if host["broken"] == "allowlist" else "127.0.0.1,{0}".format(server_ip)
    env = dict(os.environ, ZTS_HOSTNAME=host["name"], ZTS_LOWER=os.path.join(IMAGES_DIR, host["image"]),
               ZTS_HOSTDIR=hdir, ZTS_SERVER=servers, ZTS_SHAPE=host["shape"], ZTS_SHAPE_SCRIPT=SHAPE,
               ZTS_PSK_IDENTITY=psk_identity(host), ZTS_SERVER_PSK_DIR=SERVER_PSK_DIR)
    logf = open(os.path.join(hdir, "boot.log"), "ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "unshare", "--uts", "--ipc", "--mount", "--pid", "--fork",
         "--kill-child", "--propagation", "private", BOOT],
        env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    host["pid"] = proc.pid
    host["netns"] = ns
    return proc


def wait_port(ip, port, deadline):
    while time.time() < deadline:
        try:
            sock = socket.create_connection((ip, port), timeout=1)
            sock.close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def write_inventories(hosts, invdir):
    """Inventories (YAML files that are JSON): fleet.yml has every host in its groups; fleet-py27.yml makes
    the fleet_py27 hosts the zabbix_agents (for the ansible-core 2.16 run); fleet-rollout.yml makes the
    zabbix_agents plus the fleet_broken hosts the zabbix_agents, the broken ones right after the canary."""
    os.makedirs(invdir, exist_ok=True)
    server = [h for h in hosts if h["server"]][0]
    common = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": KEY,
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                   "-o LogLevel=ERROR",
        "zabbix_tcp_status_verify_from": server["name"],
    }

    def hostvars(h):
        python = "/usr/bin/python" if IMAGES[h["image"]].get("python27") else "/usr/bin/python3"
        hv = {"ansible_host": h["address"], "ansible_python_interpreter": python, "fleet_image": h["image"],
              "fleet_shape": h.get("shape", "")}
        if h.get("shape") == "psk":
            # what zabbix_get on the server host needs to reach this agent
            hv["fleet_psk_identity"] = psk_identity(h)
            hv["fleet_psk_file"] = "{0}/{1}.psk".format(SERVER_PSK_DIR, h["name"])
        return hv

    def group(members):
        return {"hosts": dict((h["name"], hostvars(h)) for h in members)}

    def inventory(groups):
        return {"all": {"vars": common, "children": groups}}

    names = sorted(set(g for h in hosts for g in h["groups"]))
    members = dict((g, [h for h in hosts if g in h["groups"]]) for g in names)
    agents = members.get("zabbix_agents", [])
    files = {
        "fleet.yml": inventory(dict((g, group(members[g])) for g in names)),
        "fleet-py27.yml": inventory({"zabbix_servers": group([server]),
                                     "zabbix_agents": group(members.get("fleet_py27", []))}),
        "fleet-rollout.yml": inventory({"zabbix_servers": group([server]),
                                        "zabbix_agents": group(agents[:1] + members.get("fleet_broken", [])
                                                               + agents[1:])}),
    }
    for name, data in files.items():
        with open(os.path.join(invdir, name), "w") as fh:
            fh.write("---\n# Written by tests/fleet/fleetctl.py up; do not edit.\n")
            json.dump(data, fh, indent=2)
            fh.write("\n")
    return sorted(files)


def cmd_up(args):
    if os.path.exists(STATE):
        raise SystemExit("fleetctl: a fleet is already up ({0}); stop it first: fleetctl.py down".format(STATE))
    hosts = fleet_hosts(args.spec, args.agents)
    t0 = time.time()
    built = 0.0
    with images_lock():
        for image in sorted(set(h["image"] for h in hosts)):
            built += build_image(image)
    pubkey = ensure_key()
    os.makedirs(RUN_DIR, exist_ok=True)
    server_ip = [h for h in hosts if h["server"]][0]["address"]
    state = {"hosts": hosts, "started": time.time()}
    try:
        setup_hub()
        make_psks(hosts)
        for h in hosts:
            start_host(h, pubkey, server_ip)
            with open(STATE, "w") as fh:
                json.dump(state, fh, indent=1)
        deadline = time.time() + 60
        for h in hosts:
            if not wait_port(h["address"], SSH_PORT, deadline):
                raise SystemExit("fleetctl: {0} ({1}): sshd did not come up; see {2}".format(
                    h["name"], h["address"], os.path.join(RUN_DIR, h["name"], "boot.log")))
            if not h["server"] and not wait_port(h["address"], AGENT_PORT, deadline):
                raise SystemExit("fleetctl: {0}: the agent did not listen on {1}; see {2}".format(
                    h["name"], AGENT_PORT, os.path.join(RUN_DIR, h["name"], "boot.log")))
    except BaseException:
        cmd_down(args)
        raise
    written = write_inventories(hosts, args.inventory) if args.inventory else []
    state["inventories"] = [os.path.join(args.inventory, n) for n in written]
    with open(STATE, "w") as fh:
        json.dump(state, fh, indent=1)
    log("{0} hosts up in {1:.1f}s (image builds {2:.0f}s); inventories: {3}".format(
        len(hosts), time.time() - t0, built, ", ".join(state["inventories"]) or "-"))


def ns_pids(ns):
    return [int(p) for p in out(["ip", "netns", "pids", ns]).split()]


def cmd_down(args):
    hosts = []
    if os.path.exists(STATE):
        with open(STATE) as fh:
            hosts = json.load(fh)["hosts"]
    # Stop the hosts: killing each namespace's PID 1 (via unshare --kill-child) kills every process in it,
    # and its private mounts (overlay root, /proc, /dev) go with the mount namespace.
    for h in hosts:
        if h.get("pid"):
            try:
                os.killpg(h["pid"], signal.SIGKILL)
            except OSError:
                pass
    namespaces = [n.split()[0] for n in out(["ip", "netns", "list"]).splitlines()
                  if n.startswith(HOST_NS_PREFIX) or n.startswith(HUB_NS)]
    for ns in namespaces:
        for pid in ns_pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.time() + 10
    while time.time() < deadline and any(ns_pids(ns) for ns in namespaces):
        time.sleep(0.1)
    left = dict((ns, ns_pids(ns)) for ns in namespaces if ns_pids(ns))
    for ns in namespaces:
        run(["ip", "netns", "del", ns], check=False)
    if os.path.exists("/sys/class/net/" + CTL_VETH):
        run(["ip", "link", "del", CTL_VETH], check=False)
    mounts = [line.split()[1] for line in open("/proc/mounts") if RUN_DIR in line.split()[1]]
    for mnt in sorted(mounts, reverse=True):
        run(["umount", "-l", mnt], check=False)
    if os.path.exists(RUN_DIR):
        shutil.rmtree(RUN_DIR)
    if left:
        raise SystemExit("fleetctl: processes survived in {0}".format(left))
    log("fleet down: {0} hosts stopped, {1} namespaces removed".format(len(hosts), len(namespaces)))


def cmd_status(args):
    if not os.path.exists(STATE):
        print("no fleet")
        return
    with open(STATE) as fh:
        state = json.load(fh)
    for h in state["hosts"]:
        pids = ns_pids(h["netns"]) if netns_exists(h["netns"]) else []
        print("{0:14} {1:16} {2:13} {3:30} {4:7} {5} processes".format(
            h["name"], h["image"], h["address"], ",".join(h["groups"]), h.get("shape") or "-", len(pids)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("build")
    p.add_argument("images", nargs="*", help="default: all of " + ", ".join(sorted(IMAGES)))
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("up")
    p.add_argument("--spec", help="JSON list of platforms (name, image, address, groups, broken, shape)")
    p.add_argument("--agents", type=int, help="no spec: a scale fleet, the server plus N agent hosts")
    p.add_argument("--inventory", help="directory to write the inventories into")
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("fleetctl: needs root (namespaces, chroot, mounts)")
    {"build": cmd_build, "up": cmd_up, "down": cmd_down, "status": cmd_status}.get(
        args.cmd, lambda a: parser.print_help())(args)


if __name__ == "__main__":
    main()
