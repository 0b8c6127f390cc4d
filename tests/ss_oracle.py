# -*- coding: utf-8 -*-
"""The tests' independent oracle: what `ss` (iproute2) lists, in the counter's netstat state names.

Shared by the live tests (tests/integration), the Zabbix end-to-end test, the benchmark smoke test and
tools/capture_netlink.py. It never imports the counter, so that it stays an independent reference.
"""

import subprocess

SS_STATES = {'ESTAB': 'ESTABLISHED', 'SYN-SENT': 'SYN_SENT', 'SYN-RECV': 'SYN_RECV',
             'FIN-WAIT-1': 'FIN_WAIT1', 'FIN-WAIT-2': 'FIN_WAIT2', 'TIME-WAIT': 'TIME_WAIT',
             'UNCONN': 'CLOSE', 'CLOSE-WAIT': 'CLOSE_WAIT', 'LAST-ACK': 'LAST_ACK', 'LISTEN': 'LISTEN',
             'CLOSING': 'CLOSING'}


def ss_sockets(family='all'):
    """Every TCP socket as (family, STATE, local port, remote port), from `ss -tanH` (iproute2)."""
    rows = []
    for name, flag in (('ipv4', '-4'), ('ipv6', '-6')):
        if family not in ('all', name):
            continue
        out = subprocess.check_output(['ss', '-tanH', flag]).decode()
        for line in out.splitlines():
            fields = line.split()
            rport = fields[4].rpartition(':')[2]
            rows.append((name, SS_STATES[fields[0]], int(fields[3].rpartition(':')[2]),
                         0 if rport == '*' else int(rport)))
    return rows


def ss_state_counts():
    """{STATE: n} for the states that have sockets, both families."""
    counts = {}
    for _family, state, _lport, _rport in ss_sockets():
        counts[state] = counts.get(state, 0) + 1
    return counts
