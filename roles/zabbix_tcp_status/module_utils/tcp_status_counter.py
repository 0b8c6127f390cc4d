#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Count TCP sockets by state: the one implementation behind the Ansible module
``tcp_status`` (imported as ``ansible.module_utils.tcp_status_counter``) and the
script the Zabbix agent runs (this same file, installed as ``tcp_status.py``).

Backends, tried in this order by ``backend='auto'``:

* ``netlink``: NETLINK_SOCK_DIAG dump (``inet_diag_req_v2``); the kernel filters
  by the state bitmask, so one state costs only the sockets in that state;
* ``proc``: parsing ``/proc/net/tcp`` and ``/proc/net/tcp6``;
* ``psutil``: only where neither exists (not Linux) and psutil is installed.

Standard library only; runs unchanged on Python 2.7, 3.6 and 3.8+.
Nothing here imports json, re or argparse: the agent starts this file every
interval on every host, and every import is start-up time.

Script contract (what a Zabbix UserParameter calls)::

    tcp_status.py STATE [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]]   -> one integer
    tcp_status.py all   [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]]   -> JSON object

STATE is a netstat or ss state name in any case (``TIME_WAIT``, ``time-wait``,
``listening``...). PORTS is a comma-separated list of ports or ranges
(``443``, ``80,443``, ``1024-65535``); empty means any. FAMILY is ``ipv4``,
``ipv6`` or ``all`` (the default). A bad argument prints one line on stderr,
nothing on stdout, and exits 2; a failure to read sockets exits 1.
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

import errno  # noqa: E402  (after the import path is made safe, above)
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
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
BACKENDS = ('auto', 'netlink', 'proc', 'psutil')

# Netlink constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_HDRLEN = 16
# inet_diag_msg: family, state, timer, retrans, then sockid (sport, dport big-endian).
DIAG_STATE_OFFSET = NLMSG_HDRLEN + 1
DIAG_SPORT_OFFSET = NLMSG_HDRLEN + 4
DIAG_DPORT_OFFSET = NLMSG_HDRLEN + 6
DIAG_MSG_MINLEN = NLMSG_HDRLEN + 72
# Large enough for any one dump part (the kernel caps parts at 32 KiB); a
# reply larger than this is detected through MSG_TRUNC, never counted short.
RECV_BUFSIZE = 256 * 1024
# Seconds the whole netlink dump (every family, every part) may take, so that a hung dump fails with this
# script's own message before the Zabbix agent's Timeout (3 s by default) kills it. The role rewrites the next
# line of the installed script, matched by the regex ^NETLINK_TIMEOUT = .*$, to the agent's Timeout minus 0.5 s:
# keep it one line of that form, a float literal.
NETLINK_TIMEOUT = 2.5

_NLMSGHDR = struct.Struct('=IH')
_NLMSG_ERRNO = struct.Struct('=i')
# nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, 48-byte sockid).
_DIAG_REQUEST = struct.Struct('=IHHII' + 'BBBBI' + '48x')

PROC_FILES = (('ipv4', '/proc/net/tcp'), ('ipv6', '/proc/net/tcp6'))

USAGE = 'usage: tcp_status.py STATE|all [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]]'


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


def parse_ports(spec):
    """Turn a port spec into a 65536-byte lookup table, or None for "any port".

    ``spec`` is a comma-separated string (``"80,443,8000-8100"``), an int, a list
    of those, or empty/None.
    """
    if spec is None or spec == '' or spec == []:
        return None
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    table = bytearray(65536)
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
            table[first:last + 1] = b'\x01' * (last - first + 1)
    return table


def _family_names(family):
    if family not in FAMILIES:
        raise ArgumentError('unknown address family {0}; accepted: {1}'.format(
            _shown(family), ', '.join(FAMILIES)))
    return ('ipv4', 'ipv6') if family == 'all' else (family,)


def _new_counter():
    # Indexed by kernel state code; 256 slots so that any byte is a valid index.
    return [0] * 256


def count_netlink_messages(buf, length, tally, local_table=None, remote_table=None):
    """Count the sock_diag messages in ``buf[:length]`` into ``tally`` (by state code).

    Returns True once NLMSG_DONE is seen. Raises ParseError on a malformed
    stream and TcpStatusError on a kernel error reply.
    """
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
    unpack = _NLMSGHDR.unpack_from
    offset = 0
    filtered = local_table is not None or remote_table is not None
    while offset < length:
        if offset + NLMSG_HDRLEN > length:
            raise ParseError('netlink reply ends inside a message header at byte {0} of {1}'.format(
                offset, length))
        msg_len, msg_type = unpack(buf, offset)
        if msg_len < NLMSG_HDRLEN or offset + msg_len > length:
            raise ParseError('netlink message at byte {0} claims length {1}, {2} bytes remain'.format(
                offset, msg_len, length - offset))
        if msg_type == SOCK_DIAG_BY_FAMILY:
            if msg_len < DIAG_MSG_MINLEN:
                raise ParseError('sock_diag message at byte {0} is {1} bytes, shorter than {2}'.format(
                    offset, msg_len, DIAG_MSG_MINLEN))
            if not filtered:
                tally[buf[offset + DIAG_STATE_OFFSET]] += 1
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


class NetlinkRefused(BackendUnavailable):
    """The kernel answered the dump request with NLMSG_ERROR (e.g. ENOENT: no tcp_diag)."""

    def __init__(self, code):
        self.errno = code
        BackendUnavailable.__init__(self, 'netlink sock_diag refused the dump: {0}'.format(
            _errno_text(code)))


def _errno_text(code):
    return '{0} ({1})'.format(errno.errorcode.get(code, 'errno {0}'.format(code)), os.strerror(code))


def diag_request(family_name, state_mask, seq=1):
    """The bytes of one SOCK_DIAG_BY_FAMILY dump request for TCP sockets."""
    af = socket.AF_INET if family_name == 'ipv4' else socket.AF_INET6
    return _DIAG_REQUEST.pack(_DIAG_REQUEST.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                              seq, 0, af, socket.IPPROTO_TCP, 0, 0, state_mask)


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
    """Seconds left until deadline (a _clock() value); socket.timeout once none are left."""
    left = deadline - _clock()
    if left <= 0:
        raise socket.timeout()
    return left


def _count_netlink(families, codes, local_table, remote_table):
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except (AttributeError, socket.error) as exc:
        raise BackendUnavailable('cannot open a NETLINK_SOCK_DIAG socket: {0}'.format(exc))
    tally = _new_counter()
    buf = bytearray(RECV_BUFSIZE)
    mask = state_mask(codes)
    deadline = _clock() + NETLINK_TIMEOUT
    try:
        for seq, family_name in enumerate(families, 1):
            sock.settimeout(_time_left(deadline))
            sock.send(diag_request(family_name, mask, seq))
            done = False
            while not done:
                sock.settimeout(_time_left(deadline))
                received = sock.recv_into(buf, RECV_BUFSIZE, socket.MSG_TRUNC)
                if received > RECV_BUFSIZE:
                    raise TcpStatusError(
                        'netlink reply of {0} bytes truncated to {1}; refusing to count short'.format(
                            received, RECV_BUFSIZE))
                if received == 0:
                    raise ParseError('netlink socket closed before NLMSG_DONE')
                done = count_netlink_messages(buf, received, tally, local_table, remote_table)
    except socket.timeout:
        raise TcpStatusError('netlink dump gave no answer within {0:g} s (the deadline NETLINK_TIMEOUT, '
                             'set under the agent\'s Timeout)'.format(NETLINK_TIMEOUT))
    except socket.error as exc:
        raise BackendUnavailable('netlink sock_diag failed: {0}'.format(exc))
    finally:
        sock.close()
    return tally


def count_proc_lines(data, tally, local_table=None, remote_table=None, source='/proc/net/tcp'):
    """Count the sockets listed in the text of /proc/net/tcp or tcp6 into ``tally``."""
    if isinstance(data, bytes):
        lines = data.split(b'\n')
    else:
        lines = data.encode('ascii', 'replace').split(b'\n')
    if not lines or b'local_address' not in lines[0]:
        raise ParseError('{0} does not start with the kernel header line'.format(source))
    filtered = local_table is not None or remote_table is not None
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
        except (ValueError, IndexError):
            raise ParseError('{0} line {1} is not a socket line: {2!r}'.format(
                source, number, line[:80].decode('ascii', 'replace')))
        if not 0 <= code <= 255:
            raise ParseError('{0} line {1} has state {2:#x}, not a TCP state'.format(source, number, code))
        if filtered and not ((local_table is None or local_table[lport])
                             and (remote_table is None or remote_table[rport])):
            continue
        tally[code] += 1
    return tally


def _count_proc(families, codes, local_table, remote_table):
    tally = _new_counter()
    for family_name, path in PROC_FILES:
        if family_name not in families:
            continue
        try:
            with open(path, 'rb') as handle:
                data = handle.read()
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT and family_name == 'ipv6' and os.path.exists(PROC_FILES[0][1]):
                continue  # IPv6 disabled on this host: no IPv6 sockets to count
            raise BackendUnavailable('cannot read {0}: {1}'.format(path, exc))
        count_proc_lines(data, tally, local_table, remote_table, path)
    return tally


def _count_psutil(families, codes, local_table, remote_table):
    try:
        import psutil  # only where neither netlink nor /proc exist
    except ImportError:
        raise BackendUnavailable('psutil is not installed')
    wanted = set(socket.AF_INET if name == 'ipv4' else socket.AF_INET6 for name in families)
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
    return tally


_BACKEND_FUNCTIONS = (('netlink', _count_netlink), ('proc', _count_proc), ('psutil', _count_psutil))


def count_states(states=None, family='all', local_ports=None, remote_ports=None, backend='auto'):
    """Count TCP sockets by state.

    Returns a dict: ``counts`` (state name -> int, one entry per requested
    state, all states by default), ``total``, ``backend`` (the one that
    answered), ``family`` and ``fallbacks``: why each backend tried before
    the one that answered could not count, as ``'netlink: <reason>'`` (empty
    when the first answered). Raises ArgumentError on bad input and
    TcpStatusError when no backend can count.
    """
    names = normalize_states(states)
    families = _family_names(family)
    local_table = parse_ports(local_ports)
    remote_table = parse_ports(remote_ports)
    if backend not in BACKENDS:
        raise ArgumentError('unknown backend {0}; accepted: {1}'.format(_shown(backend), ', '.join(BACKENDS)))
    codes = [CODE_BY_STATE[name] for name in names]
    failures = []
    for name, function in _BACKEND_FUNCTIONS:
        if backend not in ('auto', name):
            continue
        try:
            tally = function(families, codes, local_table, remote_table)
        except BackendUnavailable as exc:
            if backend != 'auto':
                raise
            failures.append('{0}: {1}'.format(name, exc))
            continue
        tally[CODE_BY_STATE['SYN_RECV']] += tally[NEW_SYN_RECV]
        counts = dict((state, tally[CODE_BY_STATE[state]]) for state in names)
        return {'counts': counts, 'total': sum(counts.values()), 'backend': name, 'family': family,
                'fallbacks': failures}
    raise TcpStatusError('no backend could count TCP sockets: {0}'.format('; '.join(failures)))


def counts_json(counts):
    """Compact JSON of a counts dict, keys in kernel state order (stable on Python 2.7 too)."""
    return '{' + ','.join('"{0}":{1:d}'.format(state, counts[state])
                          for state in STATES if state in counts) + '}'


def run_script(argv):
    """The agent's script: returns (exit code, stdout text, stderr text)."""
    args = list(argv)
    while args and args[-1] == '':
        args.pop()  # the UserParameter passes "$2" "$3" "$4" even when the key has fewer
    if not args:
        return 2, '', 'tcp_status: missing STATE; {0}\n'.format(USAGE)
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
            family=args[3].strip().lower() if len(args) > 3 and args[3] else 'all')
    except ArgumentError as exc:
        return 2, '', 'tcp_status: {0}\n'.format(exc)
    except TcpStatusError as exc:
        return 1, '', 'tcp_status: {0}\n'.format(exc)
    if want_all:
        return 0, counts_json(result['counts']) + '\n', ''
    return 0, '{0:d}\n'.format(result['counts'][target]), ''


def main(argv=None):
    code, out, err = run_script(sys.argv[1:] if argv is None else argv)
    if out:
        sys.stdout.write(out)
    if err:
        sys.stderr.write(err)
    return code


if __name__ == '__main__':
    sys.exit(main())
