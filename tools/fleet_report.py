#!/usr/bin/env python3
"""Fleet report: one row per host with every TCP state, from the tcp_status module's results.

    fleet_report.py RESULTS.json [--sort STATE] [--out-dir DIR] [--ports N]

RESULTS.json maps each inventory host to what `tcp_status` registered on it (fleet-report.yml writes it): a result
with `counts`, or an unreachable / failed result, or {} for a host that was never reached. Writes
DIR/fleet-report.csv and DIR/fleet-report.json and prints a table. With --ports N (the module having run with
per_port=true), also the N busiest listening ports of each host (most sockets besides the listeners): a second
table, DIR/fleet-report-ports.csv, and `ports` in each row of the JSON. Rows are sorted by STATE (default TIME_WAIT),
highest first; hosts without counts (unreachable, failed, not reached) come last, listed with the reason, never
dropped. Exit code 0 even when hosts are missing: the report is the product; the table says what is missing.
"""

from __future__ import print_function

import argparse
import csv
import importlib.util
import json
import os
import sys
import time

# The counter's own list of states (kernel order) and state names, loaded from the role by path.
_COUNTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'roles', 'zabbix_tcp_status',
                        'module_utils', 'tcp_status_counter.py')
_spec = importlib.util.spec_from_file_location('tcp_status_counter', _COUNTER)
_counter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_counter)
STATES, ArgumentError, normalize_state = _counter.STATES, _counter.ArgumentError, _counter.normalize_state


def busiest_ports(result, limit):
    """The first ``limit`` ports of the module's per-port breakdown (busiest first, as the counter orders them):
    [{port, service, sockets (besides the listeners), queue, backlog, states}]."""
    ports = []
    for entry in (result.get('per_port') or {}).get('ports', [])[:limit]:
        states = dict((state, int(entry['states'].get(state, 0))) for state in STATES)
        ports.append({'port': entry['port'], 'service': entry.get('service', ''), 'queue': entry.get('queue'),
                      'backlog': entry.get('backlog'), 'sockets': sum(states.values()) - states['LISTEN'],
                      'states': states})
    return ports


def classify(host, result, ports=0):
    """One row: host, status (ok, unreachable, failed, not reached), backend, total, counts, error, and with
    ``ports`` the host's busiest ports."""
    row = {'host': host, 'status': 'ok', 'backend': '', 'total': None, 'counts': {}, 'error': '', 'ports': []}
    if not result:
        row.update(status='not reached', error='no result (host not in the play, or removed from it earlier)')
    elif result.get('unreachable'):
        row.update(status='unreachable', error=result.get('msg', ''))
    elif result.get('failed') or 'counts' not in result:
        row.update(status='failed', error=result.get('msg', '') or result.get('module_stderr', ''))
    else:
        row.update(backend=result.get('backend', ''), total=result.get('total'),
                   counts=dict((state, int(result['counts'].get(state, 0))) for state in STATES),
                   ports=busiest_ports(result, ports))
    row['error'] = ' '.join(str(row['error']).split())[:300]
    return row


def sort_rows(rows, state):
    counted = sorted((r for r in rows if r['counts']), key=lambda r: (-r['counts'][state], r['host']))
    missing = sorted((r for r in rows if not r['counts']), key=lambda r: (r['status'], r['host']))
    return counted + missing


def table(rows, state):
    short = {'ESTABLISHED': 'ESTAB', 'TIME_WAIT': 'T_WAIT', 'CLOSE_WAIT': 'C_WAIT', 'FIN_WAIT1': 'FIN_W1',
             'FIN_WAIT2': 'FIN_W2', 'SYN_SENT': 'SYN_S', 'SYN_RECV': 'SYN_R', 'LAST_ACK': 'L_ACK',
             'CLOSING': 'CLSING', 'LISTEN': 'LISTEN', 'CLOSE': 'CLOSE'}
    heads = ['HOST'] + [short[s] + ('*' if s == state else '') for s in STATES] + ['TOTAL', 'BACKEND']
    lines = []
    for r in rows:
        if r['counts']:
            lines.append([r['host']] + [str(r['counts'][s]) for s in STATES] + [str(r['total']), r['backend']])
        else:
            lines.append([r['host'], '{0}: {1}'.format(r['status'].upper(), r['error'] or '-')])
    widths = [max([len(heads[i])] + [len(line[i]) for line in lines if len(line) > 2]) for i in range(len(heads))]
    out = ['  '.join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
    for line in lines:
        if len(line) > 2:
            out.append('  '.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))
        else:
            out.append(line[0].ljust(widths[0]) + '  ' + line[1])
    return '\n'.join(out)


PORT_COLUMNS = ('ESTABLISHED', 'SYN_RECV', 'TIME_WAIT', 'CLOSE_WAIT')


def ports_table(rows):
    """The busiest ports of each counted host, one line per port."""
    heads = ['HOST', 'PORT', 'SERVICE', 'SOCKETS', 'ESTAB', 'SYN_R', 'T_WAIT', 'C_WAIT', 'QUEUE']
    lines = []
    for r in rows:
        for p in r['ports']:
            queue = '{0}/{1}'.format(p['queue'], '?' if p['backlog'] is None else p['backlog'])
            lines.append([r['host'], str(p['port']), p['service'] or '-', str(p['sockets'])]
                         + [str(p['states'][s]) for s in PORT_COLUMNS] + [queue])
    widths = [max([len(heads[i])] + [len(line[i]) for line in lines]) for i in range(len(heads))]
    return '\n'.join('  '.join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in [heads] + lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('results')
    parser.add_argument('--sort', default='TIME_WAIT', help='state to sort by, highest first (default TIME_WAIT)')
    parser.add_argument('--out-dir', default='.')
    parser.add_argument('--ports', type=int, default=0,
                        help='also list the N busiest listening ports of each host (needs per_port=true results)')
    args = parser.parse_args(argv)
    if args.ports < 0:
        parser.error('--ports is a number of ports, 0 (none) or more')
    try:
        state = normalize_state(args.sort)
    except ArgumentError as exc:
        parser.error(str(exc))
    with open(args.results) as fh:
        results = json.load(fh)
    rows = sort_rows([classify(host, result, args.ports) for host, result in results.items()], state)
    if not os.path.isdir(args.out_dir):
        os.makedirs(args.out_dir)
    csv_path = os.path.join(args.out_dir, 'fleet-report.csv')
    with open(csv_path, 'w') as fh:
        writer = csv.writer(fh, lineterminator='\n')
        writer.writerow(['host', 'status'] + list(STATES) + ['total', 'backend', 'error'])
        for r in rows:
            writer.writerow([r['host'], r['status']] + [r['counts'].get(s, '') for s in STATES]
                            + ['' if r['total'] is None else r['total'], r['backend'], r['error']])
    if args.ports:
        ports_path = os.path.join(args.out_dir, 'fleet-report-ports.csv')
        with open(ports_path, 'w') as fh:
            writer = csv.writer(fh, lineterminator='\n')
            writer.writerow(['host', 'port', 'service', 'sockets'] + list(STATES) + ['queue', 'backlog'])
            for r in rows:
                for p in r['ports']:
                    writer.writerow([r['host'], p['port'], p['service'], p['sockets']]
                                    + [p['states'][s] for s in STATES]
                                    + [p['queue'], '' if p['backlog'] is None else p['backlog']])
    json_path = os.path.join(args.out_dir, 'fleet-report.json')
    summary = {
        'generated': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'sorted_by': state,
        'hosts': len(rows),
        'counted': sum(1 for r in rows if r['counts']),
        'missing': dict((r['host'], r['status']) for r in rows if not r['counts']),
        'fleet_totals': dict((s, sum(r['counts'].get(s, 0) for r in rows)) for s in STATES),
        'rows': rows,
    }
    with open(json_path, 'w') as fh:
        json.dump(summary, fh, indent=2)
        fh.write('\n')
    print(table(rows, state))
    if args.ports:
        print('')
        print('The {0} busiest listening ports of each host (sockets besides the listeners; QUEUE is the accept '
              'queue of the fullest listener, length/backlog):'.format(args.ports))
        print(ports_table(rows))
    print('{0} hosts, {1} counted, {2} missing; sorted by {3}; wrote {4} and {5}'.format(
        summary['hosts'], summary['counted'], len(summary['missing']), state, csv_path, json_path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
