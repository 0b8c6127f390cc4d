#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Count TCP sockets by state: the one implementation behind the Ansible module
``tcp_status`` (imported as ``ansible.module_utils.tcp_status_counter``) and the
script the Zabbix agent runs (this same file, installed as ``tcp_status.py``).

Backends, tried in this order by ``backend='auto'``:

* ``counters``: the whole host's count (no port filter) when ESTABLISHED is asked
  for: a NETLINK_SOCK_DIAG dump of every state *except* ESTABLISHED (the minority),
  and ESTABLISHED derived from the kernel's counters (``/proc/net/sockstat`` and
  ``sockstat6`` ``inuse``), cross-checked against ``/proc/net/snmp`` ``CurrEstab``
  within the sockets that changed state during the call. When the check fails,
  or the kernel is older than 4.4, ``auto`` goes on to the full dump below;
* ``netlink``: the full NETLINK_SOCK_DIAG dump; the kernel filters by the state
  bitmask and by the port filter, passed as an ``INET_DIAG_REQ_BYTECODE``
  program as ``ss`` does, so it builds messages only for the sockets asked for.
  Both families are asked for in one request (the original ``inet_diag_req``,
  TCPDIAG_GETSOCK): the kernel then walks its socket table once, where one
  ``inet_diag_req_v2`` request per family walks all of it twice;
* ``proc``: parsing ``/proc/net/tcp`` and ``/proc/net/tcp6``;
* ``psutil``: only where neither exists (not Linux) and psutil is installed.

Standard library only; runs unchanged on Python 2.7, 3.6 and 3.8+.
The agent starts this file every interval on every host, and every import is
start-up time: it imports the C modules ``_socket`` and ``_struct`` (Python 3's
``socket`` module alone pulls in enum and selectors), and nothing else that a
call does not need (no json, re, argparse or os on the counting path).

Script contract (what a Zabbix UserParameter calls)::

    tcp_status.py STATE     [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]]               -> one integer
    tcp_status.py all       [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]]               -> JSON object
    tcp_status.py ports     [LOCAL_PORTS [REMOTE_PORTS [FAMILY [MAX_PORTS]]]]   -> per-port JSON (count_ports)
    tcp_status.py discovery [LOCAL_PORTS [REMOTE_PORTS [FAMILY [MAX_PORTS]]]]   -> the same ports, LLD JSON

``ports`` answers {"ports": [{"port", "service", "queue", "backlog", "states"}, ...], "remote": [{"port",
"service", "states"}, ...], "truncated", "listen_overflows", "listen_drops"}: every listening port (of LOCAL_PORTS)
busiest first, at most MAX_PORTS (default 100) and 60,000 bytes, truncated saying how many were left out; one
entry per REMOTE_PORTS port (at most 100). ``discovery`` answers {"data": [{"{#PORT}", "{#SERVICE}", "{#SIDE}"}]}
(SIDE local or remote), the LLD form Zabbix 3.4 agent discovery rules need.

STATE is a netstat or ss state name in any case (``TIME_WAIT``, ``time-wait``,
``listening``...). PORTS is a comma-separated list of ports or ranges
(``443``, ``80,443``, ``1024-65535``); empty means any. FAMILY is ``ipv4``,
``ipv6`` or ``all`` (the default). A bad argument prints one line on stderr,
nothing on stdout, and exits 2; a failure to read sockets exits 1.

One option may come first: ``--backend=NAME`` (``auto``, ``counters``,
``netlink``, ``proc``, ``psutil``); ``--backend=netlink`` forces the full dump,
e.g. ``tcp_status.py --backend=netlink all``.
"""

# The first statements keep the script's own directory out of the import path (issue 9, item 4). Run as
# ``python -S /etc/zabbix/tcp_status.py``, Python puts /etc/zabbix first on sys.path, and any module written
# there (a socket.py) would run with the agent's rights, and as root for the local fact, on every call. So
# nothing is imported before that entry is dropped: sys is built in, and there is deliberately no
# ``from __future__ import`` line, which is a real import of a module named __future__ found through sys.path
# like any other. Nothing here needs it: no print statement, no ``/`` division, only standard library imports.
# Imported as ansible.module_utils.tcp_status_counter (the module's payload), __name__ differs: sys.path is
# left alone. Under -I (isolated) or -P (safe_path, 3.11+) Python never added the directory: nothing to drop.
import sys

if __name__ == '__main__' and not (getattr(sys.flags, 'isolated', 0) or getattr(sys.flags, 'safe_path', False)):
    del sys.path[0]

__metaclass__ = type

# The C modules under socket and struct (on 2.7 too): `import socket` costs Python 3 ~9 ms of start-up (enum,
# selectors); these two ~0.2 ms. errno and time are built into the interpreter; os is imported only on error paths.
import _socket  # noqa: E402  (after the import path is made safe, above)
import _struct  # noqa: E402
import errno  # noqa: E402
import time  # noqa: E402

# Kernel TCP state codes (include/net/tcp_states.h) and their netstat names.
STATE_CODES = (
    (1, 'ESTABLISHED'),
    (2, 'SYN_SENT'),
    (3, 'SYN_RECV'),
    (4, 'FIN_WAIT1'),
    (5, 'FIN_WAIT2'),
    (6, 'TIME_WAIT'),
    (7, 'CLOSE'),
    (8, 'CLOSE_WAIT'),
    (9, 'LAST_ACK'),
    (10, 'LISTEN'),
    (11, 'CLOSING'),
)
STATES = tuple(name for _code, name in STATE_CODES)
CODE_BY_STATE = dict((name, code) for code, name in STATE_CODES)
# The kernel keeps half-open request sockets as TCP_NEW_SYN_RECV (12) and reports
# them as SYN_RECV in both sock_diag and /proc, as ss and netstat show them.
NEW_SYN_RECV = 12
LISTEN_CODE = 10

# Other spellings accepted for each state, after upper-casing and '-' -> '_':
# ss (ESTAB, LISTENING, CLOSED, FIN_WAIT_1...) and RFC 793 (SYN_RECEIVED).
STATE_ALIASES = {
    'ESTAB': 'ESTABLISHED',
    'SYN_RECEIVED': 'SYN_RECV',
    'NEW_SYN_RECV': 'SYN_RECV',
    'FIN_WAIT_1': 'FIN_WAIT1',
    'FIN_WAIT_2': 'FIN_WAIT2',
    'CLOSED': 'CLOSE',
    'LISTENING': 'LISTEN',
}

FAMILIES = ('all', 'ipv4', 'ipv6')
BACKENDS = ('auto', 'counters', 'netlink', 'proc', 'psutil')

# Netlink constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
# The original inet_diag request type: one dump of every family (the kernel sets AF_UNSPEC), answered with
# messages of this type. Kernels that refuse it get one SOCK_DIAG_BY_FAMILY request per family instead.
TCPDIAG_GETSOCK = 18
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_HDRLEN = 16
# inet_diag_msg: family, state, timer, retrans, then sockid (sport, dport big-endian).
DIAG_FAMILY_OFFSET = NLMSG_HDRLEN
DIAG_STATE_OFFSET = NLMSG_HDRLEN + 1
DIAG_SPORT_OFFSET = NLMSG_HDRLEN + 4
DIAG_DPORT_OFFSET = NLMSG_HDRLEN + 6
DIAG_MSG_MINLEN = NLMSG_HDRLEN + 72
# inet_diag_msg's idiag_rqueue and idiag_wqueue: for a LISTEN socket, its accept queue's length and its backlog
# (what `ss -lt` shows as Recv-Q and Send-Q).
DIAG_RQUEUE_OFFSET = NLMSG_HDRLEN + 56
# Attributes after inet_diag_msg: INET_DIAG_MARK is the only one the kernel puts on the message of a half-open
# request socket or of a TIME_WAIT-kind socket (and only for CAP_NET_ADMIN); full sockets always carry more
# (INET_DIAG_SHUTDOWN at least, since 3.7).
INET_DIAG_MARK = 15
INET_DIAG_REQ_BYTECODE = 1
# Bytecode operations (linux/inet_diag.h): each is (code, yes, no): on a match the program goes on `yes` bytes
# further, otherwise `no` bytes; landing exactly on the end accepts the socket, 4 bytes past it rejects it.
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3
INET_DIAG_BC_D_GE = 4
INET_DIAG_BC_D_LE = 5
# A netlink attribute's length is 16 bits: a longer port filter (thousands of separate ranges) is left to the
# Python side (the messages are checked against the port tables anyway).
BYTECODE_MAX = 60000
# Large enough for any one dump part (the kernel caps parts at 32 KiB); a
# reply larger than this is detected through MSG_TRUNC, never counted short.
RECV_BUFSIZE = 256 * 1024
# Seconds the whole netlink dump (every family, every part) may take, so that a hung dump fails with this
# script's own message before the Zabbix agent's Timeout (3 s by default) kills it. The role rewrites the next
# line of the installed script, matched by the regex ^NETLINK_TIMEOUT = .*$, to the agent's Timeout minus 0.5 s:
# keep it one line of that form, a float literal.
NETLINK_TIMEOUT = 2.5

_NLMSGHDR = _struct.Struct('=IH')
_NLMSG_ERRNO = _struct.Struct('=i')
_NLATTR = _struct.Struct('=HH')
_DIAG_INODE = _struct.Struct('=I')
_DIAG_QUEUES = _struct.Struct('=II')
# nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, 48-byte sockid).
_DIAG_REQUEST = _struct.Struct('=IHHII' + 'BBBBI' + '48x')
# nlmsghdr + inet_diag_req (family, src_len, dst_len, ext, 48-byte sockid, states, dbs).
_DIAG_REQUEST_V1 = _struct.Struct('=IHHII' + 'BBBB' + '48x' + 'II')
# Per-family tallies in one list: the count of (family, state) is at FAMILY_SLOTS[family] + state.
FAMILY_SLOTS = dict(((_socket.AF_INET, 256), (_socket.AF_INET6, 512)))
FAMILY_OF_NAME = {'ipv4': _socket.AF_INET, 'ipv6': _socket.AF_INET6}
_BC_OP = _struct.Struct('=BBH')

PROC_FILES = (('ipv4', '/proc/net/tcp'), ('ipv6', '/proc/net/tcp6'))
# The kernel counters behind the counters backend (per network namespace, as the dumps are).
COUNTER_FILES = {'sockstat': '/proc/net/sockstat', 'sockstat6': '/proc/net/sockstat6', 'snmp': '/proc/net/snmp',
                 'netstat': '/proc/net/netstat'}
# Full sockets in these states are in sockstat's inuse (hashed); TIME_WAIT, CLOSE and request sockets are not.
# SYN_RECV and FIN_WAIT2 messages may also be request / TIME_WAIT-kind sockets: those are told apart by their
# attributes (see INET_DIAG_MARK above), behind the cross-check.
INUSE_CODES = (2, 3, 4, 5, 8, 9, 10, 11)
# The kernel that first kept request sockets in the established hash (TCP_NEW_SYN_RECV): before it, a dump
# cannot tell the kinds apart the same way (CentOS 7's 3.10), so the counters backend does not answer there.
COUNTERS_MIN_KERNEL = (4, 4)

USAGE = ('usage: tcp_status.py [--backend=NAME] STATE|all [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]], '
         'or ports|discovery [LOCAL_PORTS [REMOTE_PORTS [FAMILY [MAX_PORTS]]]]')

# The per-port mode (count_ports): how many listening ports it reports by default, how many remote ports it may be
# asked for, and the most bytes its JSON may take. Zabbix stores a text value in history_text.value, a TEXT column
# (65,535 bytes on MySQL; the proxy's buffer too), and the agent takes at most 512 KB from a UserParameter: the
# answer stays under 60,000 bytes whatever the arguments, cutting the least busy ports (and saying how many).
MAX_PORTS_DEFAULT = 100
MAX_REMOTE_PORTS = 100
PORTS_JSON_MAX = 60000
SERVICES_FILE = '/etc/services'


SHOWN_CHARS = 64


def _shown(value):
    """A value the user gave, for a one-line message: its repr(), cut after SHOWN_CHARS characters.

    The agent returns the script's error line as the item's value, and the server stores it: a 100 kB
    argument must not come back whole. A cut value is followed by its length, e.g. 'xxx...'...(100000 chars).
    """
    if isinstance(value, (str, type(u''))):
        if len(value) > SHOWN_CHARS:
            return '{0!r}...({1} chars)'.format(value[:SHOWN_CHARS], len(value))
        return repr(value)
    text = repr(value)
    if len(text) > SHOWN_CHARS:
        return '{0}...({1} chars)'.format(text[:SHOWN_CHARS], len(text))
    return text


class TcpStatusError(Exception):
    """A failure to count, with a message meant for the user."""


class ArgumentError(TcpStatusError):
    """A bad argument: a state, port list, family or backend that is not accepted."""


class ParseError(TcpStatusError):
    """Input (netlink reply bytes or /proc text) that is not what the kernel writes."""


class BackendUnavailable(TcpStatusError):
    """This backend cannot run here; ``backend='auto'`` tries the next one."""


def normalize_state(name):
    """Return the netstat name of a state given in netstat or ss spelling, any case."""
    key = str(name).strip().upper().replace('-', '_')
    key = STATE_ALIASES.get(key, key)
    if key not in CODE_BY_STATE:
        raise ArgumentError(
            'unknown TCP state {0}; accepted: {1} (ss spellings such as time-wait '
            'and listening too, any case), or all'.format(_shown(name), ', '.join(STATES)))
    return key


def normalize_states(names):
    """Canonical names of ``names`` (all states when empty or when one is "all"), in kernel order, no repeats."""
    if not names or any(str(name).strip().lower() == 'all' for name in names):
        return STATES
    wanted = set(normalize_state(name) for name in names)
    return tuple(state for state in STATES if state in wanted)


def port_ranges(spec):
    """Turn a port spec into sorted, merged ``[(low, high), ...]`` ranges, or None for "any port".

    ``spec`` is a comma-separated string (``"80,443,8000-8100"``), an int, a list
    of those, or empty/None.
    """
    if spec is None or spec == '' or spec == []:
        return None
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    ranges = []
    for item in items:
        for part in str(item).split(','):
            part = part.strip()
            low, sep, high = part.partition('-')
            try:
                first = int(low)
                last = int(high) if sep else first
                if not (low.isdigit() and (not sep or high.isdigit())):
                    raise ValueError(part)
            except ValueError:
                raise ArgumentError(
                    'bad port {0} in {1}; use numbers 0-65535 or ranges like 1024-65535, '
                    'separated by commas'.format(_shown(part), _shown(spec)))
            if not 0 <= first <= last <= 65535:
                raise ArgumentError(
                    'port {0} in {1} is out of range; ports are 0-65535 and a range '
                    'goes low-high'.format(_shown(part), _shown(spec)))
            ranges.append((first, last))
    ranges.sort()
    merged = [ranges[0]]
    for first, last in ranges[1:]:
        if first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def port_table(ranges):
    """A 65536-byte lookup table of ``ranges`` (from port_ranges), or None for None."""
    if ranges is None:
        return None
    table = bytearray(65536)
    for first, last in ranges:
        table[first:last + 1] = b'\x01' * (last - first + 1)
    return table


def parse_ports(spec):
    """Turn a port spec into a 65536-byte lookup table, or None for "any port" (see port_ranges)."""
    return port_table(port_ranges(spec))


# ---- INET_DIAG_REQ_BYTECODE: the port filter, run by the kernel (compiled as ss's ssfilter_bytecompile does).
# A program is a list of (code, yes, no) operations, 4 bytes each; a port comparison is two of them (the second
# holds the port in its `no` field). A jump 4 bytes past the program's end rejects the socket.

def _bc_compare(code, port):
    return [(code, 8, 12), (0, 0, port)]


def _bc_reject_later(program, extra):
    """``program`` with its rejections (a jump 4 bytes past its end) moved ``extra`` bytes further."""
    patched = list(program)
    length = 4 * len(program)
    index = 0
    while index < len(patched):
        code, yes, no = patched[index]
        if no == length - 4 * index + 4:
            patched[index] = (code, yes, no + extra)
        index += yes // 4
    return patched


def _bc_and(first, second):
    """Both must match: first's rejections are moved past second's end."""
    return _bc_reject_later(first, 4 * len(second)) + list(second)


def _bc_or(first, second):
    """Either matches: a rejection in first lands on second; a match in first jumps over second."""
    return list(first) + [(INET_DIAG_BC_JMP, 4, 4 * len(second) + 4)] + list(second)


def _bc_range(first, last, ge_code, le_code):
    if first == 0:
        return _bc_compare(le_code, last)
    if last == 65535:
        return _bc_compare(ge_code, first)
    return _bc_and(_bc_compare(ge_code, first), _bc_compare(le_code, last))


def _bc_ranges(ranges, ge_code, le_code):
    """A binary search over sorted, disjoint ``ranges``: a port meets ~log2(n) + 2 comparisons, not up to 2n. The
    kernel runs the program on every socket of the table: with 64 listening ports and 90k sockets, the per-port
    mode's filtered dump took 60 ms with a list of the ranges, 51 ms with this (the walk alone: 14 ms).

    [port >= the upper half's first? no: to the lower half][upper half, its rejections moved past the lower half]
    [match: jump to the end][lower half]. Every operation stays on the chain of `yes` jumps from the start, as
    the kernel's audit (inet_diag_bc_audit) wants.
    """
    if len(ranges) == 1:
        return _bc_range(ranges[0][0], ranges[0][1], ge_code, le_code)
    middle = len(ranges) // 2
    lower = _bc_ranges(ranges[:middle], ge_code, le_code)
    upper = _bc_reject_later(_bc_ranges(ranges[middle:], ge_code, le_code), 4 * len(lower) + 4)
    return [(ge_code, 8, 12 + 4 * len(upper)), (0, 0, ranges[middle][0])] + _bc_or(upper, lower)


def _bc_ports(ranges, ge_code, le_code):
    """The program accepting a port (source or destination) in one of ``ranges``; None when any port matches."""
    if ranges is None or ranges == [(0, 65535)]:
        return None
    return _bc_ranges(ranges, ge_code, le_code)


def port_bytecode(local_ranges=None, remote_ranges=None, either=False):
    """The INET_DIAG_REQ_BYTECODE bytes for a local and a remote port filter (ranges from port_ranges): sockets
    whose local port and remote port match, or with ``either``, sockets whose local port or remote port matches
    (there, a side that matches any port matches every socket, and a side without ranges, None, is left out).

    Empty when there is no filter, or when the program would not fit in a netlink attribute (then only the
    Python side filters). General enough for lists and ranges on both sides, e.g. for a per-port discovery.
    """
    local = _bc_ports(local_ranges, INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE)
    remote = _bc_ports(remote_ranges, INET_DIAG_BC_D_GE, INET_DIAG_BC_D_LE)
    if either:
        # Every local port, or every remote port asked for: every socket matches (a side with no ranges at all,
        # None, adds nothing to the other side's filter).
        if local is None or remote is None and remote_ranges is not None:
            return b''
        program = local if remote is None else _bc_or(local, remote)
    elif local is None and remote is None:
        return b''
    else:
        program = remote if local is None else local if remote is None else _bc_and(local, remote)
    if 4 * len(program) > BYTECODE_MAX:
        return b''
    return b''.join(_BC_OP.pack(code, yes, no) for code, yes, no in program)


def _family_names(family):
    if family not in FAMILIES:
        raise ArgumentError('unknown address family {0}; accepted: {1}'.format(
            _shown(family), ', '.join(FAMILIES)))
    return ('ipv4', 'ipv6') if family == 'all' else (family,)


def _new_counter():
    # Indexed by kernel state code; 256 slots so that any byte is a valid index.
    return [0] * 256


def count_netlink_messages(buf, length, tally, local_table=None, remote_table=None, slots=None, ports=None):
    """Count the sock_diag messages in ``buf[:length]`` into ``tally`` (by state code).

    With ``slots`` (a 256-entry list: family -> first slot, see FAMILY_SLOTS), a message of family F in
    state S is counted at ``tally[slots[F] + S]`` instead (a tally of 768 entries); not with port tables.
    With ``ports`` (a PortTally), every message is also counted by local and remote port there (the per-port
    mode; its own port tables apply, not local_table/remote_table).
    Returns True once NLMSG_DONE is seen. Raises ParseError on a malformed
    stream and TcpStatusError on a kernel error reply.
    """
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
    unpack = _NLMSGHDR.unpack_from
    offset = 0
    filtered = local_table is not None or remote_table is not None
    plain = not filtered and slots is None and ports is None
    if ports is not None:
        local_ports, remote_ports, local_counts, remote_counts = (ports.local_table, ports.remote_table, ports.local,
                                                                  ports.remote)
    while offset < length:
        if offset + NLMSG_HDRLEN > length:
            raise ParseError('netlink reply ends inside a message header at byte {0} of {1}'.format(
                offset, length))
        msg_len, msg_type = unpack(buf, offset)
        if msg_len < NLMSG_HDRLEN or offset + msg_len > length:
            raise ParseError('netlink message at byte {0} claims length {1}, {2} bytes remain'.format(
                offset, msg_len, length - offset))
        if msg_type == SOCK_DIAG_BY_FAMILY or msg_type == TCPDIAG_GETSOCK:
            if msg_len < DIAG_MSG_MINLEN:
                raise ParseError('sock_diag message at byte {0} is {1} bytes, shorter than {2}'.format(
                    offset, msg_len, DIAG_MSG_MINLEN))
            if plain:
                tally[buf[offset + DIAG_STATE_OFFSET]] += 1
            elif ports is not None:
                # PortTally.add, inlined: this runs once per socket.
                state = buf[offset + DIAG_STATE_OFFSET]
                port = (buf[offset + DIAG_SPORT_OFFSET] << 8) | buf[offset + DIAG_SPORT_OFFSET + 1]
                if local_ports is None or local_ports[port]:
                    key = (port << 8) | state
                    local_counts[key] = local_counts.get(key, 0) + 1
                    if state == LISTEN_CODE:
                        ports.listener(port, _DIAG_QUEUES.unpack_from(buf, offset + DIAG_RQUEUE_OFFSET))
                if remote_ports is not None:
                    port = (buf[offset + DIAG_DPORT_OFFSET] << 8) | buf[offset + DIAG_DPORT_OFFSET + 1]
                    if remote_ports[port]:
                        key = (port << 8) | state
                        remote_counts[key] = remote_counts.get(key, 0) + 1
            elif not filtered:
                tally[slots[buf[offset + DIAG_FAMILY_OFFSET]] + buf[offset + DIAG_STATE_OFFSET]] += 1
            elif ((local_table is None or local_table[
                    (buf[offset + DIAG_SPORT_OFFSET] << 8) | buf[offset + DIAG_SPORT_OFFSET + 1]])
                  and (remote_table is None or remote_table[
                      (buf[offset + DIAG_DPORT_OFFSET] << 8) | buf[offset + DIAG_DPORT_OFFSET + 1]])):
                tally[buf[offset + DIAG_STATE_OFFSET]] += 1
        elif msg_type == NLMSG_DONE:
            if msg_len >= NLMSG_HDRLEN + 4:
                status = _NLMSG_ERRNO.unpack_from(buf, offset + NLMSG_HDRLEN)[0]
                if status < 0:
                    # e.g. ENOENT when tcp_diag is missing: refused, so that 'auto' falls back to /proc
                    raise NetlinkRefused(-status)
            return True
        elif msg_type == NLMSG_ERROR:
            if msg_len < NLMSG_HDRLEN + 4:
                raise ParseError('netlink error message at byte {0} is too short'.format(offset))
            code = -_NLMSG_ERRNO.unpack_from(buf, offset + NLMSG_HDRLEN)[0]
            raise NetlinkRefused(code)
        else:
            raise ParseError('unexpected netlink message type {0} at byte {1}'.format(msg_type, offset))
        offset += (msg_len + 3) & ~3
    return False


def count_full_sockets(buf, length, full, codes, slots):
    """Count into ``full`` (at slots[family] + state) the messages in ``buf[:length]`` whose state is in ``codes``
    and that are full sockets (a socket inode, or an attribute other than INET_DIAG_MARK), not request or
    TIME_WAIT-kind ones. Run only on the reply parts that hold such states (count_netlink_messages has checked
    the framing)."""
    unpack = _NLMSGHDR.unpack_from
    offset = 0
    while offset < length:
        msg_len, msg_type = unpack(buf, offset)
        if msg_type not in (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK):
            break
        if buf[offset + DIAG_STATE_OFFSET] in codes:
            is_full = _DIAG_INODE.unpack_from(buf, offset + NLMSG_HDRLEN + 68)[0] != 0
            attr = offset + DIAG_MSG_MINLEN
            end = offset + msg_len
            while not is_full and attr + 4 <= end:
                attr_len, attr_type = _NLATTR.unpack_from(buf, attr)
                if attr_len < 4:
                    break
                is_full = (attr_type & 0x3fff) != INET_DIAG_MARK
                attr += (attr_len + 3) & ~3
            if is_full:
                full[slots[buf[offset + DIAG_FAMILY_OFFSET]] + buf[offset + DIAG_STATE_OFFSET]] += 1
        offset += (msg_len + 3) & ~3
    return full


class NetlinkRefused(BackendUnavailable):
    """The kernel answered the dump request with NLMSG_ERROR (e.g. ENOENT: no tcp_diag)."""

    def __init__(self, code):
        self.errno = code
        BackendUnavailable.__init__(self, 'netlink sock_diag refused the dump: {0}'.format(
            _errno_text(code)))


def _errno_text(code):
    import os  # only on this error path
    return '{0} ({1})'.format(errno.errorcode.get(code, 'errno {0}'.format(code)), os.strerror(code))


def diag_request(family_name, state_mask, seq=1, bytecode=b''):
    """The bytes of one dump request for TCP sockets, with an optional port filter: SOCK_DIAG_BY_FAMILY for
    one family ('ipv4', 'ipv6'), or the original TCPDIAG_GETSOCK for both ('all', one walk of the table)."""
    extra = 4 + len(bytecode) if bytecode else 0
    if family_name == 'all':
        request = _DIAG_REQUEST_V1.pack(_DIAG_REQUEST_V1.size + extra, TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP,
                                        seq, 0, _socket.AF_INET, 0, 0, 0, state_mask, 0)
    else:
        request = _DIAG_REQUEST.pack(_DIAG_REQUEST.size + extra, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                                     seq, 0, FAMILY_OF_NAME[family_name], _socket.IPPROTO_TCP, 0, 0, state_mask)
    if bytecode:
        request += _NLATTR.pack(4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    return request


def state_mask(codes):
    mask = 0
    for code in codes:
        mask |= 1 << code
    if mask & (1 << CODE_BY_STATE['SYN_RECV']):
        mask |= 1 << NEW_SYN_RECV
    return mask


# A clock that never goes back where there is one (Python 3.3+); Python 2.7 has only the wall clock.
_clock = getattr(time, 'monotonic', time.time)


def _time_left(deadline):
    """Seconds left until deadline (a _clock() value); _socket.timeout once none are left."""
    left = deadline - _clock()
    if left <= 0:
        raise _socket.timeout()
    return left


def _netlink_dump(families, mask, deadline, bytecode=b'', local_table=None, remote_table=None, full_codes=None,
                  ports=None):
    """Dump the TCP sockets of ``families`` in the states of ``mask``: (tally, full).

    Without ``full_codes``: tally by state (256 entries), full None. With it: both per family (768 entries, the
    count of family F in state S at FAMILY_SLOTS[F] + S), full counting only the full sockets in those states.
    Both families are asked for in one TCPDIAG_GETSOCK request (one walk of the kernel's table); a kernel that
    refuses it gets one SOCK_DIAG_BY_FAMILY request per family.
    """
    try:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except (AttributeError, _socket.error) as exc:
        raise BackendUnavailable('cannot open a NETLINK_SOCK_DIAG socket: {0}'.format(exc))
    split = full_codes is not None
    slots = None
    if split:
        slots = [0] * 256
        for family, slot in FAMILY_SLOTS.items():
            slots[family] = slot
        watched = [slot + code for slot in FAMILY_SLOTS.values() for code in full_codes]
    tally = [0] * (768 if split else 256)
    full = [0] * 768 if split else None
    requests = ['all'] if tuple(families) == ('ipv4', 'ipv6') else list(families)
    buf = bytearray(RECV_BUFSIZE)
    seq = 0
    try:
        while requests:
            family_name = requests.pop(0)
            seq += 1
            sock.settimeout(_time_left(deadline))
            sock.send(diag_request(family_name, mask, seq, bytecode))
            done = False
            while not done:
                sock.settimeout(_time_left(deadline))
                received = sock.recv_into(buf, RECV_BUFSIZE, _socket.MSG_TRUNC)
                if received > RECV_BUFSIZE:
                    raise TcpStatusError(
                        'netlink reply of {0} bytes truncated to {1}; refusing to count short'.format(
                            received, RECV_BUFSIZE))
                if received == 0:
                    raise ParseError('netlink socket closed before NLMSG_DONE')
                if not split:
                    try:
                        done = count_netlink_messages(buf, received, tally, local_table, remote_table, None, ports)
                    except NetlinkRefused:
                        if family_name != 'all' or any(tally) or (ports is not None and (ports.local or ports.remote)):
                            raise
                        requests = ['ipv4', 'ipv6']  # no TCPDIAG_GETSOCK here: one request per family
                        break
                else:
                    before = sum(tally[index] for index in watched)
                    try:
                        done = count_netlink_messages(buf, received, tally, None, None, slots)
                    except NetlinkRefused:
                        if family_name != 'all' or any(tally):
                            raise
                        requests = ['ipv4', 'ipv6']
                        break
                    if sum(tally[index] for index in watched) != before:
                        count_full_sockets(buf, received, full, full_codes, slots)
    except _socket.timeout:
        raise TcpStatusError('netlink dump gave no answer within {0:g} s (the deadline NETLINK_TIMEOUT, '
                             'set under the agent\'s Timeout)'.format(NETLINK_TIMEOUT))
    except _socket.error as exc:
        raise BackendUnavailable('netlink sock_diag failed: {0}'.format(exc))
    finally:
        sock.close()
    return tally, full


def _sum_tallies(tallies):
    total = _new_counter()
    for tally in tallies.values():
        for code, count in enumerate(tally):
            total[code] += count
    return total


def _family_tally(tally, family_name):
    """The by-state tally of one family, from a per-family tally of _netlink_dump."""
    slot = FAMILY_SLOTS[FAMILY_OF_NAME[family_name]]
    return tally[slot:slot + 256]


def _count_netlink(families, codes, local_ranges, remote_ranges, deadline):
    bytecode = port_bytecode(local_ranges, remote_ranges)
    tally, _full = _netlink_dump(families, state_mask(codes), deadline, bytecode,
                                 port_table(local_ranges), port_table(remote_ranges))
    return tally, None


def _read_text(name):
    path = COUNTER_FILES[name]
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('ascii', 'replace')
    except (IOError, OSError) as exc:
        raise BackendUnavailable('cannot read {0}: {1}'.format(path, exc))


def read_counters():
    """The kernel counters the counters backend uses: inuse4, inuse6, tw, and /proc/net/snmp's Tcp fields."""
    values = {}
    for name, prefix in (('sockstat', 'TCP:'), ('sockstat6', 'TCP6:')):
        text = _read_text(name)
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0] == prefix:
                pairs = dict(zip(fields[1::2], fields[2::2]))
                try:
                    values['inuse4' if prefix == 'TCP:' else 'inuse6'] = int(pairs['inuse'])
                    if prefix == 'TCP:':
                        values['tw'] = int(pairs.get('tw', 0))
                except (KeyError, ValueError):
                    raise ParseError('{0} has no number after inuse: {1!r}'.format(COUNTER_FILES[name], line))
                break
        else:
            raise ParseError('{0} has no {1} line'.format(COUNTER_FILES[name], prefix))
    rows = [line.split() for line in _read_text('snmp').splitlines() if line.startswith('Tcp:')]
    if len(rows) != 2 or len(rows[0]) != len(rows[1]):
        raise ParseError('{0} has no Tcp: header and value lines'.format(COUNTER_FILES['snmp']))
    try:
        snmp = dict((key, int(value)) for key, value in zip(rows[0][1:], rows[1][1:]))
        for key in ('CurrEstab', 'ActiveOpens', 'PassiveOpens', 'AttemptFails', 'EstabResets'):
            values[key] = snmp[key]
    except (KeyError, ValueError):
        raise ParseError('{0} Tcp: lacks a counter the check needs (CurrEstab, ActiveOpens, ...)'.format(
            COUNTER_FILES['snmp']))
    return values


def _kernel_release():
    try:
        import posix  # built in (no search of sys.path); os would cost start-up
        return posix.uname()[2]
    except (ImportError, AttributeError):
        return ''


def _kernel_version(release):
    numbers = []
    for part in release.split('.')[:2]:
        digits = ''
        for char in part:
            if not char.isdigit():
                break
            digits += char
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers + [0] * (2 - len(numbers)))


def check_established(before, after, other_full, close_wait):
    """Cross-check of ESTABLISHED derived from inuse against /proc/net/snmp CurrEstab (both families together).

    ``before``/``after`` are read_counters() around the dump, ``other_full`` the full sockets of every other
    state the dump found, ``close_wait`` its CLOSE_WAIT count. Returns (derived total, the check's record);
    the record's ``agrees`` says whether the two counters agree under either meaning of CurrEstab
    (ESTABLISHED, or ESTABLISHED + CLOSE_WAIT) within ``churn``: the sockets that can have changed state
    during the call (opened, per the monotonic open counters, and the net moves of inuse, CurrEstab and tw).
    With nothing changing, the bound is 0 and the counts must be equal.
    """
    derived = after['inuse4'] + after['inuse6'] - other_full
    churn = (2 * (after['ActiveOpens'] - before['ActiveOpens'] + after['PassiveOpens'] - before['PassiveOpens'])
             + (after['AttemptFails'] - before['AttemptFails']) + (after['EstabResets'] - before['EstabResets'])
             + abs(after['inuse4'] + after['inuse6'] - before['inuse4'] - before['inuse6'])
             + abs(after['CurrEstab'] - before['CurrEstab']) + abs(after['tw'] - before['tw']))
    candidates = (after['CurrEstab'], after['CurrEstab'] - close_wait)
    off = min(abs(derived - candidate) for candidate in candidates)
    record = {'derived': derived, 'curr_estab': after['CurrEstab'], 'close_wait': close_wait, 'churn': churn,
              'off': off, 'agrees': derived >= 0 and off <= churn}
    return derived, record


def _count_counters(families, codes, local_ranges, remote_ranges, deadline):
    """ESTABLISHED from sockstat inuse, checked against snmp CurrEstab; every other state from a dump without it."""
    if local_ranges is not None or remote_ranges is not None:
        raise BackendUnavailable('the kernel counters count the whole host; a port filter needs a dump')
    release = _kernel_release()
    if _kernel_version(release) < COUNTERS_MIN_KERNEL:
        raise BackendUnavailable('kernel {0} is older than {1}.{2}: its dumps cannot tell request and TIME_WAIT '
                                 'sockets from full ones'.format(release or '(unknown)', *COUNTERS_MIN_KERNEL))
    established = CODE_BY_STATE['ESTABLISHED']
    minority = [code for code, _name in STATE_CODES if code != established]
    classify = (CODE_BY_STATE['SYN_RECV'], CODE_BY_STATE['FIN_WAIT2'])
    before = read_counters()
    tally, full = _netlink_dump(('ipv4', 'ipv6'), state_mask(minority), deadline, full_codes=classify)
    after = read_counters()
    tallies, other = {}, {}
    for family_name in ('ipv4', 'ipv6'):
        family_tally = tallies[family_name] = _family_tally(tally, family_name)
        family_full = _family_tally(full, family_name)
        family_tally[CODE_BY_STATE['SYN_RECV']] += family_tally[NEW_SYN_RECV]
        family_tally[NEW_SYN_RECV] = 0
        family_full[CODE_BY_STATE['SYN_RECV']] += family_full[NEW_SYN_RECV]
        other[family_name] = sum(family_full[code] if code in classify else family_tally[code]
                                 for code in INUSE_CODES)
    close_wait = sum(family_tally[CODE_BY_STATE['CLOSE_WAIT']] for family_tally in tallies.values())
    _derived, record = check_established(before, after, other['ipv4'] + other['ipv6'], close_wait)
    if not record['agrees']:
        raise BackendUnavailable(
            'kernel counters disagree: ESTABLISHED from sockstat inuse {derived}, /proc/net/snmp CurrEstab '
            '{curr_estab} (CLOSE_WAIT {close_wait}), {off} apart with {churn} socket(s) changing state during '
            'the call'.format(**record))
    tallies['ipv4'][established] = after['inuse4'] - other['ipv4']
    tallies['ipv6'][established] = after['inuse6'] - other['ipv6']
    if tallies['ipv4'][established] < 0 or tallies['ipv6'][established] < 0:
        raise BackendUnavailable('kernel counters disagree: a family\'s inuse is below its other full sockets')
    return _sum_tallies(dict((name, tallies[name]) for name in families)), record


def count_proc_lines(data, tally, local_table=None, remote_table=None, source='/proc/net/tcp', ports=None):
    """Count the sockets listed in the text of /proc/net/tcp or tcp6 into ``tally``.

    With ``ports`` (a PortTally), every socket is counted by local and remote port there instead; a LISTEN line's
    rx_queue is its accept queue's length (the backlog is not in these files).
    """
    if isinstance(data, bytes):
        lines = data.split(b'\n')
    else:
        lines = data.encode('ascii', 'replace').split(b'\n')
    if not lines or b'local_address' not in lines[0]:
        raise ParseError('{0} does not start with the kernel header line'.format(source))
    filtered = local_table is not None or remote_table is not None or ports is not None
    for number, line in enumerate(lines[1:], 2):
        fields = line.split(None, 4)
        if not fields:
            continue
        try:
            if len(fields) < 4 or not fields[0].endswith(b':'):
                raise ValueError(line)
            code = int(fields[3], 16)
            if filtered:
                lport = int(fields[1].rpartition(b':')[2], 16)
                rport = int(fields[2].rpartition(b':')[2], 16)
            if ports is not None:
                queues = None
                if code == LISTEN_CODE:  # "tx_queue:rx_queue": rx_queue is the accept queue's length
                    queues = (int(fields[4].split(None, 1)[0].partition(b':')[2], 16), None)
        except (ValueError, IndexError):
            raise ParseError('{0} line {1} is not a socket line: {2!r}'.format(
                source, number, line[:80].decode('ascii', 'replace')))
        if not 0 <= code <= 255:
            raise ParseError('{0} line {1} has state {2:#x}, not a TCP state'.format(source, number, code))
        if ports is not None:
            ports.add(code, lport, rport, queues)
            continue
        if filtered and not ((local_table is None or local_table[lport])
                             and (remote_table is None or remote_table[rport])):
            continue
        tally[code] += 1
    return tally


def _count_proc(families, codes, local_ranges, remote_ranges, deadline, ports=None):
    tally = _new_counter()
    local_table, remote_table = port_table(local_ranges), port_table(remote_ranges)
    for family_name, path in PROC_FILES:
        if family_name not in families:
            continue
        try:
            with open(path, 'rb') as handle:
                data = handle.read()
        except (IOError, OSError) as exc:
            import os  # only on this error path
            if exc.errno == errno.ENOENT and family_name == 'ipv6' and os.path.exists(PROC_FILES[0][1]):
                continue  # IPv6 disabled on this host: no IPv6 sockets to count
            raise BackendUnavailable('cannot read {0}: {1}'.format(path, exc))
        count_proc_lines(data, tally, local_table, remote_table, path, ports)
    return tally, None


def _count_psutil(families, codes, local_ranges, remote_ranges, deadline):
    try:
        import psutil  # only where neither netlink nor /proc exist
    except ImportError:
        raise BackendUnavailable('psutil is not installed')
    wanted = set(_socket.AF_INET if name == 'ipv4' else _socket.AF_INET6 for name in families)
    local_table, remote_table = port_table(local_ranges), port_table(remote_ranges)
    tally = _new_counter()
    try:
        connections = psutil.net_connections(kind='tcp')
    except Exception as exc:  # psutil raises AccessDenied and OS-specific errors
        raise BackendUnavailable('psutil.net_connections failed: {0}'.format(exc))
    for conn in connections:
        if conn.family not in wanted or conn.status not in CODE_BY_STATE:
            continue
        if local_table is not None and not local_table[conn.laddr[1] if conn.laddr else 0]:
            continue
        if remote_table is not None and not remote_table[conn.raddr[1] if conn.raddr else 0]:
            continue
        tally[CODE_BY_STATE[conn.status]] += 1
    return tally, None


_BACKEND_FUNCTIONS = (('counters', _count_counters), ('netlink', _count_netlink), ('proc', _count_proc),
                      ('psutil', _count_psutil))


def count_states(states=None, family='all', local_ports=None, remote_ports=None, backend='auto'):
    """Count TCP sockets by state.

    Returns a dict: ``counts`` (state name -> int, one entry per requested
    state, all states by default), ``total``, ``backend`` (the one that
    answered), ``family`` and ``fallbacks``: why each backend tried before
    the one that answered could not count, as ``'netlink: <reason>'`` (empty
    when the first answered). With the counters backend, ``check`` holds the
    cross-check's figures. ``auto`` tries ``counters`` only for a whole-host
    count that includes ESTABLISHED (elsewhere a dump with the state mask and
    the port filter is already the minimum). Raises ArgumentError on bad input
    and TcpStatusError when no backend can count.
    """
    names = normalize_states(states)
    families = _family_names(family)
    local_ranges = port_ranges(local_ports)
    remote_ranges = port_ranges(remote_ports)
    if backend not in BACKENDS:
        raise ArgumentError('unknown backend {0}; accepted: {1}'.format(_shown(backend), ', '.join(BACKENDS)))
    if backend == 'counters' and (local_ranges is not None or remote_ranges is not None):
        raise ArgumentError('backend counters counts the whole host: no port filters (use netlink or proc)')
    codes = [CODE_BY_STATE[name] for name in names]
    use_counters = local_ranges is None and remote_ranges is None and 'ESTABLISHED' in names
    deadline = _clock() + NETLINK_TIMEOUT
    failures = []
    for name, function in _BACKEND_FUNCTIONS:
        if backend not in ('auto', name) or (backend == 'auto' and name == 'counters' and not use_counters):
            continue
        try:
            tally, check = function(families, codes, local_ranges, remote_ranges, deadline)
        except BackendUnavailable as exc:
            if backend != 'auto':
                raise
            failures.append('{0}: {1}'.format(name, exc))
            continue
        tally[CODE_BY_STATE['SYN_RECV']] += tally[NEW_SYN_RECV]
        counts = dict((state, tally[CODE_BY_STATE[state]]) for state in names)
        result = {'counts': counts, 'total': sum(counts.values()), 'backend': name, 'family': family,
                  'fallbacks': failures}
        if check is not None:
            result['check'] = check
        return result
    raise TcpStatusError('no backend could count TCP sockets: {0}'.format('; '.join(failures)))


# ---- The per-port mode: one dump, counted by local port (for every port with a LISTEN socket) and by remote port
# (for the remote ports asked for), with each port's accept queue.

class PortTally(object):
    """The per-port counts of one dump (count_netlink_messages / count_proc_lines call add() for every socket).

    ``local`` and ``remote`` map (port << 8 | state code) to a count; ``queues`` maps each port with a LISTEN
    socket to (accept queue length, backlog) of its fullest listener (backlog None where the source lacks it).
    """

    def __init__(self, local_table=None, remote_table=None):
        self.local_table = local_table
        self.remote_table = remote_table
        self.local = {}
        self.remote = {}
        self.queues = {}

    def add(self, state, sport, dport, queues=None):
        """Count one socket (``queues``: a listener's (queue, backlog)); count_netlink_messages inlines this."""
        if self.local_table is None or self.local_table[sport]:
            key = (sport << 8) | state
            self.local[key] = self.local.get(key, 0) + 1
            if queues is not None:
                self.listener(sport, queues)
        if self.remote_table is not None and self.remote_table[dport]:
            key = (dport << 8) | state
            self.remote[key] = self.remote.get(key, 0) + 1

    def listener(self, port, queues):
        """Keep the fuller of the port's listeners' (queue, backlog)."""
        held = self.queues.get(port)
        if held is None or _fill(queues) > _fill(held):
            self.queues[port] = queues

    def states(self, side, port):
        """{STATE: count} of every state on ``port`` (side 'local' or 'remote'), request sockets as SYN_RECV."""
        table = self.local if side == 'local' else self.remote
        base = port << 8
        counts = dict((name, table.get(base | code, 0)) for code, name in STATE_CODES)
        counts['SYN_RECV'] += table.get(base | NEW_SYN_RECV, 0)
        return counts


def _fill(queues):
    """How full a listener's accept queue is, for choosing the fullest of a port's listeners: (ratio, length)."""
    queue, backlog = queues
    if not backlog:
        return (float('inf') if queue and backlog is not None else 0.0, queue)
    return (float(queue) / backlog, queue)


def service_names(ports, path=None):
    """{port: name} from /etc/services (the first tcp entry of each port, as getservbyport answers)."""
    wanted = set(ports)
    names = {}
    try:
        with open(path or SERVICES_FILE, 'rb') as handle:
            data = handle.read()
    except (IOError, OSError):
        return names
    for line in data.split(b'\n'):
        fields = line.split(b'#', 1)[0].split()
        if len(fields) < 2:
            continue
        number, _sep, protocol = fields[1].partition(b'/')
        if protocol == b'tcp' and number.isdigit():
            port = int(number)
            if port in wanted and port not in names:
                names[port] = fields[0].decode('ascii', 'replace')
    return names


def read_listen_counters():
    """(ListenOverflows, ListenDrops) from /proc/net/netstat's TcpExt lines (this network namespace's)."""
    rows = [line.split() for line in _read_text('netstat').splitlines() if line.startswith('TcpExt:')]
    if len(rows) != 2 or len(rows[0]) != len(rows[1]):
        raise ParseError('{0} has no TcpExt: header and value lines'.format(COUNTER_FILES['netstat']))
    try:
        values = dict(zip(rows[0][1:], rows[1][1:]))
        return int(values['ListenOverflows']), int(values['ListenDrops'])
    except (KeyError, ValueError):
        raise ParseError('{0} TcpExt: lacks ListenOverflows or ListenDrops'.format(COUNTER_FILES['netstat']))


def max_ports_value(value):
    """The MAX_PORTS argument as an int from 1 to 65536; empty or None means MAX_PORTS_DEFAULT."""
    if value is None or value == '':
        return MAX_PORTS_DEFAULT
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65536:
        raise ArgumentError('bad MAX_PORTS {0}; the most listening ports to report, a number from 1 to 65536 '
                            '(default {1})'.format(_shown(value), MAX_PORTS_DEFAULT))
    return int(text)


def _json_text(text):
    out = []
    for char in text:
        if char in '"\\' or ord(char) < 0x20 or ord(char) > 0x7e:
            out.append('\\u{0:04x}'.format(ord(char)))
        else:
            out.append(char)
    return '"' + ''.join(out) + '"'


def _entry_json(entry):
    fields = ['"port":{0:d}'.format(entry['port']), '"service":' + _json_text(entry['service'])]
    if 'queue' in entry:
        fields.append('"queue":{0:d}'.format(entry['queue']))
        fields.append('"backlog":' + ('null' if entry['backlog'] is None else '{0:d}'.format(entry['backlog'])))
    fields.append('"states":' + counts_json(entry['states']))
    return '{' + ','.join(fields) + '}'


def _ports_frame(ports_text, remote_text, truncated, overflows, drops):
    """The per-port answer's JSON, from its entries' JSON texts."""
    return ('{"ports":[' + ports_text + '],"remote":[' + remote_text + '],' +
            '"truncated":{0:d},"listen_overflows":{1:d},"listen_drops":{2:d}}}'.format(truncated, overflows, drops))


def listening_request(listening_ports, remote_ranges=None):
    """The per-port mode's second request, after the dump of the LISTEN sockets: (the listening ports' ranges,
    the state mask of every state but LISTEN, the bytecode keeping the sockets on those ports or on
    ``remote_ranges``). The benchmark's floor (bench/methods/ports_floor.py) makes the same request."""
    listening = port_ranges(sorted(listening_ports)) if listening_ports else [(0, 0)]
    mask = state_mask([code for code, _name in STATE_CODES if code != LISTEN_CODE])
    return listening, mask, port_bytecode(listening, remote_ranges, either=True)


def count_ports(family='all', local_ports=None, remote_ports=None, max_ports=None, backend='auto'):
    """Count TCP sockets by state per port, in one call.

    With netlink and no ``local_ports``: a dump of the LISTEN sockets (a few messages), then a dump of every other
    state on their ports or on ``remote_ports``, which the kernel filters (port_bytecode), so that the client ends
    of connections (ephemeral local ports) cost no message (at 100k sockets, ~30% less than one full dump); with
    ``local_ports``, one dump filtered on them (or the remote ports). The /proc fallback reads both files once.

    Returns a dict: ``ports``, one entry for every local port with a LISTEN socket (of ``local_ports``, when
    given): ``port``, ``service`` (its /etc/services name, or ''), ``queue`` and ``backlog`` (the accept queue's
    length and limit of the port's fullest listener; backlog None from /proc, which lacks it) and ``states`` (every
    state's count of the sockets whose local port it is), busiest first (most sockets besides the listeners, then
    the longest queue, then the lowest port), at most ``max_ports`` (default 100) and at most what fits in
    PORTS_JSON_MAX bytes of JSON; ``truncated``, how many listening ports were left out for that; ``remote``, one
    entry for every port of ``remote_ports`` (at most 100): ``port``, ``service``, ``states`` of the sockets whose
    remote port it is; ``listen_overflows`` and ``listen_drops`` from /proc/net/netstat; ``backend``
    (netlink or proc), ``family``, ``fallbacks``. Raises ArgumentError on bad input and TcpStatusError when
    neither backend can count.
    """
    families = _family_names(family)
    local_ranges = port_ranges(local_ports)
    remote_ranges = port_ranges(remote_ports)
    limit = max_ports_value(max_ports)
    wanted_remote = []
    for first, last in remote_ranges or ():
        wanted_remote.extend(range(first, last + 1))
        if len(wanted_remote) > MAX_REMOTE_PORTS:
            raise ArgumentError('too many remote ports in {0}: at most {1}, each reported on its own'.format(
                _shown(remote_ports), MAX_REMOTE_PORTS))
    if backend not in ('auto', 'netlink', 'proc'):
        raise ArgumentError('backend {0} cannot count per port; accepted: auto, netlink, proc'.format(
            _shown(backend)))
    codes = [code for code, _name in STATE_CODES]
    bytecode = port_bytecode(local_ranges, remote_ranges, either=True)
    deadline = _clock() + NETLINK_TIMEOUT
    failures = []
    tally = None
    for name in ('netlink', 'proc'):
        if backend not in ('auto', name):
            continue
        tally = PortTally(port_table(local_ranges), port_table(remote_ranges))
        try:
            if name == 'netlink' and local_ranges is None:
                # The listeners first (a dump of LISTEN sockets alone: a few messages), then every other socket
                # on their ports or on the remote ports asked for, filtered by the kernel: the client ends of
                # connections (ephemeral local ports) cost no message.
                _netlink_dump(families, state_mask([LISTEN_CODE]), deadline, b'', ports=tally)
                listening, mask, listening_bytecode = listening_request(tally.queues, remote_ranges)
                tally.local_table = port_table(listening)
                _netlink_dump(families, mask, deadline, listening_bytecode, ports=tally)
            elif name == 'netlink':
                _netlink_dump(families, state_mask(codes), deadline, bytecode, ports=tally)
            else:
                _count_proc(families, codes, None, None, deadline, ports=tally)
        except BackendUnavailable as exc:
            if backend != 'auto':
                raise
            failures.append('{0}: {1}'.format(name, exc))
            tally = None
            continue
        break
    if tally is None:
        raise TcpStatusError('no backend could count TCP sockets per port: {0}'.format('; '.join(failures)))
    try:
        overflows, drops = read_listen_counters()
    except BackendUnavailable as exc:
        raise TcpStatusError(str(exc))
    names = service_names(list(tally.queues) + wanted_remote)
    entries = []
    for port, (queue, backlog) in tally.queues.items():
        states = tally.states('local', port)
        entries.append({'port': port, 'service': names.get(port, ''), 'queue': queue, 'backlog': backlog,
                        'states': states})
    entries.sort(key=lambda entry: (entry['states']['LISTEN'] - sum(entry['states'].values()), -entry['queue'],
                                    entry['port']))
    remote = [{'port': port, 'service': names.get(port, ''), 'states': tally.states('remote', port)}
              for port in wanted_remote]
    # Keep the busiest entries that fit: the frame is measured with the widest truncated count.
    room = PORTS_JSON_MAX - len(_ports_frame('', ','.join(_entry_json(entry) for entry in remote), 65536,
                                             overflows, drops))
    kept = []
    for entry in entries[:limit]:
        size = len(_entry_json(entry)) + (1 if kept else 0)
        if size > room:
            break
        room -= size
        kept.append(entry)
    return {'ports': kept, 'remote': remote, 'truncated': len(entries) - len(kept), 'listen_overflows': overflows,
            'listen_drops': drops, 'backend': name, 'family': family, 'fallbacks': failures}


def ports_json(result):
    """The per-port answer (count_ports' result) as compact JSON, fields in a fixed order (Python 2.7 too)."""
    return _ports_frame(','.join(_entry_json(entry) for entry in result['ports']),
                        ','.join(_entry_json(entry) for entry in result['remote']), result['truncated'],
                        result['listen_overflows'], result['listen_drops'])


def discovery_json(result):
    """The same ports in Zabbix's low-level discovery format (with the data wrapper that Zabbix 3.4 needs):
    {#PORT}, {#SERVICE} and {#SIDE} (local for a listening port, remote for a remote port asked for)."""
    rows = ['{{"{{#PORT}}":"{0:d}","{{#SERVICE}}":{1},"{{#SIDE}}":"{2}"}}'.format(
        entry['port'], _json_text(entry['service']), side)
        for side, entries in (('local', result['ports']), ('remote', result['remote'])) for entry in entries]
    return '{"data":[' + ','.join(rows) + ']}'


def counts_json(counts):
    """Compact JSON of a counts dict, keys in kernel state order (stable on Python 2.7 too)."""
    return '{' + ','.join('"{0}":{1:d}'.format(state, counts[state])
                          for state in STATES if state in counts) + '}'


def run_script(argv):
    """The agent's script: returns (exit code, stdout text, stderr text)."""
    args = list(argv)
    backend = 'auto'
    if args and args[0].startswith('--backend='):
        backend = args.pop(0)[len('--backend='):]
    while args and args[-1] == '':
        args.pop()  # the UserParameter passes "$2" "$3" "$4" even when the key has fewer
    if not args:
        return 2, '', 'tcp_status: missing STATE; {0}\n'.format(USAGE)
    mode = args[0].strip().lower()
    if mode in ('ports', 'discovery'):
        return _run_ports(mode, args[1:], backend)
    if len(args) > 4:
        return 2, '', 'tcp_status: too many arguments ({0}: {1}{2}); {3}\n'.format(
            len(args), ' '.join(_shown(arg) for arg in args[4:7]), ' ...' if len(args) > 7 else '', USAGE)
    target = args[0]
    want_all = target.strip().lower() == 'all'
    try:
        if not want_all:
            target = normalize_state(target)
        result = count_states(
            states=None if want_all else [target],
            local_ports=args[1] if len(args) > 1 else None,
            remote_ports=args[2] if len(args) > 2 else None,
            family=args[3].strip().lower() if len(args) > 3 and args[3] else 'all',
            backend=backend)
    except ArgumentError as exc:
        return 2, '', 'tcp_status: {0}\n'.format(exc)
    except TcpStatusError as exc:
        return 1, '', 'tcp_status: {0}\n'.format(exc)
    if want_all:
        return 0, counts_json(result['counts']) + '\n', ''
    return 0, '{0:d}\n'.format(result['counts'][target]), ''


def _run_ports(mode, args, backend):
    """The per-port modes of the script: ports (JSON) and discovery (the LLD format)."""
    if len(args) > 4:
        return 2, '', 'tcp_status: too many arguments for {0} ({1}: {2}{3}); {4}\n'.format(
            mode, len(args) + 1, ' '.join(_shown(arg) for arg in args[4:7]), ' ...' if len(args) > 7 else '', USAGE)
    args = args + [''] * (4 - len(args))
    try:
        result = count_ports(family=args[2].strip().lower() or 'all', local_ports=args[0] or None,
                             remote_ports=args[1] or None, max_ports=args[3], backend=backend)
    except ArgumentError as exc:
        return 2, '', 'tcp_status: {0}\n'.format(exc)
    except TcpStatusError as exc:
        return 1, '', 'tcp_status: {0}\n'.format(exc)
    return 0, (ports_json(result) if mode == 'ports' else discovery_json(result)) + '\n', ''


def main(argv=None):
    code, out, err = run_script(sys.argv[1:] if argv is None else argv)
    if out:
        sys.stdout.write(out)
    if err:
        sys.stderr.write(err)
    return code


if __name__ == '__main__':
    sys.exit(main())
