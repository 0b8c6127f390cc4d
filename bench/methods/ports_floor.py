# -*- coding: utf-8 -*-
"""The floor under the per-port call: the two dumps it asks the kernel for, tallied by state, not by port.

    python3 -S ports_floor.py SCRIPT       (SCRIPT: the counter as installed, e.g. /etc/zabbix/tcp_status.py)

Compiles SCRIPT's source as every run of the installed script does (installed_counter.py), then makes the per-port
mode's requests with its own functions: a dump of the LISTEN sockets, then a dump of every other state on their
ports, filtered by the kernel (the counter's own listening_request()). It prints the sockets whose local port is a listening port as
one JSON object of states (the sum of the per-port answer's entries), without the per-port tally, the accept
queues, the /etc/services names, /proc/net/netstat or the answer's JSON: the difference to the per-port call is
what those cost; the rest is the kernel filling one message per socket of those ports, which no kernel counter
replaces.
"""

import sys

from installed_counter import load


def main(argv):
    counter = load(argv, 'ports_floor.py SCRIPT')
    dump, state_mask, listen = counter['_netlink_dump'], counter['state_mask'], counter['LISTEN_CODE']
    families = ('ipv4', 'ipv6')
    deadline = counter['_clock']() + counter['NETLINK_TIMEOUT']
    listeners = counter['PortTally']()
    dump(families, state_mask([listen]), deadline, b'', ports=listeners)
    _listening, mask, bytecode = counter['listening_request'](listeners.queues)
    others, _full = dump(families, mask, deadline, bytecode)
    counts = dict((name, others[code]) for code, name in counter['STATE_CODES'])
    counts['SYN_RECV'] += others[counter['NEW_SYN_RECV']]
    counts['LISTEN'] = sum(listeners.states('local', port)['LISTEN'] for port in listeners.queues)
    sys.stdout.write(counter['counts_json'](counts) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
