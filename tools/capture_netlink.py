#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capture the real kernel bytes the counter's pure parsers are tested on.

    python3 tools/capture_netlink.py [OUTDIR]        (as root; OUTDIR: tests/fixtures)

The tool re-runs itself inside a fresh network namespace (``unshare -n``), so
that the sockets it opens on the namespace's own loopback are the only sockets
there: the capture holds exactly the known mix below and nothing of the host.
Inside the namespace it

1. opens a known mix of TCP sockets on 127.0.0.1, ::1 and a dual-stack ``::``
   listener: listeners, established pairs, TIME_WAIT (client closed first),
   CLOSE_WAIT / FIN_WAIT2 (client closed, server did not), SYN_SENT and a
   completed-but-unaccepted connection (a listener with a full backlog);
2. lists them with ``ss -tanH -4`` / ``-6`` (the independent oracle: every
   socket's family, state, local and remote port);
3. sends NETLINK_SOCK_DIAG dump requests (``inet_diag_req_v2``, built here on
   purpose without the counter's code) and stores every reply chunk exactly as
   ``recv`` returned it: a full dump of each family read with a 4 KiB buffer
   (so the reply comes in several chunks), a state-filtered dump, an empty
   dump (no socket in CLOSING) and two refused requests (a family without a
   sock_diag handler: NLMSG_ERROR -ENOENT; a protocol without an inet_diag
   handler, as on a kernel without tcp_diag: NLMSG_DONE carrying -ENOENT);
4. copies ``/proc/net/tcp`` and ``/proc/net/tcp6`` as they are at that moment;
5. lists the sockets with ``ss`` again and refuses to write anything unless
   both listings are identical (so the captures and the oracle agree);
6. writes ``netlink/*.bin``, ``proc/*.txt`` and ``manifest.json`` (the chunk
   lengths, the request of each capture and the ``ss`` socket list).

The tests derive every expected count from the ``ss`` list in the manifest,
never from the counter. Standard library only, plus ``unshare`` and ``ss``.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
import ss_oracle  # noqa: E402  (tests/ss_oracle.py, the tests' ss reference)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), 'tests', 'fixtures')

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NLMSG_ERROR = 2
IPPROTO_SCTP = 132
AF_TIPC = 30  # a family without a sock_diag handler on most kernels
FAMILY_NAMES = {socket.AF_INET: 'ipv4', socket.AF_INET6: 'ipv6'}
ALL_STATES_MASK = 0xFFF  # bits 0-11: every TCP state including NEW_SYN_RECV (12 is bit 12 below)
TCP_CODES = {'ESTABLISHED': 1, 'SYN_SENT': 2, 'SYN_RECV': 3, 'FIN_WAIT1': 4, 'FIN_WAIT2': 5,
             'TIME_WAIT': 6, 'CLOSE': 7, 'CLOSE_WAIT': 8, 'LAST_ACK': 9, 'LISTEN': 10, 'CLOSING': 11}

# Ports of the namespace's listeners (the namespace is empty, so any port is free).
PORT_V4 = 7001       # 127.0.0.1, IPv4 only
PORT_V6 = 7002       # ::1, IPV6_V6ONLY
PORT_DUAL = 7003     # ::, dual-stack: its IPv4 clients are IPv6 (v4-mapped) sockets
PORT_FULL = 7004     # 127.0.0.1, backlog 0, never accepted: a queued connection, then SYN_SENT

# The mix open_mix() makes, (family, state) -> sockets; the capture is refused if ss sees anything else.
EXPECTED_MIX = {
    ('ipv4', 'LISTEN'): 2, ('ipv6', 'LISTEN'): 2,
    # 20 IPv4 pairs + 3 IPv4 clients of the dual-stack listener + the queued connection (both ends)
    ('ipv4', 'ESTABLISHED'): 20 * 2 + 3 + 2,
    # 12 IPv6 pairs + the 3 v4-mapped server ends of the dual-stack listener
    ('ipv6', 'ESTABLISHED'): 12 * 2 + 3,
    ('ipv4', 'TIME_WAIT'): 5, ('ipv6', 'TIME_WAIT'): 4,
    ('ipv4', 'CLOSE_WAIT'): 3, ('ipv6', 'CLOSE_WAIT'): 2,
    ('ipv4', 'FIN_WAIT2'): 3, ('ipv6', 'FIN_WAIT2'): 2,
    ('ipv4', 'SYN_SENT'): 2,
}

def diag_request(family, protocol, states, seq):
    # struct nlmsghdr + struct inet_diag_req_v2 (sockid left zero: dump everything).
    body = struct.pack('=BBBBI48x', family, protocol, 0, 0, states)
    return struct.pack('=IHHII', 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def dump(family, protocol, states, bufsize, seq):
    """Send one dump request; return the reply chunks exactly as recv() gave them."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    chunks = []
    try:
        sock.settimeout(5)
        sock.send(diag_request(family, protocol, states, seq))
        while True:
            buf = bytearray(bufsize)
            size = sock.recv_into(buf, bufsize, socket.MSG_TRUNC)
            if size > bufsize:
                raise SystemExit('reply chunk of {0} bytes does not fit {1}; raise the buffer'.format(size, bufsize))
            chunk = bytes(buf[:size])
            chunks.append(chunk)
            if last_type(chunk) in (NLMSG_DONE, NLMSG_ERROR):
                return chunks
    finally:
        sock.close()


def last_type(chunk):
    offset, kind = 0, None
    while offset + 16 <= len(chunk):
        length, kind = struct.unpack_from('=IH', chunk, offset)
        if length < 16:
            raise SystemExit('bad netlink length {0}'.format(length))
        offset += (length + 3) & ~3
    return kind


def ss_sockets():
    """Every TCP socket as [family, STATE, local port, remote port], from ss (sorted)."""
    return sorted(list(row) for row in ss_oracle.ss_sockets())


def connect(family, address, port):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.connect((address, port))
    return sock


def open_mix():
    keep = []

    def listener(family, address, port, backlog=16, v6only=None):
        sock = socket.socket(family, socket.SOCK_STREAM)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind((address, port))
        sock.listen(backlog)
        keep.append(sock)
        return sock

    def pairs(server, family, address, port, count):
        made = []
        for _ in range(count):
            client = connect(family, address, port)
            accepted, _peer = server.accept()
            made.append((client, accepted))
        return made

    lv4 = listener(socket.AF_INET, '127.0.0.1', PORT_V4)
    lv6 = listener(socket.AF_INET6, '::1', PORT_V6, v6only=1)
    ldual = listener(socket.AF_INET6, '::', PORT_DUAL, v6only=0)
    lfull = listener(socket.AF_INET, '127.0.0.1', PORT_FULL, backlog=0)

    # ESTABLISHED: 20 IPv4 pairs, 12 IPv6 pairs, 3 IPv4 clients of the dual-stack listener.
    for server, family, address, port, count in ((lv4, socket.AF_INET, '127.0.0.1', PORT_V4, 20),
                                                 (lv6, socket.AF_INET6, '::1', PORT_V6, 12),
                                                 (ldual, socket.AF_INET, '127.0.0.1', PORT_DUAL, 3)):
        for client, accepted in pairs(server, family, address, port, count):
            keep.extend((client, accepted))
    # TIME_WAIT on the client: the client closes first, then the server.
    for server, family, address, port, count in ((lv4, socket.AF_INET, '127.0.0.1', PORT_V4, 5),
                                                 (lv6, socket.AF_INET6, '::1', PORT_V6, 4)):
        for client, accepted in pairs(server, family, address, port, count):
            client.close()
            time.sleep(0.01)
            accepted.close()
    # CLOSE_WAIT on the server, FIN_WAIT2 on the client: the client closes, the server does not.
    for server, family, address, port, count in ((lv4, socket.AF_INET, '127.0.0.1', PORT_V4, 3),
                                                 (lv6, socket.AF_INET6, '::1', PORT_V6, 2)):
        for client, accepted in pairs(server, family, address, port, count):
            keep.append(accepted)
            client.close()
    # A listener with backlog 0 that never accepts: the first connection completes and waits in
    # the accept queue (ESTABLISHED on both ends), later SYNs are dropped (SYN_SENT clients).
    keep.append(connect(socket.AF_INET, '127.0.0.1', PORT_FULL))
    for _ in range(2):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        client.connect_ex(('127.0.0.1', PORT_FULL))
        keep.append(client)
    time.sleep(0.3)
    return keep


def write(path, data):
    with open(path, 'wb') as handle:
        handle.write(data)


def capture(outdir):
    subprocess.check_call(['ip', 'link', 'set', 'lo', 'up'])
    if ss_sockets():
        raise SystemExit('the new network namespace is not empty')
    keep = open_mix()
    before = ss_sockets()
    mix = {}
    for family, state, _lport, _rport in before:
        mix[(family, state)] = mix.get((family, state), 0) + 1
    if mix != EXPECTED_MIX:
        raise SystemExit('ss sees {0}, not the intended mix {1}'.format(sorted(mix.items()), sorted(EXPECTED_MIX.items())))
    captures = []
    seq = [0]

    def add(name, family, protocol, states, bufsize, note):
        seq[0] += 1
        chunks = dump(family, protocol, states, bufsize, seq[0])
        write(os.path.join(outdir, 'netlink', name + '.bin'), b''.join(chunks))
        captures.append({'name': name, 'file': 'netlink/{0}.bin'.format(name),
                         'family': FAMILY_NAMES.get(family, family),
                         'protocol': protocol, 'state_mask': states, 'recv_bufsize': bufsize,
                         'chunks': [len(chunk) for chunk in chunks], 'note': note})

    every = ALL_STATES_MASK | (1 << 12)
    add('ipv4-all', socket.AF_INET, socket.IPPROTO_TCP, every, 4096, 'every state, read in 4 KiB chunks')
    add('ipv6-all', socket.AF_INET6, socket.IPPROTO_TCP, every, 4096, 'every state, read in 4 KiB chunks')
    some = (1 << TCP_CODES['TIME_WAIT']) | (1 << TCP_CODES['CLOSE_WAIT']) | (1 << TCP_CODES['LISTEN'])
    add('ipv4-tw-cw-listen', socket.AF_INET, socket.IPPROTO_TCP, some, 65536,
        'kernel-filtered: TIME_WAIT, CLOSE_WAIT and LISTEN only')
    add('ipv6-empty', socket.AF_INET6, socket.IPPROTO_TCP, 1 << TCP_CODES['CLOSING'], 65536,
        'no socket is in CLOSING: NLMSG_DONE only')
    add('refused-family-enoent', AF_TIPC, 0, every, 65536,
        'family AF_TIPC has no sock_diag handler: sock_diag answers NLMSG_ERROR -ENOENT at once')
    add('refused-protocol-enoent', socket.AF_INET, IPPROTO_SCTP, every, 65536,
        'protocol SCTP has no inet_diag handler: on kernel 6.x the dump itself fails, reported as '
        'NLMSG_DONE with status -ENOENT (the same path as a kernel without tcp_diag)')
    procs = []
    for name in ('tcp', 'tcp6'):
        with open('/proc/net/' + name, 'rb') as handle:
            data = handle.read()
        write(os.path.join(outdir, 'proc', name + '.txt'), data)
        procs.append({'file': 'proc/{0}.txt'.format(name), 'family': 'ipv4' if name == 'tcp' else 'ipv6'})
    after = ss_sockets()
    if before != after:
        raise SystemExit('sockets changed during the capture; run again')
    for sock in keep:
        sock.close()
    manifest = {
        'how': 'tools/capture_netlink.py in a fresh network namespace (unshare -n); see its docstring',
        'kernel': os.uname()[2],
        'ports': {'ipv4_listener': PORT_V4, 'ipv6_listener': PORT_V6, 'dual_stack_listener': PORT_DUAL,
                  'full_backlog_listener': PORT_FULL},
        'netlink': captures,
        'proc': procs,
        'ss_sockets': after,
    }
    with open(os.path.join(outdir, 'manifest.json'), 'w') as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write('\n')
    print('captured {0} sockets into {1}'.format(len(after), outdir))


def main():
    args = sys.argv[1:]
    if args[:1] != ['--in-netns']:
        outdir = os.path.abspath(args[0] if args else DEFAULT_OUT)
        for sub in ('netlink', 'proc'):
            if not os.path.isdir(os.path.join(outdir, sub)):
                os.makedirs(os.path.join(outdir, sub))
        return subprocess.call(['unshare', '-n', sys.executable, os.path.abspath(__file__), '--in-netns', outdir])
    capture(args[1])
    return 0


if __name__ == '__main__':
    sys.exit(main())
