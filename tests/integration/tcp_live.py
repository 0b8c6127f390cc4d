# -*- coding: utf-8 -*-
"""Helpers of the counter's live tests: paths, real loopback sockets, the ss and psutil
oracles, and the ansible runners (the repo's controller venv and a cached ansible-core 2.16 venv)."""

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time

from ss_oracle import STATES, ss_sockets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_UTILS = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils')
COUNTER = os.path.join(MODULE_UTILS, 'tcp_status_counter.py')
LIBRARY = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'library')
VENV_BIN = os.path.dirname(sys.executable)

# ansible-core 2.16: the last release that manages Python 2.7 and 3.6 targets. Cached outside the repo.
ANSIBLE_CORE_216_VENV = os.environ.get('ZTS_ANSIBLE_CORE_216_VENV', '/root/.cache/zts/venv-ansible-core-2.16')


_SCENES = {}


def namespace_scene(test_file, interpreter):
    """What ``test_file --scene INTERPRETER`` prints as JSON, run once per file and interpreter in a fresh network
    namespace (``unshare --net``): the scene's sockets and counts, undisturbed by the machine's other sockets."""
    if (test_file, interpreter) not in _SCENES:
        here = os.path.dirname(os.path.abspath(test_file))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), here]))
        proc = subprocess.run(['unshare', '--net', '--', sys.executable, os.path.abspath(test_file), '--scene',
                               interpreter], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _SCENES[test_file, interpreter] = json.loads(proc.stdout)
    return _SCENES[test_file, interpreter]


def zero_counts():
    return dict((state, 0) for state in STATES)


# --------------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------------

def tally_rows(rows, local=None, remote=None):
    counts = zero_counts()
    for _family, state, lport, rport in rows:
        if (local is None or lport in local) and (remote is None or rport in remote):
            counts[state] += 1
    return counts


def ss_counts(family='all', local=None, remote=None):
    return tally_rows(ss_sockets(family), local, remote)


def psutil_counts():
    """{family: counts} for all, ipv4 and ipv6 from one psutil.net_connections() (slow on a busy host)."""
    import psutil
    result = dict((family, zero_counts()) for family in ('all', 'ipv4', 'ipv6'))
    for conn in psutil.net_connections(kind='tcp'):
        if conn.status in STATES:
            result['all'][conn.status] += 1
            result['ipv4' if conn.family == socket.AF_INET else 'ipv6'][conn.status] += 1
    return result


def within(value, before, after, slack=5, ratio=0.03):
    """Is value inside the range an oracle read before and after, widened for the host's churn?"""
    low, high = min(before, after), max(before, after)
    margin = slack + int(ratio * high)
    return low - margin <= value <= high + margin


def agree_despite_churn(compare, attempts=3):
    """Run compare() (a list of disagreements with an oracle) until a round agrees; fail if none does.

    Other work on the host (load generators) may open and close thousands of sockets between an oracle's
    reads; a counting bug disagrees in every round.
    """
    rounds = []
    for _attempt in range(attempts):
        off = compare()
        if not off:
            return
        rounds.append('\n'.join(off))
    raise AssertionError('every round disagreed:\n' + '\n---\n'.join(rounds))


# --------------------------------------------------------------------------------------------------
# A process refused the sock_diag socket, as SELinux refuses it to zabbix_agent_t on EL
# --------------------------------------------------------------------------------------------------

# Where SELinux denies `create` on netlink_tcpdiag_socket, socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG) fails
# with EACCES. A seccomp filter makes the kernel answer exactly that call exactly so, for a child process and
# everything it runs (ansible, its worker, the module's interpreter, the script), and nothing else.
_SECCOMP_ARCH = {'x86_64': (0xc000003e, 41), 'aarch64': (0xc00000b7, 198)}  # (AUDIT_ARCH_*, __NR_socket)
AF_NETLINK, NETLINK_SOCK_DIAG = 16, 4


def refuse_sock_diag():
    """preexec_fn for subprocess: from here on, socket(AF_NETLINK, *, NETLINK_SOCK_DIAG) fails with EACCES."""
    import ctypes
    import errno
    import platform
    arch, nr_socket = _SECCOMP_ARCH[platform.machine()]

    class SockFilter(ctypes.Structure):
        _fields_ = [('code', ctypes.c_ushort), ('jt', ctypes.c_ubyte), ('jf', ctypes.c_ubyte),
                    ('k', ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.POINTER(SockFilter))]

    load, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    program = [
        (load, 0, 0, 4), (jeq, 0, 7, arch),             # seccomp_data.arch; another ABI: allow
        (load, 0, 0, 0), (jeq, 0, 5, nr_socket),        # seccomp_data.nr == socket
        (load, 0, 0, 16), (jeq, 0, 3, AF_NETLINK),      # args[0] (domain), low 32 bits
        (load, 0, 0, 32), (jeq, 0, 1, NETLINK_SOCK_DIAG),  # args[2] (protocol), low 32 bits
        (ret, 0, 0, 0x00050000 | errno.EACCES),         # SECCOMP_RET_ERRNO | EACCES
        (ret, 0, 0, 0x7fff0000),                        # SECCOMP_RET_ALLOW
    ]
    filters = (SockFilter * len(program))(*[SockFilter(*insn) for insn in program])
    fprog = SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, so that the filter survives execve
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_NO_NEW_PRIVS)')
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_SECCOMP)')


# --------------------------------------------------------------------------------------------------
# Real sockets on loopback
# --------------------------------------------------------------------------------------------------

class SocketFarm(object):
    """Real TCP sockets on 127.0.0.1 / ::1 in known states; close() closes every one of them.

    Listener ports are checked to be unused by any other socket of the host (also as a remote port,
    e.g. old TIME_WAIT), so counts filtered on them are exact.
    """

    ADDRESSES = {'ipv4': '127.0.0.1', 'ipv6': '::1'}

    def __init__(self):
        self.sockets = []
        self.ports = []

    def _keep(self, sock):
        self.sockets.append(sock)
        return sock

    def listener(self, kind='ipv4', backlog=64):
        """kind: ipv4 (127.0.0.1), ipv6 (::1, IPv6 only) or dual (::, dual-stack). Returns the port."""
        for _attempt in range(20):
            if kind == 'ipv4':
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                address = '127.0.0.1'
            else:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if kind == 'dual' else 1)
                address = '::' if kind == 'dual' else '::1'
            sock.bind((address, 0))
            sock.listen(backlog)
            port = sock.getsockname()[1]
            rows = [row for row in ss_sockets() if port in (row[2], row[3])]
            if len(rows) == 1 and rows[0][1] == 'LISTEN':
                self._keep(sock)
                self.ports.append(port)
                return port
            sock.close()  # the port is still in use elsewhere (e.g. as a remote port in TIME_WAIT)
        raise RuntimeError('no clean listener port found')

    def _listening_socket(self, port):
        for sock in self.sockets:
            try:
                if sock.getsockname()[1] == port and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    return sock
            except OSError:
                continue
        raise KeyError(port)

    def pair(self, port, client='ipv4'):
        """An ESTABLISHED pair: a client (ipv4 or ipv6) connected to our listener on port."""
        family = socket.AF_INET if client == 'ipv4' else socket.AF_INET6
        conn = self._keep(socket.socket(family, socket.SOCK_STREAM))
        conn.connect((self.ADDRESSES[client], port))
        server, _peer = self._listening_socket(port).accept()
        self._keep(server)
        return conn, server

    def time_wait(self, port, client='ipv4'):
        """A client that closed first and a server that closed after it: the client is in TIME_WAIT."""
        conn, server = self.pair(port, client)
        conn.close()
        server.settimeout(5)
        assert server.recv(1) == b''  # the FIN arrived
        server.close()

    def close_wait(self, port, client='ipv4'):
        """A client that closed its side (FIN_WAIT2) and a server that did not close (CLOSE_WAIT).

        The client shuts down its sending side instead of closing: an orphaned FIN_WAIT2 socket would
        vanish after net.ipv4.tcp_fin_timeout (60 s), this one stays until the test ends.
        """
        conn, server = self.pair(port, client)
        conn.shutdown(socket.SHUT_WR)
        server.settimeout(5)
        assert server.recv(1) == b''

    def syn_sent(self, port):
        """A client whose SYN the kernel drops (our listener's accept queue is full): SYN_SENT until closed."""
        conn = self._keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        conn.setblocking(False)
        conn.connect_ex(('127.0.0.1', port))

    def queued(self, port):
        """A connection completed by the kernel but never accepted (ESTABLISHED on both ends)."""
        conn = self._keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        conn.connect(('127.0.0.1', port))

    def close(self):
        for sock in self.sockets:
            sock.close()
        self.sockets = []


# --------------------------------------------------------------------------------------------------
# Raw TCP segments from 10.9.x.x (clients that are not sockets of this host), inside a test's namespace
# --------------------------------------------------------------------------------------------------

SYN, ACK = 0x02, 0x10


def _checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!{0}H'.format(len(data) // 2), data))
    total = (total >> 16) + (total & 0xffff)
    total += total >> 16
    return ~total & 0xffff


def _route_raw_clients():
    """Route 10.9.0.0/16 to lo with no reverse-path filter: the SYN-ACKs to those clients leave and nobody answers
    them (no RST either)."""
    subprocess.check_call(['ip', 'route', 'replace', '10.9.0.0/16', 'dev', 'lo'])
    for name in ('all', 'lo', 'default'):
        subprocess.check_call(['sysctl', '-qw', 'net.ipv4.conf.{0}.rp_filter=0'.format(name)])


def send_segments(segments):
    """Send IPv4 TCP segments (source address, source port, 127.0.0.1's port, seq, ack, flags) to 127.0.0.1."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for index, (address, sport, dport, seq, ack, flags) in enumerate(segments):
            source, target = socket.inet_aton(address), socket.inet_aton('127.0.0.1')
            tcp = struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
            pseudo = source + target + struct.pack('!BBH', 0, socket.IPPROTO_TCP, len(tcp))
            tcp = tcp[:16] + struct.pack('!H', _checksum(pseudo + tcp)) + tcp[18:]
            ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), index, 0, 64, socket.IPPROTO_TCP, 0,
                             source, target)
            ip = ip[:10] + struct.pack('!H', _checksum(ip)) + ip[12:]
            raw.sendto(ip + tcp, ('127.0.0.1', 0))
    finally:
        raw.close()


def half_open(port, count):
    """``count`` half-open request sockets (SYN_RECV, not in sockstat's inuse) on our 127.0.0.1 listener: raw SYNs
    from 10.9.0.x, never answered."""
    _route_raw_clients()
    send_segments([('10.9.0.{0}'.format(index + 1), 40000 + index, port, 1000 + index, 0, SYN)
                   for index in range(count)])


def acked_on_a_full_queue(farm, port, count, fill, timeout=5.0):
    """``count`` handshakes whose last ACK meets a full accept queue: what a real network does to a listener that
    stops accepting. Raw SYNs from 10.9.1.x while the queue has room (request sockets, SYN_RECV); ``fill`` real
    clients then fill the accept queue; then the raw clients' ACKs arrive (with the SYN-ACKs' sequence numbers,
    read off lo): the kernel cannot move them to the full queue, counts a ListenOverflow for each and keeps them in
    SYN_RECV (tcp_abort_on_overflow 0), while those clients would believe they are connected."""
    _route_raw_clients()
    capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    try:
        capture.bind(('lo', 0x0800))
        clients = [('10.9.1.{0}'.format(index + 1), 41000 + index) for index in range(count)]
        send_segments([(address, sport, port, 5000, 0, SYN) for address, sport in clients])
        server_seq = {}
        capture.settimeout(0.2)
        deadline = time.time() + timeout
        while len(server_seq) < count and time.time() < deadline:
            try:
                packet = capture.recv(2048)
            except socket.timeout:
                continue
            header = (bytearray(packet)[0] & 0x0f) * 4
            sport, dport, seq = struct.unpack('!HHI', packet[header:header + 8])
            flags = bytearray(packet)[header + 13]
            target = (socket.inet_ntoa(packet[16:20]), dport)
            if sport == port and flags & (SYN | ACK) == SYN | ACK and target in clients:
                server_seq[target] = seq
        if len(server_seq) < count:
            raise RuntimeError('saw {0} of {1} SYN-ACKs on lo'.format(len(server_seq), count))
    finally:
        capture.close()
    for _ in range(fill):
        farm.queued(port)
    send_segments([(address, sport, port, 5001, server_seq[address, sport] + 1, ACK) for address, sport in clients])


def settle(expected, family='all', local=None, remote=None, timeout=5.0):
    """Wait until ss sees exactly `expected` on the filtered ports; return ss's counts."""
    deadline = time.time() + timeout
    while True:
        counts = ss_counts(family, local, remote)
        if counts == expected or time.time() > deadline:
            return counts
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------------
# Ansible runs from the repo root (ansible.cfg there points at the role's library and module_utils)
# --------------------------------------------------------------------------------------------------

def ansible_env():
    env = dict(os.environ)
    env.update({'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_FORCE_COLOR': '0', 'ANSIBLE_DEPRECATION_WARNINGS': '0',
                'PYTHONDONTWRITEBYTECODE': '1'})
    for name in ('ANSIBLE_CONFIG', 'ANSIBLE_LIBRARY', 'ANSIBLE_MODULE_UTILS', 'ANSIBLE_INVENTORY'):
        env.pop(name, None)
    return env


def run_adhoc_hosts(module_args='', extra=(), bin_dir=VENV_BIN, check=False, oneline=False, pattern='localhost',
                    timeout=120, preexec_fn=None):
    """`ansible PATTERN -m tcp_status`; returns ({host: (status word, result dict)}, completed process).

    Read from the ad-hoc output `HOST | SUCCESS => {...}` (JSON result format), or with oneline=True
    from the `-o` lines that are the documented fleet view. The status word is SUCCESS or FAILED!.
    preexec_fn (e.g. refuse_sock_diag) runs in the ansible process before it starts.
    """
    cmd = [os.path.join(bin_dir, 'ansible'), pattern, '-m', 'tcp_status']
    if module_args:
        cmd += ['-a', module_args]
    if check:
        cmd.append('--check')
    if oneline:
        cmd.append('-o')
    cmd += list(extra)
    env = ansible_env()
    env['ANSIBLE_CALLBACK_RESULT_FORMAT'] = 'json'
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)
    results = {}
    for match in re.finditer(r'^(\S+) \| (SUCCESS|FAILED!) => ', proc.stdout, re.M):
        results[match.group(1)] = (match.group(2), json.JSONDecoder().raw_decode(proc.stdout, match.end())[0])
    if not results:
        raise AssertionError('no result from {0}\nrc={1}\n{2}\n{3}'.format(cmd, proc.returncode, proc.stdout,
                                                                            proc.stderr))
    return results, proc


def run_adhoc(module_args='', **kwargs):
    """run_adhoc_hosts on localhost alone: (status word, result dict, completed process)."""
    results, proc = run_adhoc_hosts(module_args, **kwargs)
    status, result = results['localhost']
    return status, result, proc


def run_playbook(playbook, extra_vars, extra=(), bin_dir=VENV_BIN, check=False, timeout=180):
    cmd = [os.path.join(bin_dir, 'ansible-playbook'), playbook, '-e', json.dumps(extra_vars)]
    if check:
        cmd.append('--check')
    cmd += list(extra)
    return subprocess.run(cmd, cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=timeout)
