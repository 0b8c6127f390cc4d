# -*- coding: utf-8 -*-
"""The counter's scale paths (issue 13) against ss, on real loopback sockets, under 2.7, 3.6 and the agent's python3.

* the counters backend (ESTABLISHED from sockstat inuse, the other states from a dump without ESTABLISHED,
  cross-checked against snmp CurrEstab) equals the full dump and ss, per family, with nothing changing, on a
  scene with what inuse leaves out: TIME_WAIT, an orphaned FIN_WAIT2 (a TIME_WAIT-kind socket) and half-open
  request sockets (SYN_RECV, from raw SYNs);
* the cross-check accepts CurrEstab under either meaning (ESTABLISHED, or ESTABLISHED + CLOSE_WAIT) and fails on
  counters that are off by a few sockets: auto then answers with the full dump, exactly, and says why;
* the port filter run by the kernel (INET_DIAG_REQ_BYTECODE, no Python re-check) returns exactly the sockets ss
  lists on those ports: single ports, lists, ranges, open-ended ranges, local and remote, IPv6 and v4-mapped.

Each interpreter's run happens in a fresh network namespace (``unshare --net``): its loopback holds only the
sockets built here, so the counts are exact (no other job's churn) and the kernel counters are that namespace's
own. This file is both the test and, run as a script inside the namespace, the scene: it builds the sockets
with tcp_live.SocketFarm, lists them with ss, and runs the counter under the interpreter being tested.
The wrong counters are copies of the namespace's real /proc/net files with one number changed, given to the
counter through its COUNTER_FILES table (the paths it reads); nothing else of the counter is replaced, except the
kernel release in the one test of the pre-4.4 refusal (this machine runs 6.x).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from tcp_live import half_open, namespace_scene

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
REPO = os.path.dirname(TESTS)
MODULE_UTILS = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils')
COUNTER = os.path.join(MODULE_UTILS, 'tcp_status_counter.py')

# Runs under the interpreter being tested (2.7 too), with the counter importable: every call in, JSON out.
DRIVER = r'''
import json, sys
import tcp_status_counter as tsc
calls = json.loads(sys.stdin.read())
out = []
for call in calls:
    files = dict(tsc.COUNTER_FILES)
    try:
        for name, path in call.get('files', {}).items():
            tsc.COUNTER_FILES[name] = path
        release, request = tsc._kernel_release, tsc.diag_request
        if call.get('refuse_one_walk'):
            # The one-walk request (TCPDIAG_GETSOCK) sent with a message type the kernel refuses (EINVAL), as a
            # kernel without it would: the dump must go on with one request per family.
            def refused(family, mask, seq=1, bytecode=b''):
                data = bytearray(request(family, mask, seq, bytecode))
                if family == 'all':
                    data[4:6] = bytearray([17, 0])
                return bytes(data)
            tsc.diag_request = refused
        if call.get('kernel'):
            tsc._kernel_release = lambda: call['kernel']
        if call.get('sweep'):
            # Which listeners the kernel's filter lets through: a LISTEN dump with the bytecode, the ports counted
            # here without any Python port table.
            remote = [tuple(pair) for pair in call['remote']] if call['remote'] else None
            tally = tsc.PortTally()
            tsc._netlink_dump(('ipv4', 'ipv6'), tsc.state_mask([tsc.LISTEN_CODE]), tsc._clock() + 5,
                              tsc.port_bytecode([tuple(pair) for pair in call['local']], remote, call['either']),
                              ports=tally)
            out.append({'ports': sorted(tally.queues)})
            continue
        if call.get('raw_bytecode'):
            # The kernel's filter alone: a dump with the bytecode and no Python port tables.
            local = tsc.port_ranges(call['args'].get('local_ports'))
            remote = tsc.port_ranges(call['args'].get('remote_ports'))
            families = ('ipv4', 'ipv6') if call['args'].get('family', 'all') == 'all' else (call['args']['family'],)
            codes = [code for code, _name in tsc.STATE_CODES]
            tally, _full = tsc._netlink_dump(families, tsc.state_mask(codes), tsc._clock() + 5,
                                             tsc.port_bytecode(local, remote))
            tally[3] += tally[12]
            out.append({'counts': dict((name, tally[code]) for code, name in tsc.STATE_CODES),
                        'bytecode_len': len(tsc.port_bytecode(local, remote))})
            continue
        result = tsc.count_states(**call['args'])
        out.append(dict((key, result.get(key)) for key in ('counts', 'backend', 'fallbacks', 'check')))
    except tsc.TcpStatusError as exc:
        out.append({'error': type(exc).__name__, 'message': str(exc)})
    finally:
        tsc.COUNTER_FILES.update(files)
        tsc._kernel_release, tsc.diag_request = release, request
sys.stdout.write(json.dumps(out))
'''

# --------------------------------------------------------------------------------------------------------------
# The scene, inside the namespace (run as: unshare --net -- python test_scale_paths.py --scene INTERPRETER)
# --------------------------------------------------------------------------------------------------------------


def _edited(path, directory, name, edit):
    """A copy of a /proc/net file with edit(text) applied, in directory; its path."""
    with open(path) as handle:
        text = handle.read()
    changed = edit(text)
    assert changed != text, 'the edit of {0} changed nothing'.format(path)
    target = os.path.join(directory, name)
    with open(target, 'w') as handle:
        handle.write(changed)
    return target


def _snmp_with(curr_estab):
    def edit(text):
        lines = text.splitlines(True)
        for index, line in enumerate(lines):
            if line.startswith('Tcp:') and not line.split()[1].isalpha():
                header = lines[index - 1].split()
                values = line.split()
                values[header.index('CurrEstab')] = str(curr_estab(int(values[header.index('CurrEstab')])))
                lines[index] = ' '.join(values) + '\n'
        return ''.join(lines)
    return edit


def _sockstat_inuse_plus(extra):
    def edit(text):
        out = []
        for line in text.splitlines(True):
            if line.startswith('TCP: inuse '):
                fields = line.split()
                fields[2] = str(int(fields[2]) + extra)
                line = ' '.join(fields) + '\n'
            out.append(line)
        return ''.join(out)
    return edit


def build_scene(farm):
    """Known sockets on the namespace's loopback; the ports of its listeners."""
    v4 = farm.listener('ipv4')
    v6 = farm.listener('ipv6')
    dual = farm.listener('dual')
    other = farm.listener('ipv4')
    for _ in range(6):
        farm.pair(v4)
    for _ in range(4):
        farm.pair(v6, client='ipv6')
    for _ in range(3):
        farm.pair(dual, client='ipv4')  # the server ends are v4-mapped IPv6 sockets
    for _ in range(2):
        farm.pair(dual, client='ipv6')
    for _ in range(5):
        farm.pair(other)
    farm.close_wait(v4)                 # a full FIN_WAIT2 client (shut down, still open) and a CLOSE_WAIT server
    farm.close_wait(v6, client='ipv6')
    farm.time_wait(v4)
    farm.time_wait(dual, client='ipv6')
    # An orphaned FIN_WAIT2: the client closed, the server did not; the kernel keeps the client as a
    # TIME_WAIT-kind socket reported as FIN_WAIT2, which is not in sockstat's inuse.
    conn, server = farm.pair(other)
    farm.sockets.remove(conn)
    conn.close()
    server.settimeout(5)
    assert server.recv(1) == b''
    half_open(v4, 5)
    return {'v4': v4, 'v6': v6, 'dual': dual, 'other': other}


def filter_cases(ports):
    v4, v6, dual, other = ports['v4'], ports['v6'], ports['dual'], ports['other']
    low, high = min(ports.values()), max(ports.values())
    near_misses = ','.join('{0},{1},{2},{3}-{4},{5}-{6},{7}'.format(
        port - 4, port - 2, port, port + 2, port + 3, port + 5, port + 9, port + 11) for port in sorted(ports.values()))
    cases = [
        {'local_ports': str(v4)},
        {'local_ports': str(v6), 'family': 'ipv6'},
        {'local_ports': str(dual)},                                   # v4-mapped server ends and IPv6 ones
        {'local_ports': str(dual), 'family': 'ipv4'},
        {'remote_ports': str(dual)},                                  # IPv4 and IPv6 clients of the dual listener
        {'local_ports': '{0},{1}'.format(v4, other)},
        {'local_ports': [str(v6), '{0}-{0}'.format(dual)], 'remote_ports': ''},
        {'local_ports': '{0}-{1}'.format(low, high)},
        {'local_ports': '{0}-{1}'.format(low + 1, high - 1)},
        {'local_ports': '0-{0}'.format(low)},                         # open at the bottom
        {'local_ports': '{0}-65535'.format(high)},                    # open at the top
        {'local_ports': '0-65535'},
        {'remote_ports': '{0},{1}'.format(v4, v6), 'family': 'ipv6'},
        {'local_ports': '{0}-{1}'.format(v4 - 1, v4 + 1), 'remote_ports': '0'},   # listeners: remote port 0
        {'remote_ports': '1-65535', 'local_ports': str(other)},       # every socket of it but the listener
        {'local_ports': '1', 'remote_ports': str(v4)},                # nothing
        {'local_ports': ','.join(str(port) for port in range(1, 4000, 2)) + ',' + str(other)},  # a long list
        {'local_ports': near_misses},                                 # the kernel's binary search: hits and
        {'remote_ports': near_misses},                                # misses next to them, 24 ranges
    ]
    return cases


def run_scene(interpreter):
    from tcp_live import SocketFarm, tally_rows
    from ss_oracle import ss_sockets
    import tempfile

    subprocess.check_call(['ip', 'link', 'set', 'lo', 'up'])
    farm = SocketFarm()
    scratch = tempfile.mkdtemp(prefix='zts-scale-')
    try:
        ports = build_scene(farm)
        rows = ss_sockets()
        for _attempt in range(50):  # the half-closed pairs settle within a few ms
            again = ss_sockets()
            if sorted(again) == sorted(rows):
                break
            rows = again
        snmp = '/proc/net/snmp'
        close_wait = sum(1 for row in rows if row[1] == 'CLOSE_WAIT')
        calls = []
        names = []

        def call(name, **spec):
            names.append(name)
            calls.append(spec)

        for family in ('all', 'ipv4', 'ipv6'):
            call('auto ' + family, args={'family': family})
            call('netlink ' + family, args={'family': family, 'backend': 'netlink'})
            call('counters ' + family, args={'family': family, 'backend': 'counters'})
        call('auto ESTABLISHED', args={'states': ['ESTABLISHED']})
        call('auto LISTEN', args={'states': ['LISTEN']})
        call('old meaning', args={}, files={'snmp': _edited(snmp, scratch, 'snmp-old', _snmp_with(
            lambda value: value - close_wait))})
        call('curr_estab +3', args={}, files={'snmp': _edited(snmp, scratch, 'snmp-plus3', _snmp_with(
            lambda value: value + 3))})
        call('curr_estab -1', args={}, files={'snmp': _edited(snmp, scratch, 'snmp-minus1', _snmp_with(
            lambda value: value - close_wait - 1))})
        call('curr_estab +3 forced', args={'backend': 'counters'}, files={'snmp': os.path.join(scratch, 'snmp-plus3')})
        call('inuse +2', args={}, files={'sockstat': _edited('/proc/net/sockstat', scratch, 'sockstat',
                                                             _sockstat_inuse_plus(2))})
        call('kernel 3.10', args={}, kernel='3.10.0-1160.el7.x86_64')
        call('one walk refused', args={}, refuse_one_walk=True)
        call('one walk refused, full dump', args={'backend': 'netlink'}, refuse_one_walk=True)
        cases = filter_cases(ports)
        for index, case in enumerate(cases):
            call('filter {0}'.format(index), args=dict(case, backend='netlink'))
            call('bytecode {0}'.format(index), args=case, raw_bytecode=True)
            call('auto filter {0}'.format(index), args=case)
        env = dict(os.environ, PYTHONPATH=MODULE_UTILS)
        env.pop('PYTHONHOME', None)
        proc = subprocess.run([interpreter, '-c', DRIVER], input=json.dumps(calls).encode(), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError('driver failed: ' + proc.stderr.decode('utf-8', 'replace'))
        results = dict(zip(names, json.loads(proc.stdout.decode())))
        scripts = {}
        for args in (['all'], ['--backend=netlink', 'all'], ['ESTABLISHED'], ['ESTABLISHED', '', '', 'ipv6'],
                     ['--backend=netlink', 'ESTABLISHED'], ['all', str(ports['dual'])]):
            run = subprocess.run([interpreter, '-S', COUNTER] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 timeout=60)
            scripts[' '.join(args)] = [run.returncode, run.stdout.decode(), run.stderr.decode()]
        after = ss_sockets()
        sweep = run_sweep(interpreter, env)
        oracle = {}
        for name, spec in zip(names, calls):
            args = spec['args']
            family = args.get('family', 'all')
            local = _port_set(args.get('local_ports'))
            remote = _port_set(args.get('remote_ports'))
            picked = [row for row in rows if family in ('all', row[0])]
            oracle[name] = tally_rows(picked, local, remote)
        return {'ports': ports, 'ss_before': sorted(rows), 'ss_after': sorted(after), 'results': results,
                'oracle': oracle, 'cases': cases, 'scripts': scripts, 'close_wait': close_wait, 'sweep': sweep}
    finally:
        farm.close()
        subprocess.call(['rm', '-rf', scratch])


SWEEP_BASE = 21000   # below the ephemeral range: the scene's clients never take these ports
SWEEP_PORTS = 256


def sweep_cases(count=60):
    """Random sorted, disjoint port ranges over the sweep's listeners and a few ports either side (1 to 90 ranges:
    the bytecode's binary search from one leaf to seven levels), alone, with a remote side ANDed (the listeners'
    remote port, 0) and ORed (a remote range no listener has); seeded, the same every run."""
    import random
    draw = random.Random(10)
    cases = []
    for index in range(count):
        wanted = draw.choice((1, 2, 3, 5, 8, 13, 21, 34, 55, 90))
        edges = sorted(draw.sample(range(SWEEP_BASE - 3, SWEEP_BASE + SWEEP_PORTS + 3), 2 * wanted))
        ranges = [(edges[2 * i], edges[2 * i] if draw.random() < 0.5 else edges[2 * i + 1]) for i in range(wanted)]
        remote, either = [(None, False), ([(0, 0)], False), ([(1, 65535)], True)][index % 3]
        cases.append({'local': ranges, 'remote': remote, 'either': either})
    return cases


def run_sweep(interpreter, env):
    """The listeners on SWEEP_BASE.. that the kernel returns for each of sweep_cases(), and what was asked."""
    listeners = []
    try:
        for port in range(SWEEP_BASE, SWEEP_BASE + SWEEP_PORTS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(('127.0.0.1', port))
            sock.listen(1)
            listeners.append(sock)
        cases = sweep_cases()
        calls = [dict(case, sweep=True, args={}) for case in cases]
        proc = subprocess.run([interpreter, '-c', DRIVER], input=json.dumps(calls).encode(), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError('sweep driver failed: ' + proc.stderr.decode('utf-8', 'replace'))
        return {'cases': cases, 'results': json.loads(proc.stdout.decode())}
    finally:
        for sock in listeners:
            sock.close()


def _port_set(spec):
    if spec in (None, '', []):
        return None
    ports = set()
    for item in (spec if isinstance(spec, list) else [spec]):
        for part in str(item).split(','):
            low, _sep, high = part.partition('-')
            ports.update(range(int(low), int(high or low) + 1))
    return ports


# --------------------------------------------------------------------------------------------------------------
# The tests (outside the namespace)
# --------------------------------------------------------------------------------------------------------------

def scene(interpreter):
    """The scene's results for this interpreter, built once per interpreter in a fresh network namespace."""
    return namespace_scene(__file__, interpreter)


INTERPRETERS = pytest.mark.parametrize('interpreter', ['2.7', '3.6', 'agent'], indirect=True)


@INTERPRETERS
def test_counters_equal_the_full_dump_and_ss(interpreter):
    data = scene(interpreter)
    assert data['ss_before'] == data['ss_after'], 'the namespace changed during the run'
    results, oracle = data['results'], data['oracle']
    for family in ('all', 'ipv4', 'ipv6'):
        auto, full, forced = (results['{0} {1}'.format(kind, family)] for kind in ('auto', 'netlink', 'counters'))
        assert auto['backend'] == 'counters' and auto['fallbacks'] == [], (family, auto)
        assert auto['check']['agrees'] is True and auto['check']['off'] == 0 and auto['check']['churn'] == 0, auto
        assert full['backend'] == 'netlink' and forced['backend'] == 'counters', (full, forced)
        assert auto['counts'] == full['counts'] == forced['counts'] == oracle['auto ' + family], family
    counts = results['auto all']['counts']
    # The scene has what the derivation must handle: v4-mapped sockets, full and orphaned FIN_WAIT2, TIME_WAIT.
    assert counts['ESTABLISHED'] == 2 * (6 + 4 + 3 + 2 + 5) and counts['FIN_WAIT2'] == 3, counts
    assert counts['CLOSE_WAIT'] == 3 and counts['TIME_WAIT'] == 2 and counts['LISTEN'] == 4, counts
    assert counts['SYN_RECV'] == 5, counts  # half-open request sockets: in the dump, not in inuse
    # This kernel counts CLOSE_WAIT in CurrEstab (6.x): the check saw that meaning.
    check = results['auto all']['check']
    assert check['derived'] == counts['ESTABLISHED'] and check['curr_estab'] in (
        counts['ESTABLISHED'], counts['ESTABLISHED'] + counts['CLOSE_WAIT']), check
    assert results['auto ESTABLISHED']['backend'] == 'counters'
    assert results['auto ESTABLISHED']['counts'] == {'ESTABLISHED': counts['ESTABLISHED']}
    # Without ESTABLISHED, the state mask alone is already the minimum: a plain dump.
    assert results['auto LISTEN'] == {'counts': {'LISTEN': 4}, 'backend': 'netlink', 'fallbacks': [], 'check': None}


@INTERPRETERS
def test_cross_check_falls_back_to_the_full_dump(interpreter):
    data = scene(interpreter)
    results, oracle = data['results'], data['oracle']
    want = oracle['auto all']
    # CurrEstab counting ESTABLISHED alone (older kernel builds) is accepted as well.
    old = results['old meaning']
    assert old['backend'] == 'counters' and old['counts'] == want and old['check']['off'] == 0, old
    for name in ('curr_estab +3', 'curr_estab -1', 'inuse +2'):
        result = results[name]
        assert result['backend'] == 'netlink', (name, result)
        assert result['counts'] == want, name
        assert len(result['fallbacks']) == 1 and result['fallbacks'][0].startswith(
            'counters: kernel counters disagree'), (name, result['fallbacks'])
        assert 'with 0 socket(s) changing state' in result['fallbacks'][0], result['fallbacks']
    forced = results['curr_estab +3 forced']
    assert forced['error'] == 'BackendUnavailable' and 'disagree' in forced['message'], forced
    for name in ('one walk refused', 'one walk refused, full dump'):
        # Without the one-walk request, one request per family answers the same.
        assert results[name]['counts'] == want and results[name]['fallbacks'] == [], (name, results[name])
    assert results['one walk refused']['backend'] == 'counters'
    old_kernel = results['kernel 3.10']
    assert old_kernel['backend'] == 'netlink' and old_kernel['counts'] == want, old_kernel
    assert old_kernel['fallbacks'] == ['counters: kernel 3.10.0-1160.el7.x86_64 is older than 4.4: its dumps '
                                       'cannot tell request and TIME_WAIT sockets from full ones'], old_kernel


@INTERPRETERS
def test_kernel_port_filter_returns_what_ss_lists(interpreter):
    data = scene(interpreter)
    results, oracle = data['results'], data['oracle']
    nonempty = 0
    for index, case in enumerate(data['cases']):
        want = oracle['filter {0}'.format(index)]
        raw = results['bytecode {0}'.format(index)]
        full = results['filter {0}'.format(index)]
        auto = results['auto filter {0}'.format(index)]
        assert raw['counts'] == want, ('kernel filter alone', case, raw, want)
        assert full['backend'] == 'netlink' and full['counts'] == want, (case, full)
        assert auto['backend'] == 'netlink' and auto['counts'] == want, (case, auto)
        no_filter = case.get('local_ports') in (None, '', '0-65535') and case.get('remote_ports') in (None, '')
        assert (raw['bytecode_len'] == 0) == no_filter, (case, raw['bytecode_len'])
        nonempty += sum(want.values()) > 0
    assert nonempty >= len(data['cases']) - 2, 'the cases must select sockets to prove anything'


@INTERPRETERS
def test_kernel_port_filter_sweep(interpreter):
    """Every port of 256 contiguous listeners, through 60 programs: each port right at, inside and next to the
    ranges' edges is let through by the kernel exactly when a range holds it (and the scene's own listeners never)."""
    sweep = scene(interpreter)['sweep']
    assert len(sweep['results']) == len(sweep['cases']) == 60
    let_through = 0
    for case, result in zip(sweep['cases'], sweep['results']):
        assert 'error' not in result, (case, result)
        want = sorted(port for port in range(SWEEP_BASE, SWEEP_BASE + SWEEP_PORTS)
                      if any(first <= port <= last for first, last in case['local']))
        assert result['ports'] == want, case
        let_through += len(want)
    assert 0 < let_through < 60 * SWEEP_PORTS


@INTERPRETERS
def test_script_contract_and_forced_full_dump(interpreter):
    data = scene(interpreter)
    scripts, oracle = data['scripts'], data['oracle']
    want = oracle['auto all']
    for args in ('all', '--backend=netlink all'):
        code, out, err = scripts[args]
        assert (code, err) == (0, '') and json.loads(out) == want, (args, scripts[args])
    for args in ('ESTABLISHED', '--backend=netlink ESTABLISHED'):
        assert scripts[args] == [0, '{0}\n'.format(want['ESTABLISHED']), ''], (args, scripts[args])
    assert scripts['ESTABLISHED   ipv6'] == [0, '{0}\n'.format(oracle['auto ipv6']['ESTABLISHED']), '']
    code, out, err = scripts['all {0}'.format(data['ports']['dual'])]
    assert (code, err) == (0, '') and json.loads(out)['ESTABLISHED'] == 3 + 2 and json.loads(out)['LISTEN'] == 1


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--scene':
        sys.stdout.write(json.dumps(run_scene(sys.argv[2])))
        sys.exit(0)
    sys.exit('usage: unshare --net -- python test_scale_paths.py --scene INTERPRETER')
