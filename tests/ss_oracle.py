# -*- coding: utf-8 -*-
"""The tests' independent oracle: what `ss` (iproute2) lists, in the counter's netstat state names.

Shared by the live tests (tests/integration), the Zabbix end-to-end test, the benchmark smoke test and
tests/fixtures/capture_netlink.py. It never imports the counter, so that it stays an independent reference.
"""

import subprocess

SS_STATES = {'ESTAB': 'ESTABLISHED', 'SYN-SENT': 'SYN_SENT', 'SYN-RECV': 'SYN_RECV',
             'FIN-WAIT-1': 'FIN_WAIT1', 'FIN-WAIT-2': 'FIN_WAIT2', 'TIME-WAIT': 'TIME_WAIT',
             'UNCONN': 'CLOSE', 'CLOSE-WAIT': 'CLOSE_WAIT', 'LAST-ACK': 'LAST_ACK', 'LISTEN': 'LISTEN',
             'CLOSING': 'CLOSING'}
# The eleven states in the kernel's order (include/net/tcp_states.h), in netstat's names: the tests' one list.
STATES = tuple(SS_STATES.values())


def parse_ss(text, family='all'):
    """(family, STATE, local port, remote port) for each line of `ss -tanH` output (any host's: the molecule
    verifier passes what it ran through testinfra)."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        rport = fields[4].rpartition(':')[2]
        rows.append((family, SS_STATES[fields[0]], int(fields[3].rpartition(':')[2]),
                     0 if rport == '*' else int(rport)))
    return rows


def state_counts(rows):
    """{STATE: n} for the states that have sockets among rows."""
    counts = {}
    for _family, state, _lport, _rport in rows:
        counts[state] = counts.get(state, 0) + 1
    return counts


def ss_sockets(family='all'):
    """Every TCP socket as (family, STATE, local port, remote port), from `ss -tanH` (iproute2)."""
    rows = []
    for name, flag in (('ipv4', '-4'), ('ipv6', '-6')):
        if family not in ('all', name):
            continue
        rows += parse_ss(subprocess.check_output(['ss', '-tanH', flag]).decode(), name)
    return rows


def ss_state_counts():
    """{STATE: n} for the states that have sockets, both families."""
    return state_counts(ss_sockets())
