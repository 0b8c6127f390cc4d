#!/usr/bin/env python3
"""Benchmark the TCP state counter against the recipe's netstat script, ss and the agent's native
net.tcp.socket.count, as bare commands and end to end through a real zabbix_get and a private zabbix_agentd,
at 1k to 1M sockets, with connections churning during every measurement.

    bench/run.sh            full run: bench/results/{results.json,bench.png}, docs/BENCHMARK.md
    bench/run.sh --smoke    1k sockets only, few repeats, output in /tmp/zts-bench-smoke

Run as root, through bench/run.sh: it runs this (python -m bench.run, the counter importable as
tcp_status_counter) in a private network namespace (loopback only) so that other jobs' sockets stay out of the
counts; there the load generator widens net.ipv4.ip_local_port_range for large sizes (and restores it) and the
private agent runs with AllowRoot=1.

The counter is installed for the private agent as the role installs it (zabbix_tcp_status/tasks/configure.yml):
a copy of the role's file with the shebang ``#!/usr/bin/python3 -S`` and NETLINK_TIMEOUT set to the agent's
Timeout minus 0.5 s, run through the role's own UserParameter lines (zabbix/role_items.py).
"""

from __future__ import print_function

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import tcp_status_counter as counter  # the one counter: its names, JSON and count_states() for the path checks

from bench.agent import AGENT_TIMEOUT, PrivateAgent
from bench.churn import Churn
from bench.loadgen import hold_sockets
from tests.interpreters import find_interpreters
from zabbix import role_items

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
MINORITY = os.path.join(BENCH, 'methods', 'minority_dump.py')
PORTS_FLOOR = os.path.join(BENCH, 'methods', 'ports_floor.py')
RECIPE = os.path.join(BENCH, 'methods', 'tcp_connections.sh')
SS_SCRIPT = os.path.join(BENCH, 'methods', 'tcp_ss.sh')
AGENT_PYTHON = '/usr/bin/python3'  # what the role's shebang gives on this host (Debian 12)

CHECK_STATES = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN', 'CLOSE_WAIT', 'FIN_WAIT2')
RECIPE_STATES = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN')
NATIVE_NAMES = dict((state, state.lower()) for state in counter.STATES)
MINORITY_STATES = tuple(state for state in counter.STATES if state != 'ESTABLISHED')
# Methods that read every socket as text (/proc or netstat) take seconds per call past 100k sockets: they are
# measured up to this size (they are not what the large sizes are about).
SLOW_MAX = 100000
# The floor under any Python collector here: interpreter start (-S, as the installed script) plus the counter's
# imports, no socket read. Timed in the same round robin as the methods, so that it sees the same background load.
PYTHON_START = [AGENT_PYTHON, '-S', '-c', 'import _socket, _struct, errno, time']
TIMED_STATE = 'ESTABLISHED'  # the one state of the one-state rows (the busiest one)
INTERVAL_METHODS = ('ss_one', 'native', 'ours_one')  # measured as 11 real calls
MEMORY_METHODS = ('ours_one', 'ours_all', 'full_all', 'ports', 'proc_one', 'proc_all')
GNU_TIME = '/usr/bin/time'

# (sockets, timed repeats, interval repeats); interval (11 calls per method) only up to SLOW_MAX.
FULL_SIZES = ((1000, 15, 5), (10000, 15, 5), (100000, 9, 3), (200000, 9, 0), (500000, 7, 0), (1000000, 5, 0))
SMOKE_SIZES = ((1000, 3, 1),)
PATH_ROUNDS = 3     # derived / full dump / ss rounds under churn, per size
FALLBACK_CALLS = 10  # auto calls under churn, per size: how often the counters path answered

TARGETS = {
    'counters_vs_minority_max': 1.3,   # at 200k: all states <= 1.3x the dump of every state but ESTABLISHED
    'full_vs_counters_min': 3.0,       # at 200k: all states >= 3x faster than the full dump
    'at_1m_agent_max_seconds': 1.0,    # at 1M: all states through zabbix_get under 1 s
    'vs_recipe_at_1k_max': 1.0,        # at 1k: ours all states at or below the recipe's one-state call
    'ports_vs_all_at_100k_max': 1.5,   # at 100k (issue 10): the per-port call at most 1.5x the all-states call
}


def churn_rate(total):
    """Connections per second opened and closed during the measurements of a size (TIME_WAIT = 60 x this)."""
    return int(min(1000, max(5, total // 500)))


def install_counter(directory):
    """The counter as the role installs it for an agent whose Timeout is AGENT_TIMEOUT; its path."""
    with open(role_items.COUNTER) as handle:
        source = handle.read()
    source = re.sub(r'^#![^\n]*\n', '', source)
    source = re.sub(r'(?m)^NETLINK_TIMEOUT = .*$', 'NETLINK_TIMEOUT = {0}'.format(max(AGENT_TIMEOUT - 0.5, 0.5)),
                    source)
    path = os.path.join(directory, 'tcp_status.py')
    with open(path, 'w') as handle:
        handle.write('#!{0} -S\n'.format(AGENT_PYTHON) + source)
    os.chmod(path, 0o755)
    return path


def build_methods(script):
    """One row per method. 'bare' and 'key' are templates filled with the state (one-state methods) or used as
    they are (all-state methods); 'states' = what it can answer; 'max' = the largest size it is measured at;
    'kind' = what its answer counts: host (the whole host's sockets by state), ports (the per-port JSON: each
    listening port's sockets by state) or listening (the sockets on listening ports, by state)."""
    count_key = role_items.item('count')['key']
    json_key = role_items.item('states')['key']
    ports_key = role_items.item('ports')['key']
    return [
        {'id': 'recipe', 'label': 'recipe netstat script (1 state)', 'all': False, 'states': RECIPE_STATES,
         'bare': [RECIPE, '{state}'], 'key': 'tcp.recipe[{state}]', 'max': SLOW_MAX},
        {'id': 'ss_one', 'label': 'ss script (1 state)', 'all': False, 'states': counter.STATES,
         'bare': [SS_SCRIPT, '{state}'], 'key': 'tcp.ss[{state}]', 'max': SLOW_MAX},
        {'id': 'ss_all', 'label': 'ss script (all states, 1 call)', 'all': True, 'states': counter.STATES,
         'bare': [SS_SCRIPT, 'all'], 'key': 'tcp.ss[all]', 'max': None},
        {'id': 'native', 'label': 'agent native net.tcp.socket.count (1 state)', 'all': False,
         'states': counter.STATES, 'bare': None, 'key': 'net.tcp.socket.count[,,,,{native}]', 'max': SLOW_MAX},
        {'id': 'ours_one', 'label': 'ours (1 state)', 'all': False, 'states': counter.STATES,
         'bare': [script, '{state}'], 'key': count_key + '[{state}]', 'max': None},
        {'id': 'ours_all', 'label': 'ours (all states, 1 call)', 'all': True, 'states': counter.STATES,
         'bare': [script, 'all'], 'key': json_key, 'max': None},
        {'id': 'full_all', 'label': 'ours, full dump forced (--backend=netlink, all states)', 'all': True,
         'states': counter.STATES, 'bare': [script, '--backend=netlink', 'all'],
         'key': 'tcp.status.backend[netlink,all]', 'max': None},
        {'id': 'minority', 'label': 'counters floor: dump of every state but ESTABLISHED', 'all': True,
         'states': MINORITY_STATES, 'bare': [AGENT_PYTHON, '-S', MINORITY, script], 'key': 'tcp.minority', 'max': None},
        {'id': 'ports', 'label': 'ours, per port (every listening port, 1 call)', 'all': True, 'kind': 'ports',
         'states': counter.STATES, 'bare': [script, 'ports'], 'key': ports_key, 'max': None},
        {'id': 'ports_floor', 'label': 'per-port floor: its two dumps, tallied by state', 'all': True,
         'kind': 'listening', 'states': counter.STATES, 'bare': [AGENT_PYTHON, '-S', PORTS_FLOOR, script],
         'key': 'tcp.ports_floor', 'max': None},
        {'id': 'proc_one', 'label': 'ours, /proc backend (1 state)', 'all': False, 'states': counter.STATES,
         'bare': [script, '--backend=proc', '{state}'], 'key': 'tcp.status.backend[proc,{state}]',
         'max': SLOW_MAX},
        {'id': 'proc_all', 'label': 'ours, /proc backend (all states, 1 call)', 'all': True,
         'states': counter.STATES, 'bare': [script, '--backend=proc', 'all'], 'key': 'tcp.status.backend[proc,all]',
         'max': SLOW_MAX},
    ]


def bench_userparameters(script):
    """The benchmark's own keys (the role's come from its rendered UserParameter file)."""
    return [
        # The recipe's own line, pointing at the recipe's script.
        'tcp.recipe[*],{0} $1 $2'.format(RECIPE),
        'tcp.ss[*],{0} "$1"'.format(SS_SCRIPT),
        # The installed counter with a forced backend (its documented first option).
        "tcp.status.backend[*],{0} --backend='$1' '$2'".format(script),
        # The floor under the counters path (bench/methods/minority_dump.py).
        'tcp.minority,{0} -S {1} {2}'.format(AGENT_PYTHON, MINORITY, script),
        # The floor under the per-port call (bench/methods/ports_floor.py).
        'tcp.ports_floor,{0} -S {1} {2}'.format(AGENT_PYTHON, PORTS_FLOOR, script),
    ]


class BenchError(Exception):
    """The benchmark could not measure something it must report."""


def fill(template, state):
    if isinstance(template, list):
        return [part.format(state=state, native=NATIVE_NAMES.get(state, '')) for part in template]
    return template.format(state=state, native=NATIVE_NAMES.get(state, ''))


def active(methods, total):
    return [method for method in methods if method['max'] is None or total <= method['max']]


def run_timed(argv, timeout=120):
    """Run argv; return (wall seconds incl. process start, output text, rusage of the process)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True,
                               start_new_session=True)
    # On timeout, kill the command's own process group (a script's pipeline children too).
    watchdog = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    try:
        # Read to EOF, then reap with wait4 to get the child's resource usage.
        output = process.stdout.read()
        _pid, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
        if process.returncode is None:
            process.kill()
            process.wait()
        process.stdout.close()
    if elapsed >= timeout:
        raise BenchError('{0} was killed after {1} s'.format(' '.join(argv), timeout))
    return elapsed, output.decode('utf-8', 'replace').strip(), usage


def max_rss_kib(argv, runs):
    """Peak resident memory (KiB) of a command, the largest of ``runs`` runs.

    Measured by GNU time, which fork()s the command from its own small process:
    wait4() from this harness would report our own RSS too (the child starts as a
    copy of us, and exec keeps the high-water mark).
    """
    peak = 0
    for _run in range(runs):
        result = subprocess.run([GNU_TIME, '-f', 'maxrss=%M'] + argv, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, timeout=60)
        lines = [line for line in result.stderr.decode().splitlines() if line.startswith('maxrss=')]
        if result.returncode != 0 or not lines:
            raise BenchError('{0} failed: {1}'.format(' '.join(argv), result.stderr.decode()[-300:]))
        peak = max(peak, int(lines[-1].split('=', 1)[1]))
    return peak


def parse_counts(method, text, state):
    """Counts a method's output gives, as {STATE: n}, or for the per-port rows {'PORT/STATE': n} (ports) and
    {'listening/STATE': n} (listening); raises BenchError on junk."""
    try:
        if method.get('kind') == 'ports':
            return dict(('{0}/{1}'.format(entry['port'], name), int(value))
                        for entry in json.loads(text)['ports'] for name, value in entry['states'].items())
        if method.get('kind') == 'listening':
            return dict(('listening/' + name, int(value)) for name, value in json.loads(text).items())
        if method['all'] and method['id'] != 'ss_all':
            return dict((name, int(value)) for name, value in json.loads(text).items())
        if method['id'] == 'ss_all':
            counts = {}
            for line in text.splitlines():
                name, value = line.split()
                counts[counter.normalize_state(name)] = int(value)
            return dict((name, counts.get(name, 0)) for name in counter.STATES)
        # The recipe's script prints an empty line for a state with no sockets.
        return {state: int(text) if text != '' or method['id'] != 'recipe' else 0}
    except (ValueError, TypeError, KeyError, counter.TcpStatusError):
        raise BenchError('{0} gave {1!r}, not counts'.format(method['label'], text[:200]))


def ss_reference(by_port=False):
    """Independent reference: ss -tan tallied here (both families), {STATE: n}; with ``by_port`` also the
    sockets whose local port has a LISTEN socket, {'PORT/STATE': n} per such port and {'listening/STATE': n}."""
    output = subprocess.run(['ss', '-Htan'], stdout=subprocess.PIPE, check=True).stdout.decode()
    counts = dict((name, 0) for name in counter.STATES)
    rows = []
    for line in output.splitlines():
        if line.strip():
            fields = line.split()
            state = counter.normalize_state(fields[0])
            counts[state] += 1
            rows.append((state, int(fields[3].rpartition(':')[2])))
    if by_port:
        listening = set(port for state, port in rows if state == 'LISTEN')
        for port in listening:
            for name in counter.STATES:
                counts['{0}/{1}'.format(port, name)] = 0
        for name in counter.STATES:
            counts['listening/' + name] = 0
        for state, port in rows:
            if port in listening:
                counts['{0}/{1}'.format(port, state)] += 1
                counts['listening/' + state] += 1
    return counts


def timing_stats(samples):
    ordered = sorted(samples)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        'median': statistics.median(ordered), 'min': ordered[0], 'max': ordered[-1],
        'p25': quartiles[0], 'p75': quartiles[2], 'n': len(ordered),
        'samples': [round(value, 6) for value in samples],
    }


def check_correctness(agent, methods, log):
    """Every method's counts, each compared with ss tallied right before and right after it (churn paused).

    A count agrees when it lies between those two references, give or take
    2 + 0.1% (short-lived connections) and, for TIME_WAIT, one more per call in
    that window (every agent exchange leaves a TIME_WAIT, earlier ones expire).
    The per-port row is held to ss on every port its answer lists (each of which must be a listening port), and
    must list every listening port up to its default bound (counter.MAX_PORTS_DEFAULT); its floor row to the sum
    over the listening ports. Through the agent, the zabbix_get connection is taken off: both ends for the
    whole-host rows, its server end (on the agent's own listening port) for the per-port rows.
    """
    result = {'methods': {}}
    before = ss_reference(by_port=True)
    result['reference_before'] = dict((state, before[state]) for state in counter.STATES)
    calls = 0
    for method in methods:
        kind = method.get('kind', 'host')
        for path in ('bare', 'agent'):
            template = method['bare'] if path == 'bare' else method['key']
            if template is None:
                continue
            states = [state for state in CHECK_STATES if state in method['states']]
            counts = {}
            window_calls = 0
            for state in ([None] if method['all'] else states):
                if path == 'bare':
                    _t, text, _usage = run_timed(fill(template, state or 'all'))
                else:
                    text = agent.get(fill(template, state or 'all'))
                window_calls += 1
                counts.update(parse_counts(method, text, state))
            after = ss_reference(by_port=True)
            listed = sorted(set(int(key.partition('/')[0]) for key in counts)) if kind == 'ports' else []
            keys = {'host': states, 'listening': ['listening/' + state for state in states],
                    'ports': ['{0}/{1}'.format(port, state) for port in listed for state in states]}[kind]
            if path == 'agent':
                own, extra = {'host': ('ESTABLISHED', 2), 'listening': ('listening/ESTABLISHED', 1),
                              'ports': ('{0}/ESTABLISHED'.format(agent.port), 1)}[kind]
                if own in counts:
                    counts[own] -= extra
            deviations = {}
            agreed = True
            for key in keys:
                low, high = sorted((before.get(key, 0), after.get(key, 0)))
                tolerance = 2 + high // 1000 + (window_calls if key.endswith('TIME_WAIT') else 0)
                deviation = _deviation(counts[key], low, high)
                deviations[key] = deviation
                agreed = agreed and abs(deviation) <= tolerance
            name = '{0}/{1}'.format(method['id'], path)
            item = {'agreed': agreed}
            if kind == 'ports':
                # Every listed port listens (ss lists a LISTEN socket on it), and none is missing under the bound.
                listening = [key for key in before if key.endswith('/LISTEN') and not key.startswith('listening/')]
                wanted = min(len(listening), counter.MAX_PORTS_DEFAULT)
                unknown = [port for port in listed if '{0}/LISTEN'.format(port) not in before]
                item.update({'ports_listed': len(listed), 'ports_listening': len(listening), 'unknown': unknown})
                agreed = item['agreed'] = agreed and not unknown and len(listed) == wanted

                def summed(table):
                    return dict((state, sum(table.get('{0}/{1}'.format(port, state), 0) for port in listed))
                                for state in states)
                item.update({'counts': summed(counts), 'ss_before': summed(before), 'ss_after': summed(after),
                             'deviation': dict((key, value) for key, value in deviations.items() if value)})
            else:
                item.update({'counts': dict((key, counts[key]) for key in keys), 'deviation': deviations,
                             'ss_before': dict((key, before[key]) for key in keys),
                             'ss_after': dict((key, after[key]) for key in keys)})
            result['methods'][name] = item
            if not agreed:
                log('  DISAGREES: {0} {1} (ss before {2}, after {3}){4}'.format(
                    name, item['counts'], item['ss_before'], item['ss_after'],
                    ' ports listed {0} of {1} listening, not listening: {2}'.format(
                        item['ports_listed'], item['ports_listening'], item['unknown']) if kind == 'ports' else ''))
            calls += window_calls
            before = after
    result['reference_after'] = dict((state, before[state]) for state in counter.STATES)
    result['calls'] = calls
    result['all_agreed'] = all(entry['agreed'] for entry in result['methods'].values())
    return result


def _deviation(value, first, last):
    low, high = sorted((first, last))
    return 0 if low <= value <= high else (value - high if value > high else value - low)


def paths_round():
    """ss, the counters path, the full dump, ss again, on the same load; the kernel's counters around them."""
    counters_before = counter.read_counters()
    started = time.perf_counter()
    ss_before = ss_reference()
    derived = counter.count_states(backend='auto')
    full = counter.count_states(backend='netlink')
    ss_after = ss_reference()
    seconds = time.perf_counter() - started
    counters_after = counter.read_counters()
    opened = (counters_after['ActiveOpens'] - counters_before['ActiveOpens']
              + counters_after['PassiveOpens'] - counters_before['PassiveOpens'])
    tw_moved = abs(counters_after['tw'] - counters_before['tw'])
    differences = {}
    for state in counter.STATES:
        differences[state] = {
            'derived_minus_full': derived['counts'][state] - full['counts'][state],
            'derived_vs_ss': _deviation(derived['counts'][state], ss_before[state], ss_after[state]),
            'full_vs_ss': _deviation(full['counts'][state], ss_before[state], ss_after[state])}
    largest = max(abs(value) for item in differences.values() for value in item.values())
    # Sockets that changed state in the window: every connection opened moves two sockets (and closes as many
    # in steady churn); TIME_WAIT also moves by expiry.
    bound = 2 * opened + tw_moved
    return {'seconds': round(seconds, 3), 'derived_backend': derived['backend'], 'check': derived.get('check'),
            'fallbacks': derived['fallbacks'], 'derived': derived['counts'], 'full': full['counts'],
            'ss_before': ss_before, 'ss_after': ss_after, 'differences': differences, 'largest': largest,
            'connections_opened': opened, 'tw_moved': tw_moved, 'churn_bound': bound,
            'explained': largest <= bound}


def paths_under_churn(rounds, calls):
    """Rounds of paths_round() with the churn running, and how often the counters path answered auto's calls."""
    result = {'rounds': [paths_round() for _round in range(rounds)]}
    backends = {}
    offs = []
    for _call in range(calls):
        answer = counter.count_states(backend='auto')
        backends[answer['backend']] = backends.get(answer['backend'], 0) + 1
        if answer.get('check'):
            offs.append((answer['check']['off'], answer['check']['churn']))
    result['auto_backends'] = backends
    result['auto_calls'] = calls
    result['check_off_churn'] = offs
    result['explained'] = all(item['explained'] for item in result['rounds'])
    return result


def paths_paused(log, limit=100.0):
    """With the churn paused: a window in which ss saw no change at all, and there derived == full == ss.

    The churn's TIME_WAIT sockets keep expiring for up to 60 s after the pause; rounds are retried until ss
    reads the same counts before and after (nothing moved), at most ``limit`` seconds.
    """
    started = time.time()
    attempts = 0
    while True:
        attempts += 1
        item = paths_round()
        quiet = item['ss_before'] == item['ss_after']
        if quiet or time.time() - started > limit:
            break
        time.sleep(1.0 if attempts > 3 else 0.2)
    item['quiet'] = quiet
    item['attempts'] = attempts
    item['waited_seconds'] = round(time.time() - started, 1)
    item['exact'] = (quiet and item['derived'] == item['full'] == item['ss_before']
                     and item['derived_backend'] == 'counters')
    if not item['exact']:
        log('  PAUSED CHURN, NOT EXACT: quiet={0} backend={1} derived={2} full={3} ss={4}'.format(
            quiet, item['derived_backend'], item['derived'], item['full'], item['ss_before']))
    return item


def measure_size(total, repeats, interval_repeats, memory_runs, agent, methods, log):
    entry = {'target_sockets': total}
    methods = active(methods, total)
    entry['methods'] = [method['id'] for method in methods]
    with hold_sockets(total, timeout=3600) as load:
        entry['loadgen'] = {'expected': load.expected, 'workers': len(load.pids), 'pids': load.pids,
                            'build_seconds': round(load.build_seconds, 2)}
        log('{0} sockets held by {1} workers (built in {2:.1f} s): {3}'.format(
            total, len(load.pids), load.build_seconds, load.expected))
        rate = churn_rate(total)
        with Churn(rate) as churn:
            entry['churn'] = {'rate_per_second': rate, 'pid': churn.process.pid}
            time.sleep(2.0)
            entry['loadavg_start'] = open('/proc/loadavg').read().split()[:3]
            reference = ss_reference()
            entry['sockets_counted'] = sum(reference.values())
            missing = dict((state, n) for state, n in load.expected.items() if reference[state] < n)
            if missing:
                raise BenchError('ss sees fewer sockets than the load generator built: {0}'.format(missing))

            # Timed calls, churn running, round robin so that background noise spreads over every method.
            samples, cpu = {}, {}
            runs = []
            for method in methods:
                if method['bare']:
                    runs.append((method['id'], 'bare', fill(method['bare'], TIMED_STATE)))
                if method['key']:
                    runs.append((method['id'], 'agent', agent.get_argv(fill(method['key'], TIMED_STATE))))
            runs.append(('python_start', 'bare', PYTHON_START))
            for _argv in runs:  # one untimed warm-up round (page cache, agent forks)
                run_timed(_argv[2])
            for _rep in range(repeats):
                for method_id, path, argv in runs:
                    elapsed, text, usage = run_timed(argv)
                    if method_id != 'python_start' and (not text or 'ZBX_NOTSUPPORTED' in text
                                                        or 'tcp_status:' in text):
                        raise BenchError('{0} via {1} answered {2!r}'.format(method_id, path, text[:200]))
                    samples.setdefault((method_id, path), []).append(elapsed)
                    if path == 'bare':
                        cpu.setdefault(method_id, []).append((usage.ru_utime, usage.ru_stime))
            entry['python_start'] = timing_stats(samples.pop(('python_start', 'bare')))
            cpu.pop('python_start')
            entry['timings'] = {}
            for (method_id, path), values in samples.items():
                entry['timings'].setdefault(method_id, {})[path] = timing_stats(values)
            entry['cpu_seconds'] = dict((method_id, {
                'user': statistics.median(u for u, _s in values), 'sys': statistics.median(s for _u, s in values)})
                for method_id, values in cpu.items())
            log('  churn {0}/s; {1} sockets counted by ss'.format(rate, entry['sockets_counted']))
            log('  {0:<56} bare {1:>8.1f} ms'.format('python3 -S start + imports (no socket read)',
                                                      entry['python_start']['median'] * 1000))
            for method in methods:
                timing = entry['timings'][method['id']]
                log('  {0:<56} bare {1:>8}  via zabbix_get {2:>8} ms'.format(
                    method['label'][:56],
                    '{0:.1f}'.format(timing['bare']['median'] * 1000) if 'bare' in timing else '-',
                    '{0:.1f}'.format(timing['agent']['median'] * 1000) if 'agent' in timing else '-'))
            entry['max_rss_kib'] = dict(
                (method['id'], max_rss_kib(fill(method['bare'], TIMED_STATE), memory_runs))
                for method in methods if method['id'] in MEMORY_METHODS)

            # The derived path, the full dump and ss on the same load, churn running.
            entry['paths_churn'] = paths_under_churn(PATH_ROUNDS, FALLBACK_CALLS)
            log('  under churn: derived vs full vs ss largest difference {0} (bounds {1}); auto answered by {2}'
                .format([item['largest'] for item in entry['paths_churn']['rounds']],
                        [item['churn_bound'] for item in entry['paths_churn']['rounds']],
                        entry['paths_churn']['auto_backends']))

            # Churn paused: the same comparison must be exact; then every method against ss.
            churn.pause()
            entry['paths_paused'] = paths_paused(log)
            log('  churn paused: exact={0} after {1} attempt(s), {2} s'.format(
                entry['paths_paused']['exact'], entry['paths_paused']['attempts'],
                entry['paths_paused']['waited_seconds']))
            entry['correctness'] = check_correctness(agent, methods, log)
            log('  correctness: {0}'.format('all methods agree' if entry['correctness']['all_agreed']
                                            else 'DISAGREEMENT'))
            churn.resume()

            # Cost per monitoring interval, all 11 states, through the agent (small and middle sizes).
            interval = {}
            if interval_repeats:
                for method_id in INTERVAL_METHODS:
                    method = next(m for m in methods if m['id'] == method_id)
                    totals = []
                    for _rep in range(interval_repeats):
                        started = time.perf_counter()
                        for state in counter.STATES:
                            agent.get(fill(method['key'], state))
                        totals.append(time.perf_counter() - started)
                    interval[method_id] = dict(timing_stats(totals), calls=11, measured=True)
                for method_id in ('ss_all', 'ours_all', 'proc_all'):
                    interval[method_id] = dict(entry['timings'][method_id]['agent'], calls=1, measured=True)
                recipe = entry['timings']['recipe']['agent']
                interval['recipe'] = {'median': recipe['median'] * 11, 'calls': 11, 'measured': False,
                                      'n': recipe['n'], 'min': recipe['min'] * 11, 'max': recipe['max'] * 11}
            entry['interval'] = interval
            entry['loadavg_end'] = open('/proc/loadavg').read().split()[:3]
    return entry


# Start-up by interpreter (issue 13, item 3): what the counter imported before (the Python wrappers socket and
# struct, and os) against what it imports now (the C modules under them), and the script itself on an empty
# namespace (a call that is all start-up: interpreter, compiling the script, imports, one tiny dump).
STARTUP_INTERPRETERS = ('2.7', '3.6', 'agent')
STARTUP_COMMANDS = (
    ('bare', ['-S', '-c', 'pass']),
    ('old_imports', ['-S', '-c', 'import errno, os, socket, struct, time']),
    ('new_imports', ['-S', '-c', 'import _socket, _struct, errno, time']),
    ('script', ['-S', '{script}', 'LISTEN']),
)


def measure_startup(script, repeats):
    """{interpreter name: {command: timing}}, every command of every interpreter in one round robin."""
    interpreters = find_interpreters(STARTUP_INTERPRETERS)
    runs = [(name, label, [path] + [part.format(script=script) for part in argv])
            for name, path in sorted(interpreters.items()) for label, argv in STARTUP_COMMANDS]
    samples = {}
    for _argv in runs:
        run_timed(_argv[2])
    for _rep in range(repeats):
        for name, label, argv in runs:
            elapsed, text, _usage = run_timed(argv)
            if label == 'script' and not text.strip().isdigit():
                raise BenchError('{0} answered {1!r}'.format(' '.join(argv), text[:200]))
            samples.setdefault(name, {}).setdefault(label, []).append(elapsed)
    return dict((name, {'path': interpreters[name], 'timings': dict(
        (label, timing_stats(values)) for label, values in by_label.items())}) for name, by_label in samples.items())


def _median(entry, method_id, route):
    timing = entry['timings'].get(method_id, {}).get(route)
    return None if timing is None else timing['median']


def evaluate_targets(sizes):
    """The issue's targets, as ratios within this one run; a target whose size was not run is None."""
    by_size = dict((entry['target_sockets'], entry) for entry in sizes)
    targets = {}
    entry = by_size.get(200000)
    if entry:
        ours, minority, full = (_median(entry, key, 'bare') for key in ('ours_all', 'minority', 'full_all'))
        ours_agent, full_agent = _median(entry, 'ours_all', 'agent'), _median(entry, 'full_all', 'agent')
        targets['counters_vs_minority'] = {
            'sockets': entry['sockets_counted'], 'ratio': ours / minority, 'ours': ours, 'minority': minority,
            'target': TARGETS['counters_vs_minority_max'],
            'met': ours / minority <= TARGETS['counters_vs_minority_max']}
        targets['full_vs_counters'] = {
            'sockets': entry['sockets_counted'], 'ratio': full / ours, 'ours': ours, 'full': full,
            'ratio_agent': full_agent / ours_agent, 'target': TARGETS['full_vs_counters_min'],
            'met': full / ours >= TARGETS['full_vs_counters_min']}
    entry = by_size.get(1000000)
    if entry:
        agent = _median(entry, 'ours_all', 'agent')
        targets['at_1m'] = {'sockets': entry['sockets_counted'], 'seconds': agent,
                            'bare': _median(entry, 'ours_all', 'bare'),
                            'full_agent': _median(entry, 'full_all', 'agent'),
                            'target': TARGETS['at_1m_agent_max_seconds'],
                            'met': agent < TARGETS['at_1m_agent_max_seconds']}
    entry = by_size.get(100000)
    if entry and 'ports' in entry['timings']:
        figures = dict(('{0}_{1}'.format(key, route), _median(entry, method_id, route))
                       for key, method_id in (('ports', 'ports'), ('all', 'ours_all'), ('full', 'full_all'),
                                              ('floor', 'ports_floor'))
                       for route in ('agent', 'bare'))
        ratios = dict(('ratio_{0}_{1}'.format(key, route),
                       figures['ports_' + route] / figures['{0}_{1}'.format(key, route)])
                      for key in ('all', 'full', 'floor') for route in ('agent', 'bare'))
        targets['ports_vs_all'] = dict(figures, **ratios)
        targets['ports_vs_all'].update({
            'sockets': entry['sockets_counted'], 'target': TARGETS['ports_vs_all_at_100k_max'],
            'met': max(ratios['ratio_all_agent'], ratios['ratio_all_bare']) <= TARGETS['ports_vs_all_at_100k_max'],
            'met_full': max(ratios['ratio_full_agent'], ratios['ratio_full_bare'])
            <= TARGETS['ports_vs_all_at_100k_max']})
    entry = by_size.get(1000)
    if entry:
        ours_agent, recipe_agent = _median(entry, 'ours_all', 'agent'), _median(entry, 'recipe', 'agent')
        ours_bare, recipe_bare = _median(entry, 'ours_all', 'bare'), _median(entry, 'recipe', 'bare')
        targets['vs_recipe_at_1k'] = {
            'sockets': entry['sockets_counted'], 'ours_agent': ours_agent, 'recipe_agent': recipe_agent,
            'ours_bare': ours_bare, 'recipe_bare': recipe_bare,
            'ours_one_agent': _median(entry, 'ours_one', 'agent'), 'ours_one_bare': _median(entry, 'ours_one', 'bare'),
            'ratio_agent': ours_agent / recipe_agent, 'ratio_bare': ours_bare / recipe_bare,
            'target': TARGETS['vs_recipe_at_1k_max'],
            'met': ours_agent <= recipe_agent and ours_bare <= recipe_bare}
    return targets


def _first_line(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=10).stdout.decode().strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return 'unknown'


def machine_description():
    model = 'unknown'
    with open('/proc/cpuinfo') as handle:
        for line in handle:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    with open('/proc/meminfo') as handle:
        mem_kib = int(handle.readline().split()[1])
    return {
        'nproc': os.cpu_count(),
        'cpu': model,
        'memory_gib': round(mem_kib / 1024.0 / 1024.0, 1),
        'uname': ' '.join(platform.uname()[i] for i in (0, 2, 4)),
        'os': _os_release(),
        'agent_python': _first_line([AGENT_PYTHON, '--version']),
        'harness_python': platform.python_version(),
        'zabbix_agentd': _first_line(['/usr/sbin/zabbix_agentd', '-V']),
        'netstat': _first_line(['netstat', '--version']),
        'ss': _first_line(['ss', '-V']),
        'hostname': socket.gethostname(),
    }


def _os_release():
    try:
        with open('/etc/os-release') as handle:
            for line in handle:
                if line.startswith('PRETTY_NAME='):
                    return line.split('=', 1)[1].strip().strip('"')
    except IOError:
        pass
    return 'unknown'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--smoke', action='store_true', help='1k sockets, 3 repeats (CI)')
    parser.add_argument('--out', help='directory for results.json and bench.png '
                        '(default bench/results, or /tmp/zts-bench-smoke with --smoke)')
    parser.add_argument('--markdown', help='markdown report path (default docs/BENCHMARK.md, '
                        'or OUT/BENCHMARK.md with --smoke)')
    parser.add_argument('--agent-port', type=int, default=10070, help='private agent port (default 10070)')
    parser.add_argument('--sizes', help='comma-separated socket counts, e.g. 1000,10000 (repeats as in the full run)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error('run as root: the load generator widens net.ipv4.ip_local_port_range for large sizes')
    in_netns = os.environ.get('ZTS_BENCH_NETNS') == '1'

    out = args.out or ('/tmp/zts-bench-smoke' if args.smoke else os.path.join(BENCH, 'results'))
    markdown = args.markdown or (os.path.join(out, 'BENCHMARK.md') if args.smoke
                                 else os.path.join(REPO, 'docs', 'BENCHMARK.md'))
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    if args.sizes:
        wanted = [int(size) for size in args.sizes.split(',')]
        sizes = [next((s for s in FULL_SIZES if s[0] == size), (size, 7, 3 if size <= SLOW_MAX else 0))
                 for size in wanted]
    os.makedirs(out, exist_ok=True)

    def log(message):
        print('[{0}] {1}'.format(time.strftime('%H:%M:%S'), message))
        sys.stdout.flush()

    # The harness's own calls (the path comparisons) get the same deadline as the installed script.
    counter.NETLINK_TIMEOUT = max(AGENT_TIMEOUT - 0.5, 0.5)
    started = time.time()
    install_dir = tempfile.mkdtemp(prefix='zts-bench-script-')
    try:
        script = install_counter(install_dir)
        methods = build_methods(script)
        role_conf = role_items.userparameter_conf(script)
        userparameters = bench_userparameters(script)
        results = {
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'smoke': args.smoke,
            'machine': machine_description(),
            'methods': [dict((k, method[k]) for k in ('id', 'label', 'all', 'max')) for method in methods],
            'timed_state': TIMED_STATE,
            'userparameters': ['UserParameter=' + line for line in userparameters] + [
                line for line in role_conf.splitlines() if line.startswith('UserParameter=')],
            'script': script,
            'targets': TARGETS,
            'sizes': [],
            'private_netns': in_netns,
            'sockets_before_load': sum(ss_reference().values()),
            'loadavg_before': open('/proc/loadavg').read().split()[:3],
        }
        memory_runs = 1 if args.smoke else 3
        results['python_start_rss_kib'] = max_rss_kib(PYTHON_START, memory_runs)
        if not args.smoke:
            results['startup'] = measure_startup(script, 30)
            log('start-up: {0}'.format(', '.join('{0} script {1:.1f} ms'.format(
                name, item['timings']['script']['median'] * 1000) for name, item in sorted(
                    results['startup'].items()))))
        results['memory_runs'] = memory_runs
        with PrivateAgent(args.agent_port, userparameters, role_conf) as agent:
            log('private zabbix_agentd on 127.0.0.1:{0} (config {1})'.format(args.agent_port, agent.config_path))
            results['agent'] = {'port': args.agent_port, 'pid': agent.process.pid}
            for total, repeats, interval_repeats in sizes:
                results['sizes'].append(measure_size(total, repeats, interval_repeats, memory_runs, agent,
                                                     methods, log))
    finally:
        shutil.rmtree(install_dir, ignore_errors=True)
    results['target_check'] = evaluate_targets(results['sizes'])
    results['all_agreed'] = all(entry['correctness']['all_agreed'] for entry in results['sizes'])
    results['paths_exact_when_paused'] = all(entry['paths_paused']['exact'] for entry in results['sizes'])
    results['paths_explained_under_churn'] = all(entry['paths_churn']['explained'] for entry in results['sizes'])
    results['duration_seconds'] = round(time.time() - started, 1)

    from bench import report  # matplotlib is imported only here, after the measurements
    with open(os.path.join(out, 'results.json'), 'w') as handle:
        json.dump(results, handle, indent=1, sort_keys=True)
        handle.write('\n')
    png = os.path.join(out, 'bench.png')
    report.plot(results, png)
    report.write_markdown(results, markdown, png, os.path.join(out, 'results.json'))
    log('wrote {0}, {1}, {2} in {3:.0f} s'.format(os.path.join(out, 'results.json'), png, markdown,
                                                  results['duration_seconds']))
    for name, item in sorted(results['target_check'].items()):
        log('target {0}: {1}'.format(name, json.dumps(item, sort_keys=True)))
    failed = []
    if not results['all_agreed']:
        failed.append('some methods disagree with ss (see results.json correctness)')
    if not results['paths_exact_when_paused']:
        failed.append('with the churn paused, the derived path, the full dump and ss were not all equal')
    if not results['paths_explained_under_churn']:
        failed.append('under churn, a difference between the paths exceeded the churn in its window')
    for reason in failed:
        log('FAILED: ' + reason)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
