#!/usr/bin/env python3
"""Benchmark the TCP state counter against the recipe's netstat script, ss and the
agent's native net.tcp.socket.count, as bare commands and end to end through a
real zabbix_get and a private zabbix_agentd, at 1k, 10k and 100k sockets.

    bench/run.sh            full run: bench/results/{results.json,bench.png}, docs/BENCHMARK.md
    bench/run.sh --smoke    1k sockets only, few repeats, output in /tmp/zts-bench-smoke

Run as root, through bench/run.sh: it runs this in a private network namespace
(loopback only) so that other jobs' sockets stay out of the counts; there the load
generator widens net.ipv4.ip_local_port_range for 100k sockets (and restores it)
and the private agent runs with AllowRoot=1.
"""

from __future__ import print_function

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils'))

import tcp_status_counter as counter  # noqa: E402  (names and JSON of the one counter)
from agent import PrivateAgent  # noqa: E402
from loadgen import hold_sockets  # noqa: E402

COUNTER = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils', 'tcp_status_counter.py')
WRAPPER = os.path.join(BENCH, 'methods', 'counter_backend.py')
RECIPE = os.path.join(BENCH, 'methods', 'tcp_connections.sh')
SS_SCRIPT = os.path.join(BENCH, 'methods', 'tcp_ss.sh')
AGENT_PYTHON = '/usr/bin/python3'  # what the role's shebang gives on this host (Debian 12)

USERPARAMETERS = [
    # The recipe's own line, pointing at the recipe's script.
    'tcp.recipe[*],{0} $1 $2'.format(RECIPE),
    'tcp.ss[*],{0} "$1"'.format(SS_SCRIPT),
    # The role's two lines, with the repository's counter run by the host's python3.
    'tcp.status[*],{0} {1} "$1" "$2" "$3" "$4"'.format(AGENT_PYTHON, COUNTER),
    'tcp.status.json[*],{0} {1} all "$1" "$2" "$3"'.format(AGENT_PYTHON, COUNTER),
    'tcp.status.backend[*],{0} {1} "$1" "$2"'.format(AGENT_PYTHON, WRAPPER),
]

CHECK_STATES = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN', 'CLOSE_WAIT', 'FIN_WAIT2')
RECIPE_STATES = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN')
NATIVE_NAMES = dict((state, state.lower()) for state in counter.STATES)


# One row per method. 'bare' and 'key' are templates filled with the state (one-state
# methods) or used as they are (all-state methods). 'states' = what it can answer.
METHODS = [
    {'id': 'recipe', 'label': 'recipe netstat script (1 state)', 'all': False, 'states': RECIPE_STATES,
     'bare': [RECIPE, '{state}'], 'key': 'tcp.recipe[{state}]'},
    {'id': 'ss_one', 'label': 'ss script (1 state)', 'all': False, 'states': counter.STATES,
     'bare': [SS_SCRIPT, '{state}'], 'key': 'tcp.ss[{state}]'},
    {'id': 'ss_all', 'label': 'ss script (all states, 1 call)', 'all': True, 'states': counter.STATES,
     'bare': [SS_SCRIPT, 'all'], 'key': 'tcp.ss[all]'},
    {'id': 'native', 'label': 'agent native net.tcp.socket.count (1 state)', 'all': False,
     'states': counter.STATES, 'bare': None, 'key': 'net.tcp.socket.count[,,,,{native}]'},
    {'id': 'ours_one', 'label': 'ours, netlink (1 state)', 'all': False, 'states': counter.STATES,
     'bare': [AGENT_PYTHON, COUNTER, '{state}'], 'key': 'tcp.status[{state}]'},
    {'id': 'ours_all', 'label': 'ours, netlink (all states, 1 call)', 'all': True, 'states': counter.STATES,
     'bare': [AGENT_PYTHON, COUNTER, 'all'], 'key': 'tcp.status.json'},
    {'id': 'proc_one', 'label': 'ours, /proc backend (1 state)', 'all': False, 'states': counter.STATES,
     'bare': [AGENT_PYTHON, WRAPPER, 'proc', '{state}'], 'key': 'tcp.status.backend[proc,{state}]'},
    {'id': 'proc_all', 'label': 'ours, /proc backend (all states, 1 call)', 'all': True,
     'states': counter.STATES, 'bare': [AGENT_PYTHON, WRAPPER, 'proc', 'all'],
     'key': 'tcp.status.backend[proc,all]'},
]
METHOD_BY_ID = dict((method['id'], method) for method in METHODS)
MEMORY_METHODS = ('ours_one', 'ours_all', 'proc_one', 'proc_all')
GNU_TIME = '/usr/bin/time'
# The floor under any Python collector: interpreter start plus the counter's imports, no socket read.
# Timed in the same round robin as the methods, so that it sees the same background load.
PYTHON_START = [AGENT_PYTHON, '-c', 'import errno, os, socket, struct, sys']
TIMED_STATE = 'ESTABLISHED'  # the one state of the one-state rows (the busiest one)
INTERVAL_METHODS = ('ss_one', 'native', 'ours_one')  # measured as 11 real calls

FULL_SIZES = ((1000, 15, 5), (10000, 15, 5), (100000, 7, 3))  # (sockets, repeats, interval repeats)
SMOKE_SIZES = ((1000, 3, 1),)

TARGETS = {
    'vs_recipe_min_ratio': 20.0,
    'vs_native_max_ratio': 1.5,
    'all_states_max_seconds': 0.3,
}


class BenchError(Exception):
    """The benchmark could not measure something it must report."""


def fill(template, state):
    if isinstance(template, list):
        return [part.format(state=state, native=NATIVE_NAMES.get(state, '')) for part in template]
    return template.format(state=state, native=NATIVE_NAMES.get(state, ''))


def run_timed(argv, timeout=60):
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
    """Counts a method's output gives, as {STATE: n}; raises BenchError on junk."""
    try:
        if method['id'] in ('ours_all', 'proc_all'):
            return dict((name, int(value)) for name, value in json.loads(text).items())
        if method['id'] == 'ss_all':
            counts = {}
            for line in text.splitlines():
                name, value = line.split()
                counts[counter.normalize_state(name)] = int(value)
            return dict((name, counts.get(name, 0)) for name in counter.STATES)
        # The recipe's script prints an empty line for a state with no sockets.
        return {state: int(text) if text != '' or method['id'] != 'recipe' else 0}
    except (ValueError, TypeError, counter.TcpStatusError):
        raise BenchError('{0} gave {1!r}, not counts'.format(method['label'], text[:200]))


def ss_reference():
    """Independent reference: ss -tan tallied here (both families)."""
    output = subprocess.run(['ss', '-Htan'], stdout=subprocess.PIPE, check=True).stdout.decode()
    counts = dict((name, 0) for name in counter.STATES)
    for line in output.splitlines():
        if line.strip():
            counts[counter.normalize_state(line.split(None, 1)[0])] += 1
    return counts


def timing_stats(samples):
    ordered = sorted(samples)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        'median': statistics.median(ordered), 'min': ordered[0], 'max': ordered[-1],
        'p25': quartiles[0], 'p75': quartiles[2], 'n': len(ordered),
        'samples': [round(value, 6) for value in samples],
    }


def check_correctness(agent, log):
    """Every method's counts, each compared with ss tallied right before and right after it.

    A count agrees when it lies between those two references, give or take
    2 + 0.1% (other jobs' sockets come and go) and, for TIME_WAIT, one more per
    call in that window (every agent exchange leaves a TIME_WAIT, earlier ones expire).
    """
    result = {'methods': {}}
    before = result['reference_before'] = ss_reference()
    calls = 0
    for method in METHODS:
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
            after = ss_reference()
            if path == 'agent' and 'ESTABLISHED' in counts:
                counts['ESTABLISHED'] -= 2  # zabbix_get's own connection to the agent, both ends
            deviations = {}
            agreed = True
            for state in states:
                value = counts[state]
                low, high = sorted((before[state], after[state]))
                tolerance = 2 + high // 1000 + (window_calls if state == 'TIME_WAIT' else 0)
                deviation = 0 if low <= value <= high else (value - high if value > high else value - low)
                deviations[state] = deviation
                agreed = agreed and abs(deviation) <= tolerance
            name = '{0}/{1}'.format(method['id'], path)
            result['methods'][name] = {
                'counts': dict((state, counts[state]) for state in states), 'deviation': deviations,
                'agreed': agreed, 'ss_before': dict((state, before[state]) for state in states),
                'ss_after': dict((state, after[state]) for state in states)}
            if not agreed:
                log('  DISAGREES: {0} {1} (ss before {2}, after {3})'.format(
                    name, result['methods'][name]['counts'], result['methods'][name]['ss_before'],
                    result['methods'][name]['ss_after']))
            calls += window_calls
            before = after
    result['reference_after'] = before
    result['calls'] = calls
    result['all_agreed'] = all(entry['agreed'] for entry in result['methods'].values())
    return result


def measure_size(total, repeats, interval_repeats, memory_runs, agent, log):
    entry = {'target_sockets': total}
    with hold_sockets(total, timeout=600) as load:
        entry['loadgen'] = {'expected': load.expected, 'workers': len(load.pids), 'pids': load.pids,
                            'build_seconds': round(load.build_seconds, 2)}
        entry['loadavg_start'] = open('/proc/loadavg').read().split()[:3]
        log('{0} sockets held by {1} workers (built in {2:.1f} s): {3}'.format(
            total, len(load.pids), load.build_seconds, load.expected))
        entry['correctness'] = check_correctness(agent, log)
        reference = entry['correctness']['reference_before']
        entry['sockets_counted'] = sum(reference.values())
        missing = dict((state, n) for state, n in load.expected.items() if reference[state] < n)
        if missing:
            raise BenchError('ss sees fewer sockets than the load generator built: {0}'.format(missing))
        log('  correctness: {0}; ss counted {1} sockets'.format(
            'all methods agree' if entry['correctness']['all_agreed'] else 'DISAGREEMENT',
            entry['sockets_counted']))

        # Timed calls, round robin so that background noise spreads over every method.
        samples, cpu = {}, {}
        runs = []
        for method in METHODS:
            if method['bare']:
                runs.append((method['id'], 'bare', fill(method['bare'], TIMED_STATE)))
            runs.append((method['id'], 'agent', agent.get_argv(fill(method['key'], TIMED_STATE))))
        runs.append(('python_start', 'bare', PYTHON_START))
        for _argv in runs:  # one untimed warm-up round (page cache, agent forks)
            run_timed(_argv[2])
        for _rep in range(repeats):
            for method_id, path, argv in runs:
                elapsed, text, usage = run_timed(argv)
                if method_id != 'python_start' and (not text or 'ZBX_NOTSUPPORTED' in text):
                    raise BenchError('{0} via {1} answered {2!r}'.format(method_id, path, text[:200]))
                samples.setdefault((method_id, path), []).append(elapsed)
                if path == 'bare':
                    cpu.setdefault(method_id, []).append((usage.ru_utime, usage.ru_stime))
        entry['python_start'] = timing_stats(samples.pop(('python_start', 'bare')))
        cpu.pop('python_start')
        entry['timings'] = {}
        for (method_id, path), values in samples.items():
            entry['timings'].setdefault(method_id, {})[path] = timing_stats(values)
        entry['max_rss_kib'] = dict(
            (method_id, max_rss_kib(fill(METHOD_BY_ID[method_id]['bare'], TIMED_STATE), memory_runs))
            for method_id in MEMORY_METHODS)
        # CPU of the bare command and its children (user = interpreter/awk, sys = the kernel's work).
        entry['cpu_seconds'] = dict((method_id, {
            'user': statistics.median(u for u, _s in values), 'sys': statistics.median(s for _u, s in values)})
            for method_id, values in cpu.items())
        log('  {0:<44} bare {1:>9.1f} ms'.format('python3 start + imports (no socket read)',
                                                  entry['python_start']['median'] * 1000))
        for method in METHODS:
            timing = entry['timings'][method['id']]
            log('  {0:<44} bare {1:>9}  via zabbix_get {2:>9} ms'.format(
                method['label'], '{0:.1f}'.format(timing['bare']['median'] * 1000) if 'bare' in timing else '-',
                '{0:.1f}'.format(timing['agent']['median'] * 1000)))

        # Cost per monitoring interval, all 11 states, through the agent.
        interval = {}
        for method_id in INTERVAL_METHODS:
            method = METHOD_BY_ID[method_id]
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


def evaluate_targets(entry):
    agent = dict((method_id, timing['agent']['median']) for method_id, timing in entry['timings'].items())
    bare_all = entry['timings']['ours_all']['bare']['median']
    vs_recipe = agent['recipe'] / agent['ours_all']
    vs_native_all = agent['ours_all'] / agent['native']
    vs_native_one = agent['ours_one'] / agent['native']
    return {
        'sockets': entry['target_sockets'],
        'vs_recipe': {'ratio': vs_recipe, 'target': TARGETS['vs_recipe_min_ratio'],
                      'met': vs_recipe >= TARGETS['vs_recipe_min_ratio']},
        'vs_native_all': {'ratio': vs_native_all, 'target': TARGETS['vs_native_max_ratio'],
                          'met': vs_native_all <= TARGETS['vs_native_max_ratio']},
        'vs_native_one': {'ratio': vs_native_one, 'target': TARGETS['vs_native_max_ratio'],
                          'met': vs_native_one <= TARGETS['vs_native_max_ratio']},
        'all_states_seconds': {'bare': bare_all, 'agent': agent['ours_all'],
                               'target': TARGETS['all_states_max_seconds'],
                               'met': bare_all < TARGETS['all_states_max_seconds']},
    }


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
        parser.error('run as root: the load generator widens net.ipv4.ip_local_port_range for 100k sockets')
    in_netns = os.environ.get('ZTS_BENCH_NETNS') == '1'

    out = args.out or ('/tmp/zts-bench-smoke' if args.smoke else os.path.join(BENCH, 'results'))
    markdown = args.markdown or (os.path.join(out, 'BENCHMARK.md') if args.smoke
                                 else os.path.join(REPO, 'docs', 'BENCHMARK.md'))
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    if args.sizes:
        wanted = [int(size) for size in args.sizes.split(',')]
        sizes = [next((s for s in FULL_SIZES if s[0] == size), (size, 7, 3)) for size in wanted]
    os.makedirs(out, exist_ok=True)

    def log(message):
        print('[{0}] {1}'.format(time.strftime('%H:%M:%S'), message))
        sys.stdout.flush()

    started = time.time()
    results = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'smoke': args.smoke,
        'machine': machine_description(),
        'methods': [dict((k, method[k]) for k in ('id', 'label', 'all')) for method in METHODS],
        'timed_state': TIMED_STATE,
        'userparameters': USERPARAMETERS,
        'targets': TARGETS,
        'sizes': [],
        'private_netns': in_netns,
        'sockets_before_load': sum(ss_reference().values()),
    }
    # The floor under any Python collector: interpreter start plus the counter's imports, no sockets read.
    memory_runs = 1 if args.smoke else 3
    results['python_start_rss_kib'] = max_rss_kib(PYTHON_START, memory_runs)
    results['memory_runs'] = memory_runs
    with PrivateAgent(args.agent_port, USERPARAMETERS) as agent:
        log('private zabbix_agentd on 127.0.0.1:{0} (config {1})'.format(args.agent_port, agent.config_path))
        results['agent'] = {'port': args.agent_port, 'pid': agent.process.pid}
        for total, repeats, interval_repeats in sizes:
            results['sizes'].append(measure_size(total, repeats, interval_repeats, memory_runs, agent, log))
    largest = results['sizes'][-1]
    results['target_check'] = evaluate_targets(largest)
    results['all_agreed'] = all(entry['correctness']['all_agreed'] for entry in results['sizes'])
    results['duration_seconds'] = round(time.time() - started, 1)

    import report  # matplotlib is imported only here, after the measurements
    with open(os.path.join(out, 'results.json'), 'w') as handle:
        json.dump(results, handle, indent=1, sort_keys=True)
        handle.write('\n')
    png = os.path.join(out, 'bench.png')
    report.plot(results, png)
    report.write_markdown(results, markdown, png, os.path.join(out, 'results.json'))
    log('wrote {0}, {1}, {2} in {3:.0f} s'.format(os.path.join(out, 'results.json'), png, markdown,
                                                  results['duration_seconds']))
    check = results['target_check']
    log('at {0} sockets: ours all-states {1:.1f} ms bare, {2:.1f} ms via zabbix_get; '
        'the recipe takes {3:.1f}x as long, native (one state) {4:.2f}x as long'.format(
            check['sockets'], check['all_states_seconds']['bare'] * 1000,
            check['all_states_seconds']['agent'] * 1000, check['vs_recipe']['ratio'],
            1.0 / check['vs_native_all']['ratio']))
    if not results['all_agreed']:
        log('FAILED: some methods disagree (see results.json correctness)')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
