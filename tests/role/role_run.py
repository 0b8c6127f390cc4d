# -*- coding: utf-8 -*-
"""The one way the role tests (tests/role/test_role_*.py) drive the role against this machine's real agents.

- run / playbook: a command or the project's playbook.yml from the repo root, as a Result (rc, stdout with stderr,
  text with whitespace folded, since the yaml callback folds long messages); recap() reads the PLAY RECAP line;
- prepare(): the agent as the old recipe leaves it (molecule/shared/prepare.yml), running and answering;
- snapshot() / assert_same(): every file, directory and link under /etc/zabbix and /etc/ansible/facts.d (content
  hash, mode, owner; the role's backups *~ included) plus the agents' boot links, compared file by file;
- fake_python(MODE): an interpreter for the installed script that runs the real counter and then answers what
  MODE says (a lying agent);
- agent helpers: agent_running, agent_pid, zabbix_get, wait_for_answer, set_config, backups_in_etc.

The fixtures built on these (system_agent: the agents' lock; recipe_host; zabbix_tmp) are in conftest.py.
"""
import glob
import hashlib
import os
import re
import stat
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCK = '/tmp/zts-system-agent.lock'
WATCHED = ['/etc/zabbix', '/etc/ansible/facts.d']
BOOT_LINKS = ['/etc/rc?.d/*zabbix*', '/etc/systemd/system/**/*zabbix*']
CONFIG = '/etc/zabbix/zabbix_agentd.conf'
INCLUDE_DIR = '/etc/zabbix/zabbix_agentd.conf.d'
RECIPE_LINE = 'UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2'
RECIPE_KEY = 'tcp.status[LISTEN]'
SEED_KEYS = ['tcp.status[ESTABLISHED]', 'tcp.status[TIME_WAIT]', 'tcp.status[LISTEN]']
SERVICES = {'agent': 'zabbix-agent', 'agent2': 'zabbix-agent2'}
PIDFILES = {'agent': '/run/zabbix/zabbix_agentd.pid', 'agent2': '/run/zabbix/zabbix_agent2.pid'}
THIEF_PID = '/tmp/zts-fake-thief.pid'
FAKES = '/tmp/zts-fake-*.py'


# ------------------------------------------------------------------------------------------------------------
# Commands and playbook runs


class Result(object):
    """A finished command: rc, stdout (stderr appended: ansible-core 2.19 prints failures there), and text (stdout
    with every run of whitespace made one space, since the yaml callback folds long messages)."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.stdout = proc.stdout + proc.stderr
        self.text = ' '.join(self.stdout.split())

    def tail(self):
        return self.stdout[-4000:]


def run(args, **kwargs):
    return Result(subprocess.run(args, cwd=ROOT, capture_output=True, text=True, **kwargs))


def playbook(*args, **kwargs):
    return run(['ansible-playbook', 'playbook.yml'] + list(args), **kwargs)


def recap(result, host='localhost'):
    """{'ok': n, 'changed': n, 'unreachable': n, 'failed': n, ...} of the host's PLAY RECAP line."""
    match = re.search(r'^%s\s+:\s+(ok=.*)$' % re.escape(host), result.stdout, re.M)
    assert match, result.tail()
    return dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', match.group(1)))


def verify_message(key, value):
    """The verify's failure for one key (a regex), as the role words it (on Result.text: whitespace folded)."""
    return re.compile(r"-k '%s'` run on localhost answered '%s'; expected" % (key, value))


def unchanged_run(result, host='localhost'):
    """True when the run succeeded and changed nothing on host."""
    counts = recap(result, host)
    return result.rc == 0 and (counts['changed'], counts['unreachable'], counts['failed']) == (0, 0, 0)


# ------------------------------------------------------------------------------------------------------------
# The host's files


def read(path):
    with open(path) as handle:
        return handle.read()


def write(path, text):
    with open(path, 'w') as handle:
        handle.write(text)


def snapshot(tops=WATCHED):
    """Every file under tops, the role's backups (*~) included: content hash, mode and owner (symlinks: their
    target); plus the agents' boot links and units, so that a change of the boot-enabled state shows."""
    files = {}
    for top in tops:
        for folder, dirs, names in os.walk(top):
            for name in names + dirs:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    files[path] = ('->', os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    files[path] = ('dir', stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
                else:
                    with open(path, 'rb') as handle:
                        digest = hashlib.sha256(handle.read()).hexdigest()
                    files[path] = (digest, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    for pattern in BOOT_LINKS:
        for path in glob.glob(pattern, recursive=True):
            files[path] = ('boot', os.path.realpath(path))
    return files


def changed_paths(before, after):
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


def assert_same(before, after):
    """Names the files that differ, rather than printing two dicts of hundreds of entries."""
    changed = changed_paths(before, after)
    assert not changed, 'changed, created or removed: %s' % ['%s: %s -> %s' % (p, before.get(p), after.get(p))
                                                             for p in changed]


def backups_in_etc():
    return [os.path.join(folder, name) for folder, _dirs, names in os.walk('/etc/zabbix') for name in names
            if name.endswith('~')]


# ------------------------------------------------------------------------------------------------------------
# The agents


def agent_running(flavour='agent'):
    return run(['service', SERVICES[flavour], 'status']).rc == 0


def agent_pid(flavour='agent'):
    return read(PIDFILES[flavour]).strip()


def zabbix_get(key, port=10050):
    """The agent's answer (zabbix_get's stdout; its own errors, such as a refused connection, go to stderr)."""
    return subprocess.run(['zabbix_get', '-s', '127.0.0.1', '-p', str(port), '-k', key], capture_output=True,
                          text=True).stdout.strip()


def wait_for_answer(key, timeout=20, port=10050):
    """The agent's answer for key once it is a number (or whatever it answers when timeout runs out)."""
    deadline = time.time() + timeout
    while True:
        value = zabbix_get(key, port)
        if value.isdigit() or time.time() > deadline:
            return value
        time.sleep(0.2)


def wait_for_agent(timeout=10):
    value = wait_for_answer('agent.ping', timeout)
    assert value == '1', 'the agent does not answer: ' + value


def set_config(edit, wait=True):
    """Rewrite the classic agent's main configuration with edit(text) and restart the agent on it."""
    write(CONFIG, edit(read(CONFIG)))
    assert run(['service', SERVICES['agent'], 'restart']).rc == 0
    if wait:
        wait_for_agent()


def prepare(flavour='agent'):
    """The agent as the old recipe leaves it, running (molecule/shared/prepare.yml)."""
    result = run(['ansible-playbook', 'molecule/shared/prepare.yml', '-e', 'zabbix_tcp_status_test_flavour=' + flavour])
    assert result.rc == 0, result.tail()
    assert agent_running(flavour)
    assert wait_for_answer(RECIPE_KEY).isdigit(), 'the recipe answers before the role runs'


def recipe_answers():
    """The agent answers the recipe's key with the recipe's script (ours would call FOO an unknown state)."""
    return zabbix_get(RECIPE_KEY).isdigit() and 'unknown TCP state' not in zabbix_get('tcp.status[FOO]')


def stop_agents():
    for service in SERVICES.values():
        run(['service', service, 'stop'])


def package_installed(name):
    out = run(['dpkg-query', '-W', '-f', '${db:Status-Status}', name]).stdout
    return out.strip() == 'installed'


def apt(*args):
    result = run(['apt-get', '-y', '-q', '-o', 'DPkg::Lock::Timeout=120'] + list(args),
                 env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
    assert result.rc == 0, result.tail()


def ss_counts():
    from ss_oracle import ss_state_counts
    return ss_state_counts()


# ------------------------------------------------------------------------------------------------------------
# The fake interpreter. The installed script starts with `#!FAKE -S`, so every call of the script (the agent's
# item test, the agent's UserParameter, the local fact) runs `FAKE -S /etc/zabbix/tcp_status.py ARGS...`. The
# fake runs the real counter with the real Python, then answers what MODE says; with ONLY_RUNNING_AGENT, it tells
# the truth to the agent's item test (an ancestor process run with -t), so that only the running agent lies and
# the verify after the restart is what must catch it. Any other call (the role asking the interpreter something)
# goes to the real Python unchanged.
FAKE = r'''#!/usr/bin/python3
import json, os, socket, subprocess, sys, time
MODE = %(mode)r
ONLY_RUNNING_AGENT = %(only_running_agent)r
REAL = '/usr/bin/python3'
args = sys.argv[1:]
if len(args) < 2 or args[0] != '-S':
    os.execv(REAL, [REAL] + args)
params = args[2:]
first = params[0] if params else ''
real = subprocess.run([REAL] + args, stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()


def under_item_test():
    """True when an ancestor is the agent's item test (zabbix_agentd -t KEY / zabbix_agent2 -t KEY)."""
    pid = os.getppid()
    for _ in range(5):
        try:
            with open('/proc/%%d/cmdline' %% pid, 'rb') as handle:
                argv = handle.read().split(b'\0')
            with open('/proc/%%d/stat' %% pid) as handle:
                parent = int(handle.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if b'-t' in argv or b'--test' in argv:
            return True
        if parent <= 1:
            return False
        pid = parent
    return False


if ONLY_RUNNING_AGENT and under_item_test():
    MODE = 'truth'


def steal_the_port():
    """A process that takes the agent's port as soon as the agent lets go of it, for two minutes; one only: the
    verify asks again (its attempts), and a second thief would outlive the test's cleanup of the first."""
    try:
        with open(%(thief)r) as handle:
            os.kill(int(handle.read()), 0)
        return
    except (OSError, ValueError):
        pass
    if os.fork():
        os.wait()
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 4096)
    with open(%(thief)r, 'w') as handle:
        handle.write(str(os.getpid()))
    deadline = time.time() + 120
    # Both of the agent's listening addresses: the agent starts if it can bind either.
    wanted = [(socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')]
    held = []
    while wanted and time.time() < deadline:
        family, address = wanted[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((address, 10050))
        except OSError:
            sock.close()
            time.sleep(0.002)
            continue
        sock.listen(16)
        sock.settimeout(0.5)
        held.append(sock)
        wanted.pop(0)
    while time.time() < deadline:
        for sock in held:
            try:
                sock.accept()[0].close()
            except OSError:
                pass
    os._exit(0)


if first == 'all':
    counts = json.loads(real)
    if MODE == 'json_missing_state':
        del counts['CLOSING']
    elif MODE == 'json_non_numeric':
        counts['ESTABLISHED'], counts['TIME_WAIT'] = 'oops', None
    elif MODE == 'json_negative':
        counts['CLOSING'] = -1
    elif MODE in ('json_all_zero', 'all_zero'):
        counts = dict((state, 0) for state in counts)
    print(json.dumps(counts, separators=(',', ':')))
elif MODE in ('zero', 'all_zero'):
    print(0)
elif MODE == 'constant_23':
    print(23)
elif MODE == 'non_integer' and first != 'LISTEN':
    print('oops')
elif MODE == 'non_integer_everywhere':
    print('oops')
elif MODE == 'port_thief' and first == 'TIME_WAIT':
    steal_the_port()
    print('oops')
else:
    print(real)
'''


def fake_python(mode, only_running_agent=False):
    """Path of a fake interpreter (see FAKE) answering as mode says: zero (0 for every state, the JSON true),
    all_zero (0 everywhere, JSON too), constant_23, non_integer (oops but for LISTEN), non_integer_everywhere,
    json_missing_state, json_non_numeric, json_negative, json_all_zero, port_thief; only_running_agent: the truth
    to the agent's item test. World-readable in /tmp, so that the agent's user can run it. Removed by the
    system_agent fixture."""
    path = '/tmp/zts-fake-%s%s.py' % (mode, '-running' if only_running_agent else '')
    with open(path, 'w') as handle:
        handle.write(FAKE % {'mode': mode, 'thief': THIEF_PID, 'only_running_agent': only_running_agent})
    os.chmod(path, 0o755)
    return path


def remove_fakes():
    for fake in glob.glob(FAKES):
        os.remove(fake)
