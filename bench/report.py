"""Turn bench/run.py's results into the plot (PNG) and the markdown report."""

from __future__ import print_function

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

STYLE = {
    'recipe': ('tab:red', 'o'),
    'ss_one': ('tab:orange', 's'),
    'ss_all': ('tab:brown', 's'),
    'native': ('tab:purple', 'D'),
    'ours_one': ('tab:green', '^'),
    'ours_all': ('tab:blue', '^'),
    'full_all': ('tab:gray', 'x'),
    'minority': ('black', '.'),
    'proc_one': ('tab:olive', 'v'),
    'proc_all': ('tab:cyan', 'v'),
    'ports': ('tab:pink', 'P'),
    'ports_floor': ('darkgrey', '.'),
}
SHOWN = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN', 'CLOSE_WAIT', 'FIN_WAIT2')


def _ms(seconds):
    return seconds * 1000.0


def _fmt_ms(seconds):
    if seconds is None:
        return '-'
    value = _ms(seconds)
    return '{0:.0f}'.format(value) if value >= 100 else '{0:.1f}'.format(value)


def _size_label(entry):
    total = entry['target_sockets']
    if total >= 1000000:
        return '{0:g}M'.format(total / 1000000.0)
    return '{0}k'.format(total // 1000) if total >= 1000 else str(total)


def _timing(entry, method_id, route):
    return entry['timings'].get(method_id, {}).get(route)


def plot(results, path):
    sizes = results['sizes']
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for axis, route, title in ((axes[0], 'agent', 'end to end: zabbix_get -> private zabbix_agentd'),
                               (axes[1], 'bare', 'bare command (process start included)')):
        for method in results['methods']:
            xs, ys, low, high = [], [], [], []
            for entry in sizes:
                timing = _timing(entry, method['id'], route)
                if timing is None:
                    continue
                xs.append(entry['sockets_counted'])
                ys.append(_ms(timing['median']))
                low.append(_ms(timing['median'] - timing['p25']))
                high.append(_ms(timing['p75'] - timing['median']))
            if not xs:
                continue
            color, marker = STYLE.get(method['id'], (None, 'o'))
            axis.errorbar(xs, ys, yerr=[low, high], label=method['label'], color=color, marker=marker,
                          linestyle='-' if method['all'] else '--', capsize=3)
        axis.set_xscale('log')
        axis.set_yscale('log')
        axis.set_title(title, fontsize=10)
        axis.set_xlabel('TCP sockets on the host (counted by ss; churn running)')
        axis.grid(True, which='both', alpha=0.3)
        axis.axhline(1000, color='grey', linestyle=':', linewidth=1)
    lowest = min(_ms(timing['p25']) for entry in sizes for method_timings in entry['timings'].values()
                 for timing in method_timings.values())
    axes[0].set_ylim(bottom=lowest * 0.7)
    axes[0].set_ylabel('wall time per call, ms (median, bars = quartiles)')
    axes[0].legend(fontsize=7, loc='upper left')
    figure.suptitle('Counting TCP states ({0}, {1} cores); dotted line: 1 s'.format(
        results['date'], results['machine']['nproc']), fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _yes(flag):
    return 'yes' if flag else '**no**'


def _largest_state(item):
    """' STATE' of a path round's largest difference ('' when there is none)."""
    if not item['largest']:
        return ''
    return ' ' + max(item['differences'], key=lambda state: max(abs(v) for v in item['differences'][state].values()))


def _target_rows(results):
    check = results['target_check']
    rows = []
    item = check.get('counters_vs_minority')
    if item:
        rows.append('| at 200k ({0} sockets): all states (counters path) at most {1:g}x the dump of every state but '
                    'ESTABLISHED, bare | {2} vs {3} ms = {4:.2f}x | {5} |'.format(
                        item['sockets'], item['target'], _fmt_ms(item['ours']), _fmt_ms(item['minority']),
                        item['ratio'], _yes(item['met'])))
    item = check.get('full_vs_counters')
    if item:
        rows.append('| at 200k: all states at least {0:g}x faster than the full dump (`--backend=netlink`, the '
                    'way every call counted before; itself faster now, one dump request for both families), bare '
                    '| {1} vs {2} ms = {3:.1f}x (via zabbix_get {4:.1f}x) | {5} |'.format(
                        item['target'], _fmt_ms(item['full']), _fmt_ms(item['ours']), item['ratio'],
                        item['ratio_agent'], _yes(item['met'])))
    item = check.get('at_1m')
    if item:
        rows.append('| at 1M ({0} sockets): all states under {1:g} s end to end through zabbix_get | {2} ms '
                    '(bare {3} ms; full dump via zabbix_get {4} ms) | {5} |'.format(
                        item['sockets'], item['target'], _fmt_ms(item['seconds']), _fmt_ms(item['bare']),
                        _fmt_ms(item['full_agent']), _yes(item['met'])))
    item = check.get('ports_vs_all')
    if item:
        rows.append('| at 100k ({0} sockets): the per-port call at most {1:g}x the all-states call as the issue '
                    'knew it, a full dump (`--backend=netlink all`; issue 10 came before the counters path) | via '
                    'zabbix_get {2} vs {3} ms = {4:.2f}x, bare {5} vs {6} ms = {7:.2f}x | {8} |'.format(
                        item['sockets'], item['target'], _fmt_ms(item['ports_agent']), _fmt_ms(item['full_agent']),
                        item['ratio_full_agent'], _fmt_ms(item['ports_bare']), _fmt_ms(item['full_bare']),
                        item['ratio_full_bare'], _yes(item['met_full'])))
        rows.append('| at 100k: the per-port call at most {0:g}x the all-states call of today (the counters path: '
                    'ESTABLISHED from a kernel counter, which no kernel keeps per port; the per-port floor alone, '
                    'its two dumps, is {1:.2f}x) | via zabbix_get {2} vs {3} ms = {4:.2f}x, bare {5} vs {6} ms = '
                    '{7:.2f}x | {8} |'.format(
                        item['target'], item['floor_agent'] / item['all_agent'], _fmt_ms(item['ports_agent']),
                        _fmt_ms(item['all_agent']), item['ratio_all_agent'], _fmt_ms(item['ports_bare']),
                        _fmt_ms(item['all_bare']), item['ratio_all_bare'], _yes(item['met'])))
    item = check.get('vs_recipe_at_1k')
    if item:
        rows.append('| at 1k ({0} sockets): ours (all states) at or below the recipe\'s one-state call | via '
                    'zabbix_get {1} vs {2} ms ({3:.2f}x), bare {4} vs {5} ms ({6:.2f}x); ours one state: {7} / {8} '
                    'ms | {9} |'.format(
                        item['sockets'], _fmt_ms(item['ours_agent']), _fmt_ms(item['recipe_agent']),
                        item['ratio_agent'], _fmt_ms(item['ours_bare']), _fmt_ms(item['recipe_bare']),
                        item['ratio_bare'], _fmt_ms(item['ours_one_agent']), _fmt_ms(item['ours_one_bare']),
                        _yes(item['met'])))
    return rows


def _ports_section(results, add):
    sizes = [entry for entry in results['sizes'] if 'ports' in entry['timings']]
    add('## The per-port call (issue 10), median ms')
    add('')
    add('`tcp_status.py ports` (the key `tcp.status.ports`, the template\'s per-port master item) against the '
        'all-states call (`tcp_status.py all`, the counters path), the full dump of every state '
        '(`--backend=netlink all`, what the all-states call cost before the counters path, and still costs when '
        'its cross-check fails) and its own floor (`bench/methods/ports_floor.py`: the same two dumps, tallied by '
        'state only). The per-port call needs every socket on a listening port one by one (a kernel counter '
        'gives ESTABLISHED for the whole host, none gives it per port): the kernel fills one message per such '
        'socket, here the server ends of the load\'s connections, about half of the sockets; the client ends '
        'are left out by the kernel\'s filter. The all-states call reads ESTABLISHED from a counter and dumps '
        'only the other states.')
    add('')
    add('| size | route | per port | all states | ratio | full dump | ratio | floor | per port - floor |')
    add('|---|---|---|---|---|---|---|---|---|')
    for entry in sizes:
        for route, label in (('agent', 'via zabbix_get'), ('bare', 'bare')):
            ports, every, full, floor = (_timing(entry, method_id, route) for method_id in (
                'ports', 'ours_all', 'full_all', 'ports_floor'))
            if not ports:
                continue
            add('| {0} ({1} sockets) | {2} | {3} | {4} | {5:.2f}x | {6} | {7:.2f}x | {8} | {9} |'.format(
                _size_label(entry), entry['sockets_counted'], label, _fmt_ms(ports['median']),
                _fmt_ms(every['median']), ports['median'] / every['median'], _fmt_ms(full['median']),
                ports['median'] / full['median'], _fmt_ms(floor['median']) if floor else '-',
                _fmt_ms(ports['median'] - floor['median']) if floor else '-'))
    add('')


def write_markdown(results, path, png_path, json_path):
    here = os.path.dirname(os.path.abspath(path))
    png_rel = os.path.relpath(os.path.abspath(png_path), here)
    json_rel = os.path.relpath(os.path.abspath(json_path), here)
    machine = results['machine']
    sizes = results['sizes']
    labels = dict((method['id'], method['label']) for method in results['methods'])
    lines = []
    add = lines.append
    add('# Benchmark: counting TCP states for Zabbix')
    add('')
    add('Generated by `bench/run.sh`{0} on {1} in {2:.0f} s; do not edit by hand, rerun it. '
        'Raw figures: [{3}]({3}).'.format(' --smoke' if results['smoke'] else '', results['date'],
                                           results['duration_seconds'], json_rel))
    add('')
    add('Machine: {0} vCPU ({1}), {2} GiB RAM, {3}, {4}. Agent: {5}; the counter runs under {6} '
        '(the agent\'s `/usr/bin/python3`, started with `-S` as the role installs the script); harness Python '
        '{7}; {8}; {9}.'.format(
            machine['nproc'], machine['cpu'], machine['memory_gib'], machine['os'], machine['uname'],
            machine['zabbix_agentd'], machine['agent_python'], machine['harness_python'],
            machine['netstat'], machine['ss']))
    add('')
    if results.get('private_netns'):
        add('Sockets: the run happens in a private network namespace (`unshare --net`, loopback only), so '
            'the counts, and the kernel counters the counters path reads, are the load generator\'s and the '
            'churn\'s sockets plus the benchmark\'s own ({0} before the load), not other jobs\'.'.format(
                results['sockets_before_load']))
        add('')
    peak_load = max(float(value) for entry in sizes for value in (entry['loadavg_start'][0],
                                                                   entry['loadavg_end'][0]))
    add('How the run was made: one run, every size in a row, on a {0}-core VM that other jobs (other '
        'engineers\' test suites, linters, ansible runs) were using at the same time; load average (1 min) at '
        'the start/end of each size (at the start of the large sizes it includes the load generator\'s own '
        'build, ~50 worker processes at 1M): {1}. {2}The targets are ratios between methods measured in the same '
        'round robin, so that background load falls on every method alike; medians are what to read, single '
        'calls vary (see the min-max ranges).'.format(
            machine['nproc'], ', '.join(
                '{0}: {1}/{2}'.format(_size_label(entry), entry['loadavg_start'][0], entry['loadavg_end'][0])
                for entry in sizes),
            'With a load above the core count, every absolute figure here is inflated (each process waits '
            'for a CPU). ' if peak_load > machine['nproc'] else ''))
    add('')
    add('Churn: during every measurement a process opens and closes short connections (5 ms each, closed '
        'client first, alternately on 127.0.0.1 and ::1), so ESTABLISHED moves and TIME_WAIT renews: {0} '
        'connections per second.'.format(', '.join(
            '{0}: {1}/s'.format(_size_label(entry), entry['churn']['rate_per_second']) for entry in sizes)))
    add('')
    add('![time per call vs sockets]({0})'.format(png_rel))
    add('')

    add('## Summary: one call, process start included, median ms (churn running)')
    add('')
    add('| method | route | ' + ' | '.join('{0} ({1} sockets)'.format(_size_label(entry), entry['sockets_counted'])
                                         for entry in sizes) + ' |')
    add('|---|---|' + '---|' * len(sizes))
    for method_id, route in (('ours_all', 'agent'), ('ours_all', 'bare'), ('ours_one', 'agent'), ('ours_one', 'bare'),
                             ('ports', 'agent'), ('ports', 'bare'), ('ports_floor', 'bare'),
                             ('full_all', 'agent'), ('full_all', 'bare'), ('minority', 'agent'), ('minority', 'bare'),
                             ('ss_all', 'agent'), ('ss_all', 'bare'), ('native', 'agent'), ('recipe', 'agent'),
                             ('recipe', 'bare')):
        if method_id not in labels:
            continue
        add('| {0} | {1} | {2} |'.format(labels[method_id], 'via zabbix_get' if route == 'agent' else 'bare',
                                         ' | '.join(_fmt_ms(_timing(entry, method_id, route)['median'])
                                                    if _timing(entry, method_id, route) else '-' for entry in sizes)))
    add('')
    add('"ours" is the agent-facing script (`tcp_status.py all` / `tcp_status.py ESTABLISHED`) with its default '
        'backend: for these whole-host counts, the counters path. "-": not measured at that size (the /proc '
        'and netstat methods take seconds per call past {0} sockets).'.format(
            max([m['max'] for m in results['methods'] if m['max']] or [0])))
    add('')

    add('## Targets (issues 13 and 10), ratios within this run')
    add('')
    rows = _target_rows(results)
    if rows:
        add('| target | measured | met |')
        add('|---|---|---|')
        for row in rows:
            add(row)
    else:
        add('(no target size in this run)')
    add('')

    if any('ports' in entry['timings'] for entry in sizes):
        _ports_section(results, add)
    add('## The derived path, the full dump and ss on the same load')
    add('')
    add('At every size, with the churn running, {0} rounds of: `ss -tan` tallied, the counters path '
        '(`count_states()`, auto), the full dump (`backend=netlink`), `ss -tan` again; then {1} auto calls, '
        'counting which path answered (the counters path falls back to the full dump when its cross-check '
        'fails). A difference is explained by churn when it is at most the number of sockets that changed state '
        'in the round: 2 x the connections opened (snmp ActiveOpens + PassiveOpens) + the TIME_WAIT count\'s '
        'move. Then the churn is paused and rounds are repeated until ss reads the same before and after '
        '(the churn\'s TIME_WAIT expires for up to 60 s): there the three must be equal, state by state.'.format(
            len(sizes[0]['paths_churn']['rounds']), sizes[0]['paths_churn']['auto_calls']))
    add('')
    add('| size | churn: largest difference per round (bound) | explained | auto answered by | '
        'check off/bound per call (max) | paused: derived = full = ss | ESTABLISHED (paused) |')
    add('|---|---|---|---|---|---|---|')
    for entry in sizes:
        churn = entry['paths_churn']
        paused = entry['paths_paused']
        offs = churn['check_off_churn']
        add('| {0} | {1} | {2} | {3} | {4} | {5} | {6} |'.format(
            _size_label(entry),
            ', '.join('{0}{1} ({2})'.format(item['largest'], _largest_state(item), item['churn_bound'])
                      for item in churn['rounds']),
            _yes(churn['explained']),
            ', '.join('{0} {1}/{2}'.format(name, count, churn['auto_calls'])
                      for name, count in sorted(churn['auto_backends'].items())),
            '{0}/{1}'.format(max(off for off, _bound in offs), max(bound for _off, bound in offs)) if offs else '-',
            '{0} ({1} attempt(s), {2} s)'.format(_yes(paused['exact']), paused['attempts'],
                                                 paused['waited_seconds']),
            paused['ss_before']['ESTABLISHED']))
    add('')
    add('The largest difference under churn is over every state and all three pairs (derived-full, derived-ss, '
        'full-ss; against ss, the distance outside the range of its two readings), with the state it was in. A '
        'large TIME_WAIT difference at a large size is the load generator\'s own TIME_WAIT batch expiring (60 s '
        'after it was built) during that round: the bound counts it through the TIME_WAIT move.')
    add('')

    header = '| method | route | ' + ' | '.join(
        '{0} ({1} sockets)'.format(_size_label(entry), entry['sockets_counted']) for entry in sizes) + ' |'
    add('## Wall time per call, ms')
    add('')
    add('Median [min-max] of {0} calls per cell (one-state rows ask for {1}); process start included; '
        '"via zabbix_get" is the whole `zabbix_get` run against a private `zabbix_agentd` (Timeout=30) '
        'that runs the method; churn running. "counts agree": the check against ss below, per size.'.format(
            ' / '.join(str(entry['timings']['ours_all']['bare']['n']) for entry in sizes),
            results['timed_state']))
    add('')
    add(header[:-1] + '| counts agree |')
    add('|---|---|' + '---|' * len(sizes) + '---|')
    for method in results['methods']:
        for route, route_label in (('agent', 'via zabbix_get'), ('bare', 'bare command')):
            if not any(_timing(entry, method['id'], route) for entry in sizes):
                continue
            cells = []
            for entry in sizes:
                timing = _timing(entry, method['id'], route)
                cells.append('{0} [{1}-{2}]'.format(_fmt_ms(timing['median']), _fmt_ms(timing['min']),
                                                     _fmt_ms(timing['max'])) if timing else '-')
            agree = [entry['correctness']['methods'].get('{0}/{1}'.format(method['id'], route))
                     for entry in sizes]
            cells.append('/'.join('-' if item is None else ('yes' if item['agreed'] else '**no**')
                                  for item in agree))
            add('| {0} | {1} | {2} |'.format(method['label'], route_label, ' | '.join(cells)))
    add('| for scale: `python3 -S -c "import _socket, _struct, errno, time"` | bare command | {0} | |'.format(
        ' | '.join('{0} [{1}-{2}]'.format(_fmt_ms(entry['python_start']['median']),
                                          _fmt_ms(entry['python_start']['min']),
                                          _fmt_ms(entry['python_start']['max'])) for entry in sizes)))
    add('')

    if results.get('startup'):
        add('## Start-up by interpreter, ms (median, before the load: an empty namespace)')
        add('')
        add('What the counter imported before this change (the Python wrappers `socket` and `struct`, and `os`) '
            'against what it imports now (the C modules under them), and one whole call of the script '
            '(`python -S tcp_status.py LISTEN`: interpreter start, compiling the script, which a script run as '
            '`__main__` does on every call, imports, one tiny dump).')
        add('')
        add('| interpreter | `-S -c pass` | `import errno, os, socket, struct, time` | '
            '`import _socket, _struct, errno, time` | the script, one call |')
        add('|---|---|---|---|---|')
        for name, item in sorted(results['startup'].items()):
            timings = item['timings']
            add('| {0} (`{1}`) | {2} |'.format(name, item['path'], ' | '.join(
                _fmt_ms(timings[label]['median']) for label in ('bare', 'old_imports', 'new_imports', 'script'))))
        add('')

    with_interval = [entry for entry in sizes if entry['interval']]
    if with_interval:
        add('## Cost per monitoring interval: all 11 states, via zabbix_get, ms')
        add('')
        add('One call of an all-states method against 11 calls (one per state) of a one-state method. '
            'Medians; the 11-call rows are measured as 11 real `zabbix_get` runs in a row, except the recipe, '
            'whose script only knows 3 states: its row is 11 x its one-state median.')
        add('')
        add('| method | calls | ' + ' | '.join(_size_label(entry) for entry in with_interval) + ' |')
        add('|---|---|' + '---|' * len(with_interval))
        order = ['ours_all', 'proc_all', 'ss_all', 'ours_one', 'native', 'ss_one', 'recipe']
        for method_id in [key for key in order if key in with_interval[0]['interval']]:
            first = with_interval[0]['interval'][method_id]
            add('| {0} | {1}{2} | {3} |'.format(
                labels[method_id], first['calls'], '' if first['measured'] else ' (computed)',
                ' | '.join(_fmt_ms(entry['interval'][method_id]['median']) for entry in with_interval)))
        add('')

    add('## Peak memory of our collector (max RSS of the process, bare command)')
    add('')
    add('Measured with GNU time (`%M`), largest of {0} run(s). For scale: `/usr/bin/python3 -S -c "import '
        '_socket, _struct, errno, time"` alone peaks at {1:.1f} MiB here.'.format(
            results['memory_runs'], results['python_start_rss_kib'] / 1024.0))
    add('')
    add('| method | ' + ' | '.join(_size_label(entry) for entry in sizes) + ' |')
    add('|---|' + '---|' * len(sizes))
    for method_id in ('ours_one', 'ours_all', 'full_all', 'ports', 'proc_one', 'proc_all'):
        add('| {0} | {1} |'.format(labels[method_id], ' | '.join(
            '{0:.1f} MiB'.format(entry['max_rss_kib'][method_id] / 1024.0) if method_id in entry['max_rss_kib']
            else '-' for entry in sizes)))
    add('')

    add('## CPU per call, bare command: user + sys ms (median)')
    add('')
    add('User time is the interpreter or the tools in the pipeline; sys time is the kernel producing the '
        'socket list (a netlink dump, or the text of `/proc/net/tcp{,6}`).')
    add('')
    add('| method | ' + ' | '.join(_size_label(entry) for entry in sizes) + ' |')
    add('|---|' + '---|' * len(sizes))
    for method in results['methods']:
        if not any(method['id'] in entry['cpu_seconds'] for entry in sizes):
            continue
        add('| {0} | {1} |'.format(method['label'], ' | '.join(
            '{0} + {1}'.format(_fmt_ms(entry['cpu_seconds'][method['id']]['user']),
                               _fmt_ms(entry['cpu_seconds'][method['id']]['sys']))
            if method['id'] in entry['cpu_seconds'] else '-' for entry in sizes)))
    add('')

    add('## Correctness: every method\'s counts against ss (churn paused)')
    add('')
    add('With the churn paused, every method is asked for ESTABLISHED, TIME_WAIT, LISTEN, CLOSE_WAIT and '
        'FIN_WAIT2 (the recipe knows the first three, the counters floor row every state but ESTABLISHED), bare '
        'and through the agent, one method after the other; `ss -tan` is tallied right before and right after '
        'each method as the reference. The per-port row is held to ss port by port, on every port it lists '
        '(each must be a listening port, and it must list every listening port up to its bound of 100), its '
        'floor row to the sockets on all listening ports. Through the agent, ESTABLISHED is reduced by 2 (the '
        '`zabbix_get` connection itself, both ends), by 1 in the per-port rows (its server end, on the agent\'s '
        'listening port). A count agrees when it lies between its two references, give or take 2 + 0.1% '
        '(short-lived connections), plus one TIME_WAIT per call in that window (every agent exchange leaves a '
        'TIME_WAIT while older ones expire).')
    add('')
    add('| sockets | load generator built | ss before the first method | ss after the last | '
        'methods agreeing | largest deviation |')
    add('|---|---|---|---|---|---|')
    for entry in sizes:
        correctness = entry['correctness']
        worst = max(((abs(dev), name, state) for name, item in correctness['methods'].items()
                     for state, dev in item['deviation'].items()), default=(0, '-', '-'))
        add('| {0} | {1} | {2} | {3} | {4}/{5} | {6} |'.format(
            _size_label(entry),
            ', '.join('{0} {1}'.format(s, entry['loadgen']['expected'][s]) for s in SHOWN),
            ', '.join('{0} {1}'.format(s, correctness['reference_before'][s]) for s in SHOWN),
            ', '.join('{0} {1}'.format(s, correctness['reference_after'][s]) for s in SHOWN),
            sum(1 for item in correctness['methods'].values() if item['agreed']),
            len(correctness['methods']),
            '{0} ({1} {2})'.format(worst[0], worst[1], worst[2]) if worst[0] else '0'))
    add('')

    add('## How it is measured')
    add('')
    add('- Load: `bench/loadgen.py` holds real sockets on 127.0.0.x (several addresses) and ::1 in worker '
        'processes (this VM caps open files at 20,000 per process, so 1M sockets take ~55 workers): '
        'ESTABLISHED pairs (5% on ::1), 5% TIME_WAIT, 2.5% CLOSE_WAIT + 2.5% FIN_WAIT2 (half-closed pairs), '
        '8-64 LISTEN (2 per worker at least). Past ~20k client sockets it widens `net.ipv4.ip_local_port_range` '
        '(in the namespace) and restores it; every socket is reset (SO_LINGER 0) at the end.')
    add('- Churn: `bench/churn.py` (see above), paused with SIGSTOP for the exact comparison and the check '
        'against ss.')
    add('- The counter is installed as the role installs it: the role\'s file with the shebang '
        '`#!/usr/bin/python3 -S` and `NETLINK_TIMEOUT` set to the agent\'s Timeout minus 0.5 s, at `{0}` '
        'during the run. The agent\'s UserParameters, as run here (the role\'s own file rendered by '
        '`zabbix/role_items.py`, then the benchmark\'s keys):'.format(results['script']))
    add('')
    add('```')
    for line in results['userparameters']:
        add(line)
    add('```')
    add('')
    add('  `tcp.recipe` is the recipe\'s script verbatim (`bench/methods/tcp_connections.sh`, curly quotes '
        'straightened) with the recipe\'s own UserParameter line; `tcp.ss` is `bench/methods/tcp_ss.sh` '
        '(`ss -Htan state X | wc -l`, or one `ss -Htan | awk` tally for `all`); `tcp.status.backend[B,...]` '
        'runs the installed script with its `--backend=B` option (netlink: the full dump; proc: '
        '/proc/net/tcp{,6}). The counters floor row is `bench/methods/minority_dump.py`, which compiles the '
        'installed script as every run of it does and calls its `count_states()` for every state but ESTABLISHED '
        'with the netlink backend: the counters path minus its kernel counter reads and check. The per-port '
        'floor row is `bench/methods/ports_floor.py`: the per-port call\'s two dumps (the listeners, then every '
        'other state on their ports, filtered by the kernel) tallied by state. The native item is answered '
        'inside the agent (no bare-command row).')
    add('- Timing: wall clock around the whole process (fork/exec and interpreter start included), calls '
        'interleaved round robin across methods after one warm-up round; CPU user/sys times from '
        '`wait4()` of the bare command; memory from GNU time.')
    add('')
    with open(path, 'w') as handle:
        handle.write('\n'.join(lines))
