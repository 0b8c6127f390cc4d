# -*- coding: utf-8 -*-
"""Run the repository's counter with a forced backend (benchmark methods 3, /proc variant).

    counter_backend.py BACKEND STATE|all     (BACKEND: netlink, proc, psutil, auto)

Prints what the agent's script prints (one integer, or the JSON object for
``all``), using the counter's own count_states() and counts_json(): nothing of
the counting is copied here. Errors: one line on stderr, exit 1 (2 for usage).
"""

from __future__ import absolute_import, division, print_function

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                                'roles', 'zabbix_tcp_status', 'module_utils'))

import tcp_status_counter as counter  # noqa: E402  (after the path set-up above)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write('usage: counter_backend.py BACKEND STATE|all\n')
        return 2
    backend, target = argv
    want_all = target.lower() == 'all'
    try:
        result = counter.count_states(states=None if want_all else [target], backend=backend)
    except counter.TcpStatusError as exc:
        sys.stderr.write('counter_backend: {0}\n'.format(exc))
        return 1
    if want_all:
        sys.stdout.write(counter.counts_json(result['counts']) + '\n')
    else:
        sys.stdout.write('{0:d}\n'.format(result['counts'][counter.normalize_state(target)]))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
