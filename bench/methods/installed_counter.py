# -*- coding: utf-8 -*-
"""The floors' way in to the counter as installed: its source compiled here, as every run of the installed script
compiles it (a script run as __main__ has no .pyc), into a namespace of its names."""

import sys


def load(argv, usage):
    """The namespace of the script named by argv (one argument: its path); exits 2 with ``usage`` otherwise."""
    if len(argv) != 1:
        sys.stderr.write('usage: {0}\n'.format(usage))
        sys.exit(2)
    with open(argv[0]) as handle:
        source = handle.read()
    counter = {'__name__': 'tcp_status_counter'}
    exec(compile(source, argv[0], 'exec'), counter)
    return counter
