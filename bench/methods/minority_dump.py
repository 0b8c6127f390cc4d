# -*- coding: utf-8 -*-
"""The floor under the counters backend: a dump of every state except ESTABLISHED and nothing else.

    python3 -S minority_dump.py SCRIPT       (SCRIPT: the counter as installed, e.g. /etc/zabbix/tcp_status.py)

Compiles SCRIPT's source as every run of the installed script does (installed_counter.py), then asks its own
count_states() for every state but ESTABLISHED with the netlink backend (no kernel counters, no cross-check) and
prints the JSON object. The counters backend does this dump plus two reads of
/proc/net/sockstat{,6} and /proc/net/snmp; the difference between the two is what the check costs.
"""

import sys

from installed_counter import load


def main(argv):
    counter = load(argv, 'minority_dump.py SCRIPT')
    states = [state for state in counter['STATES'] if state != 'ESTABLISHED']
    result = counter['count_states'](states=states, backend='netlink')
    sys.stdout.write(counter['counts_json'](result['counts']) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
