# -*- coding: utf-8 -*-
"""The counter's per-port mode (issue 10: ``tcp_status.py ports|discovery``) against ss, on real loopback sockets in
a private network namespace, under 2.7, 3.6 and the agent's python3.

The scene: listeners on IPv4, IPv6 only and dual-stack, with ESTABLISHED, CLOSE_WAIT and TIME_WAIT sockets on
them; half-open request sockets (SYN_RECV) on one; a port with two listeners (127.0.0.1 and 127.0.0.2), one of
them never accepting with a backlog of 2, so that its accept queue fills (the kernel queues backlog + 1) and the
clients after that stay in SYN_SENT while the listener drops their SYNs (ListenOverflows); a listener of its own
that never accepts; a listener that stops accepting while handshakes are under way, as on a real network (raw
clients whose last ACK arrives once the queue is full): their connections stay in SYN_RECV; many idle listeners,
more than the default bound of 100 ports and more than fit in the answer's 60,000 bytes. Every answer is compared
with ``ss -Htan`` per port (local and remote) and ``ss -Hltn`` (Recv-Q/Send-Q) for the accept queues, and with
/proc/net/netstat for ListenOverflows/ListenDrops.

Each interpreter's run happens in a fresh network namespace (``unshare --net``): its loopback holds only the
sockets built here, so the counts are exact. This file is both the test and, run as a script inside the
namespace, the scene (as tests/integration/test_scale_paths.py).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from tcp_live import namespace_scene

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
REPO = os.path.dirname(TESTS)
COUNTER = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils', 'tcp_status_counter.py')
IDLE_LISTENERS = 300
STATES = ('ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT',
          'LAST_ACK', 'LISTEN', 'CLOSING')


# --------------------------------------------------------------------------------------------------------------
# The scene, inside the namespace (run as: unshare --net -- python test_ports.py --scene INTERPRETER)
# --------------------------------------------------------------------------------------------------------------

def _listen(farm, address, backlog, port=0):
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address == '::' else 1)
    sock.bind((address, port))
    sock.listen(backlog)
    farm.sockets.append(sock)
    return sock, sock.getsockname()[1]


def _flood(farm, address, port, count):
    """count clients connecting without waiting (the listener never accepts them)."""
    for _ in range(count):
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.setblocking(False)
        conn.connect_ex((address, port))
        farm.sockets.append(conn)


def build_scene(farm):
    from tcp_live import acked_on_a_full_queue, half_open
    v4 = farm.listener('ipv4')
    v6 = farm.listener('ipv6')
    dual = farm.listener('dual')
    for _ in range(3):
        farm.pair(v4)
    for _ in range(2):
        farm.pair(v6, client='ipv6')
    for _ in range(2):
        farm.pair(dual, client='ipv4')  # the server ends are v4-mapped IPv6 sockets
    farm.pair(dual, client='ipv6')
    farm.close_wait(v4)
    farm.close_wait(v4)
    farm.close_wait(dual, client='ipv6')
    farm.time_wait(v4)
    farm.time_wait(dual, client='ipv6')
    half_open(v4, 3)                     # SYN_RECV request sockets on v4's port
    # One port, two listeners: 127.0.0.1 accepts (backlog 8, nothing queued), 127.0.0.2 never does (backlog 2).
    _sock, shared = _listen(farm, '127.0.0.1', 8)
    _listen(farm, '127.0.0.2', 2, shared)
    _flood(farm, '127.0.0.2', shared, 5)
    # A listener that never accepts, alone on its port.
    _sock, stuck = _listen(farm, '127.0.0.1', 1)
    _flood(farm, '127.0.0.1', stuck, 4)
    # A listener (backlog 4) whose queue fills (5 clients) while 3 handshakes are under way: their last ACKs meet the
    # full queue and they stay in SYN_RECV (the SYN queue holds 3 < 4 requests, so no SYN cookies are used).
    _sock, acked = _listen(farm, '127.0.0.1', 4)
    acked_on_a_full_queue(farm, acked, 3, 5)
    idle = [_listen(farm, '127.0.0.1', 1)[1] for _ in range(IDLE_LISTENERS)]
    return {'v4': v4, 'v6': v6, 'dual': dual, 'shared': shared, 'stuck': stuck, 'acked': acked, 'idle': idle}


def ss_listen_queues():
    """{port: [(Recv-Q, Send-Q), ...]} of every listener, from `ss -Hltn`."""
    queues = {}
    for line in subprocess.check_output(['ss', '-Hltn']).decode().splitlines():
        fields = line.split()
        queues.setdefault(int(fields[3].rpartition(':')[2]), []).append((int(fields[1]), int(fields[2])))
    return queues


def listen_counters():
    with open('/proc/net/netstat') as handle:
        header, values = [line.split() for line in handle if line.startswith('TcpExt:')]
    pairs = dict(zip(header, values))
    return int(pairs['ListenOverflows']), int(pairs['ListenDrops'])


def run_scene(interpreter):
    from tcp_live import SocketFarm
    from ss_oracle import ss_sockets

    subprocess.check_call(['ip', 'link', 'set', 'lo', 'up'])
    farm = SocketFarm()
    try:
        ports = build_scene(farm)
        rows = ss_sockets()
        for _attempt in range(100):  # the handshakes and half-closes settle within a few ms
            again = ss_sockets()
            if sorted(again) == sorted(rows):
                break
            rows = again
        queues = ss_listen_queues()
        counters_before = listen_counters()
        remote = '{0},{1},1'.format(ports['v4'], ports['dual'])
        cases = {
            'default': ['ports'],
            'remote': ['ports', '', remote],
            'ipv4': ['ports', '', remote, 'ipv4'],
            'ipv6': ['ports', '', remote, 'ipv6'],
            'three': ['ports', '', '', '', '3'],
            'unbounded': ['ports', '', '', '', '65536'],
            'local': ['ports', '{0},{1}'.format(ports['v4'], ports['shared']), remote],
            'local only': ['ports', str(ports['stuck'])],
            'proc': ['--backend=proc', 'ports', '', remote],
            'netlink': ['--backend=netlink', 'ports', '', remote],
            'discovery': ['discovery', '', remote, '', '5'],
            'bad max': ['ports', '', '', '', '0'],
            'bad max text': ['ports', '', '', '', 'ten'],
            'bad port': ['ports', 'http'],
            'bad remote': ['ports', '', '1-1000'],
            'bad family': ['ports', '', '', 'ipv5'],
            'bad backend': ['--backend=counters', 'ports'],
            'too many': ['discovery', '', '', '', '', 'extra'],
        }
        scripts = {}
        for name, args in sorted(cases.items()):
            run = subprocess.run([interpreter, '-S', COUNTER] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 timeout=60)
            scripts[name] = [run.returncode, run.stdout.decode(), run.stderr.decode()]
        after = ss_sockets()
        return {'ports': ports, 'ss_before': sorted(rows), 'ss_after': sorted(after), 'queues': queues,
                'queues_after': ss_listen_queues(), 'counters_before': counters_before,
                'counters_after': listen_counters(), 'scripts': scripts, 'cases': cases}
    finally:
        farm.close()


# --------------------------------------------------------------------------------------------------------------
# The tests (outside the namespace)
# --------------------------------------------------------------------------------------------------------------

def scene(interpreter):
    """The scene's results for this interpreter, built once per interpreter in a fresh network namespace."""
    data = namespace_scene(__file__, interpreter)
    assert data['ss_before'] == data['ss_after'], 'the namespace changed during the run'
    assert data['queues'] == data['queues_after'], 'the accept queues changed during the run'
    return data


def answer(data, name):
    code, out, err = data['scripts'][name]
    assert (code, err) == (0, ''), (name, data['scripts'][name])
    assert out.endswith('\n') and out.count('\n') == 1, out
    return json.loads(out)


def oracle_states(rows, side, port, family='all'):
    counts = dict((state, 0) for state in STATES)
    for row_family, state, lport, rport in rows:
        if family in ('all', row_family) and (lport if side == 'local' else rport) == port:
            counts[state] += 1
    return counts


def oracle_ports(data, family='all'):
    """{port: states} of every port with a LISTEN socket, as ss lists them."""
    rows = [tuple(row) for row in data['ss_before']]
    listening = set(lport for row_family, state, lport, _rport in rows
                    if state == 'LISTEN' and family in ('all', row_family))
    return dict((port, oracle_states(rows, 'local', port, family)) for port in listening)


def etc_services():
    """{port: the first name /etc/services gives it for tcp}."""
    names = {}
    with open('/etc/services') as handle:
        for line in handle:
            fields = line.partition('#')[0].split()
            if len(fields) >= 2 and fields[1].endswith('/tcp'):
                names.setdefault(int(fields[1][:-4]), fields[0])
    return names


SERVICES = etc_services()


def oracle_queue(data, port):
    """The fullest listener's (queue, backlog) on port, from ss -Hltn's Recv-Q and Send-Q."""
    return max((tuple(pair) for pair in data['queues'][str(port)]),
               key=lambda pair: (float(pair[0]) / pair[1] if pair[1] else float('inf') if pair[0] else 0, pair[0]))


def check_entries(data, result, family='all', backlog=True, local=None):
    """Every listed port is a listening port (of local, when given) whose states and queue are exactly what ss
    lists; truncated counts the listening ports left out."""
    want = oracle_ports(data, family)
    if local is not None:
        want = dict((port, states) for port, states in want.items() if port in local)
    listed = [entry['port'] for entry in result['ports']]
    assert len(listed) == len(set(listed)), listed
    for entry in result['ports']:
        assert sorted(entry) == ['backlog', 'port', 'queue', 'service', 'states'], entry
        assert entry['states'] == want[entry['port']], (entry, want[entry['port']])
        queue, limit = oracle_queue(data, entry['port'])
        assert entry['queue'] == queue, (entry, queue)
        assert entry['backlog'] == (limit if backlog else None), (entry, limit)
        assert entry['service'] == SERVICES.get(entry['port'], ''), entry
        assert list(entry['states']) == list(STATES)  # the counter's fixed order, on 2.7 too
    assert result['truncated'] == len(want) - len(listed), (result['truncated'], len(want), len(listed))
    return want


INTERPRETERS = pytest.mark.parametrize('interpreter', ['2.7', '3.6', 'agent'], indirect=True)


@INTERPRETERS
def test_every_listening_port_is_counted_as_ss_lists_it(interpreter):
    data = scene(interpreter)
    ports = data['ports']
    result = answer(data, 'unbounded')
    want = check_entries(data, result)
    byport = dict((entry['port'], entry) for entry in result['ports'])
    v4, v6, dual = byport[ports['v4']], byport[ports['v6']], byport[ports['dual']]
    # The scene itself, so that an oracle that saw nothing cannot agree with a counter that saw nothing.
    assert v4['states']['ESTABLISHED'] == 3 and v4['states']['CLOSE_WAIT'] == 2, v4
    assert v4['states']['SYN_RECV'] == 3 and v4['states']['LISTEN'] == 1, v4    # the half-open requests
    assert v6['states']['ESTABLISHED'] == 2 and v6['states']['LISTEN'] == 1, v6
    assert dual['states']['ESTABLISHED'] == 3 and dual['states']['CLOSE_WAIT'] == 1, dual
    # TIME_WAIT stays with the client, whose local port is not a listening one: not on the listener's port.
    assert v4['states']['TIME_WAIT'] == 0 and dual['states']['TIME_WAIT'] == 0
    assert sum(want[port]['LISTEN'] for port in want) == 3 + 2 + 1 + 1 + IDLE_LISTENERS
    assert SERVICES[22] == 'ssh' and SERVICES[1] == 'tcpmux'  # the oracle reads what the counter reads


@INTERPRETERS
def test_the_accept_queue_is_the_fullest_listeners(interpreter):
    data = scene(interpreter)
    ports = data['ports']
    byport = dict((entry['port'], entry) for entry in answer(data, 'default')['ports'])
    stuck, shared = byport[ports['stuck']], byport[ports['shared']]
    # The kernel queues one more than the backlog (sk_acceptq_is_full is queue > backlog): 2 for backlog 1.
    assert (stuck['queue'], stuck['backlog']) == (2, 1), stuck
    assert stuck['states']['ESTABLISHED'] == 2 and stuck['states']['LISTEN'] == 1, stuck
    # The port's other listener (127.0.0.1, backlog 8) is empty: the answer is the full one's, not a sum.
    assert sorted(tuple(pair) for pair in data['queues'][str(ports['shared'])]) == [(0, 8), (3, 2)]
    assert (shared['queue'], shared['backlog']) == (3, 2) and shared['states']['LISTEN'] == 2, shared
    # The clients the full queues refused wait in SYN_SENT on their ephemeral ports (the listener drops their SYNs).
    rows = [tuple(row) for row in data['ss_before']]
    assert sum(1 for row in rows if row[1] == 'SYN_SENT' and row[3] in (ports['stuck'], ports['shared'])) == 2 + 2
    overflows, drops = answer(data, 'default')['listen_overflows'], answer(data, 'default')['listen_drops']
    low, high = data['counters_before'], data['counters_after']
    assert low[0] <= overflows <= high[0] and low[1] <= drops <= high[1], (overflows, drops, low, high)
    # 2 + 2 SYNs dropped by the full queues, 3 ACKs that found the queue full.
    assert overflows >= 4 + 3 and drops >= overflows, (overflows, drops)


@INTERPRETERS
def test_handshakes_completed_against_a_full_queue_stay_in_syn_recv(interpreter):
    """The issue's picture of a listener that stops accepting: its queue at the limit, and the connections whose
    handshake ends after that in SYN_RECV on its port (the clients, on the far side, believe they are connected)."""
    data = scene(interpreter)
    port = data['ports']['acked']
    entry = dict((item['port'], item) for item in answer(data, 'default')['ports'])[port]
    assert (entry['queue'], entry['backlog']) == (5, 4), entry
    assert entry['states']['SYN_RECV'] == 3 and entry['states']['ESTABLISHED'] == 5, entry
    rows = [tuple(row) for row in data['ss_before']]
    assert sum(1 for row in rows if row[1] == 'SYN_RECV' and row[2] == port) == 3
    # The /proc fallback sees them too.
    proc = dict((item['port'], item) for item in answer(data, 'proc')['ports'])[port]
    assert proc['states']['SYN_RECV'] == 3 and proc['queue'] == 5, proc


@INTERPRETERS
def test_remote_ports_and_families(interpreter):
    data = scene(interpreter)
    ports = data['ports']
    rows = [tuple(row) for row in data['ss_before']]
    for name, family in (('remote', 'all'), ('ipv4', 'ipv4'), ('ipv6', 'ipv6'), ('netlink', 'all')):
        result = answer(data, name)
        check_entries(data, result, family)
        # Every remote port asked for, in port order, with or without sockets.
        assert [entry['port'] for entry in result['remote']] == sorted([1, ports['v4'], ports['dual']]), result['remote']
        for entry in result['remote']:
            assert sorted(entry) == ['port', 'service', 'states'], entry
            assert entry['service'] == SERVICES.get(entry['port'], ''), entry
            assert entry['states'] == oracle_states(rows, 'remote', entry['port'], family), (name, entry)
    both = dict((entry['port'], entry) for entry in answer(data, 'remote')['remote'])
    assert both[ports['v4']]['states']['ESTABLISHED'] == 3 and both[ports['v4']]['states']['FIN_WAIT2'] == 2
    assert both[ports['v4']]['states']['TIME_WAIT'] == 1 and both[1]['service'] == 'tcpmux', both
    assert both[ports['dual']]['states']['ESTABLISHED'] == 3 and both[ports['dual']]['states']['TIME_WAIT'] == 1
    # The v4-mapped server ends of the dual-stack listener are IPv6 sockets, as in ss -6.
    assert ports['dual'] in [entry['port'] for entry in answer(data, 'ipv6')['ports']]
    assert ports['v6'] not in [entry['port'] for entry in answer(data, 'ipv4')['ports']]


@INTERPRETERS
def test_the_bound_keeps_the_busiest_ports_and_says_how_many_were_cut(interpreter):
    data = scene(interpreter)
    ports = data['ports']
    listening = len(oracle_ports(data))
    default = answer(data, 'default')
    check_entries(data, default)
    assert len(default['ports']) == 100 and default['truncated'] == listening - 100, default['truncated']
    busy = [entry['port'] for entry in default['ports'][:6]]
    assert set(busy) == set([ports['v4'], ports['v6'], ports['dual'], ports['shared'], ports['stuck'],
                             ports['acked']]), busy
    keys = [(entry['states']['LISTEN'] - sum(entry['states'].values()), -entry['queue'], entry['port'])
            for entry in default['ports']]
    assert keys == sorted(keys), 'busiest first, then the longest queue, then the lowest port'
    three = answer(data, 'three')
    assert [entry['port'] for entry in three['ports']] == busy[:3] and three['truncated'] == listening - 3
    # No bound asked for: the answer still stays under 60,000 bytes (Zabbix's text columns hold 65,535).
    text = data['scripts']['unbounded'][1]
    unbounded = answer(data, 'unbounded')
    assert len(text.encode()) <= 60001 and len(text.encode()) > 55000, len(text)
    assert 0 < unbounded['truncated'] < listening - 100, unbounded['truncated']


@INTERPRETERS
def test_local_filter_proc_fallback_and_discovery(interpreter):
    data = scene(interpreter)
    ports = data['ports']
    local = answer(data, 'local')
    check_entries(data, local, local=(ports['v4'], ports['shared']))
    assert sorted(entry['port'] for entry in local['ports']) == sorted([ports['v4'], ports['shared']])
    assert local['truncated'] == 0  # ports outside the filter are not asked for: not cut off
    assert local['remote'] == answer(data, 'remote')['remote']   # the kernel filter is local OR remote
    only = answer(data, 'local only')
    assert [entry['port'] for entry in only['ports']] == [ports['stuck']] and only['remote'] == []
    # /proc: the same counts and queues; no backlog there.
    proc = answer(data, 'proc')
    check_entries(data, proc, backlog=False)
    assert proc['remote'] == answer(data, 'remote')['remote']
    discovery = answer(data, 'discovery')
    five = answer(data, 'default')['ports'][:5]
    assert discovery == {'data': [{'{#PORT}': str(entry['port']), '{#SERVICE}': entry['service'], '{#SIDE}': 'local'}
                                  for entry in five] + [
        {'{#PORT}': str(port), '{#SERVICE}': service, '{#SIDE}': 'remote'}
        for port, service in sorted([(1, 'tcpmux'), (ports['v4'], SERVICES.get(ports['v4'], '')),
                                     (ports['dual'], SERVICES.get(ports['dual'], ''))])]}, discovery


@INTERPRETERS
def test_bad_arguments_give_one_line_and_no_answer(interpreter):
    data = scene(interpreter)
    expected = {
        'bad max': "bad MAX_PORTS '0'",
        'bad max text': "bad MAX_PORTS 'ten'",
        'bad port': "bad port 'http'",
        'bad remote': "too many remote ports in '1-1000': at most 100",
        'bad family': "unknown address family 'ipv5'",
        'bad backend': "backend 'counters' cannot count per port",
        'too many': 'too many arguments for discovery',
    }
    for name, message in expected.items():
        code, out, err = data['scripts'][name]
        assert code == 2 and out == '' and err.startswith('tcp_status: ') and message in err, (name, code, out, err)
        assert err.count('\n') == 1 and err.endswith('\n'), err


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--scene':
        sys.stdout.write(json.dumps(run_scene(sys.argv[2])))
        sys.exit(0)
    sys.exit('usage: unshare --net -- python test_ports.py --scene INTERPRETER')
