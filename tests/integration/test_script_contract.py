# -*- coding: utf-8 -*-
"""The agent's script contract, run as the agent runs it (a new process, no shell), under Python 2.7
(CentOS 7's python), 3.6 (CentOS 7's python3) and the venv's 3.11:

    tcp_status.py STATE|all [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]]
"""

import json
import re
import subprocess

import pytest

from tcp_live import COUNTER, PYTHONS, STATES, agree_despite_churn, settle, ss_counts, within, zero_counts

SS_SPELLINGS = ('estab', 'syn-sent', 'syn-recv', 'fin-wait-1', 'fin-wait-2', 'time-wait', 'closed',
                'close-wait', 'last-ack', 'listen', 'listening', 'closing')
SEED_KEYS = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN')
# The seed recipe's command, verbatim (with ASCII quotes), as the oracle of what the old items meant.
RECIPE = "netstat -an | awk '/^tcp/ {++S[$NF]} END {for(a in S) print a, S[a]}' | grep -w %s | cut -d' ' -f2"

pytestmark = pytest.mark.parametrize('python', sorted(PYTHONS), ids=lambda version: 'py' + version)


def script(python, *args):
    return subprocess.run([PYTHONS[python], COUNTER] + list(args), capture_output=True, text=True, timeout=30)


def recipe(state, netns=False):
    cmd = ['sh', '-c', RECIPE % state]
    if netns:
        cmd = ['unshare', '-n'] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout


def integer(proc, what):
    assert proc.returncode == 0 and proc.stderr == '', '{0}: rc={1} stderr={2!r}'.format(what, proc.returncode,
                                                                                        proc.stderr)
    assert re.match(r'^(0|[1-9][0-9]*)\n$', proc.stdout), '{0}: stdout {1!r} is not one integer'.format(
        what, proc.stdout)
    return int(proc.stdout)


@pytest.fixture
def scene(farm):
    v4 = farm.listener('ipv4')
    v6 = farm.listener('ipv6')
    for _ in range(3):
        farm.pair(v4)
    farm.pair(v6, client='ipv6')
    for _ in range(2):
        farm.time_wait(v4)
    farm.time_wait(v6, client='ipv6')
    farm.close_wait(v4)
    want = zero_counts()
    want.update(LISTEN=1, ESTABLISHED=3, CLOSE_WAIT=1)
    assert settle(want, local=(v4,)) == want
    return {'v4': v4, 'v6': v6}


def alternate(text, upper_first):
    return ''.join(char.upper() if (index % 2 == 0) == upper_first else char.lower()
                   for index, char in enumerate(text))


def test_every_state_every_spelling_prints_one_integer(python, scene):
    """Each netstat and ss name once, in mixed case (the unit tests check every case form in-process)."""
    spellings = [alternate(state, True) for state in STATES] + [alternate(name, False) for name in SS_SPELLINGS]
    assert 'EsTaBlIsHeD' in spellings and 'tImE-WaIt' in spellings
    for spelling in spellings:
        integer(script(python, spelling), spelling)


def test_seed_keys_mean_what_the_netstat_recipe_meant(python, scene):
    def compare():
        off = []
        for state in SEED_KEYS:
            before = recipe(state)
            got = integer(script(python, state), state)
            after = recipe(state)
            assert before.strip() and after.strip(), 'netstat sees no {0} although the test holds some'.format(state)
            if not within(got, int(before), int(after)):
                off.append('{0}: script {1}, netstat {2} then {3}'.format(state, got, before.strip(), after.strip()))
        return off
    agree_despite_churn(compare)


def test_seed_keys_print_0_where_netstat_prints_nothing(python):
    """In an empty network namespace the recipe printed an empty line; the script prints 0."""
    for state in SEED_KEYS:
        assert recipe(state, netns=True) == ''
        proc = subprocess.run(['unshare', '-n', PYTHONS[python], COUNTER, state], capture_output=True, text=True,
                              timeout=30)
        assert integer(proc, state) == 0
    proc = subprocess.run(['unshare', '-n', PYTHONS[python], COUNTER, 'all'], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and json.loads(proc.stdout) == zero_counts()


def test_all_prints_json_of_every_state(python, scene):
    def compare():
        before = ss_counts()
        proc = script(python, 'all')
        after = ss_counts()
        assert proc.returncode == 0 and proc.stderr == ''
        assert proc.stdout.endswith('\n') and proc.stdout.count('\n') == 1
        data = json.loads(proc.stdout)
        assert sorted(data) == sorted(STATES)
        assert all(type(value) is int for value in data.values())
        return ['{0}: {1}, ss {2} then {3}'.format(state, data[state], before[state], after[state])
                for state in STATES if not within(data[state], before[state], after[state])]
    agree_despite_churn(compare)
    for spelling in ('ALL', 'All', 'all'):
        assert sorted(json.loads(script(python, spelling).stdout)) == sorted(STATES)


def test_port_and_family_arguments(python, scene):
    v4, v6 = str(scene['v4']), str(scene['v6'])
    cases = [
        (('ESTABLISHED', v4), 3),
        (('established', v4, '', 'ipv4'), 3),
        (('ESTABLISHED', v4, '', 'ipv6'), 0),
        (('LISTEN', v4 + ',' + v6), 2),
        (('LISTEN', '{0}-{0}'.format(v6), '', 'IPv6'), 1),
        (('LISTEN', v6, '', 'ipv4'), 0),
        (('ESTABLISHED', '', v4), 3),
        (('TIME_WAIT', '', v4), 2),
        (('time-wait', '', v4 + ',' + v6), 3),
        (('TIME_WAIT', '', v6, 'ipv6'), 1),
        (('FIN_WAIT2', '', v4, 'all'), 1),
        (('CLOSE_WAIT', v4, '', ''), 1),
        (('ESTABLISHED', v4, v4), 0),
    ]
    for args, want in cases:
        assert integer(script(python, *args), args) == want, args
    data = json.loads(script(python, 'all', v4).stdout)
    want = zero_counts()
    want.update(LISTEN=1, ESTABLISHED=3, CLOSE_WAIT=1)
    assert data == want
    data = json.loads(script(python, 'all', '', v4, 'ipv4').stdout)
    want = zero_counts()
    want.update(ESTABLISHED=3, TIME_WAIT=2, FIN_WAIT2=1)
    assert data == want


def test_trailing_empty_arguments_are_ignored(python, scene):
    """The UserParameter passes "$1" "$2" "$3" "$4" whatever the key holds."""
    v4 = str(scene['v4'])
    assert integer(script(python, 'LISTEN', v4, '', ''), 'LISTEN') == 1
    assert integer(script(python, 'ESTABLISHED', v4, '', '', ''), 'ESTABLISHED') == 3  # all of $1-$4 empty but 1
    data = json.loads(script(python, 'all', v4, '', '').stdout)
    assert data['LISTEN'] == 1 and data['ESTABLISHED'] == 3


BAD = [
    # (arguments, text the one stderr line must hold)
    (('BOGUS',), "'BOGUS'"),
    (('',), 'STATE'),
    ((), 'STATE'),
    (('', '80'), "''"),
    (('TIME WAIT',), "'TIME WAIT'"),
    (('LISTEN;id',), "'LISTEN;id'"),
    (('$(id)',), "'$(id)'"),
    (('LISTEN', 'abc'), "'abc'"),
    (('LISTEN', '80,x'), "'x'"),
    (('LISTEN', '', 'x1'), "'x1'"),
    (('LISTEN', '70000'), "'70000'"),
    (('LISTEN', '', '65536'), "'65536'"),
    (('LISTEN', '-1'), "'-1'"),
    (('LISTEN', '100-80'), "'100-80'"),
    (('LISTEN', '80-'), "'80-'"),
    (('LISTEN', '', '', 'ipv5'), "'ipv5'"),
    (('all', '', '', 'inet6'), "'inet6'"),
    (('all', 'http'), "'http'"),
    (('LISTEN', '1', '2', 'ipv4', 'extra'), "'extra'"),
    (('all', '', '', '', 'x', 'y'), "'x'"),
]


@pytest.mark.parametrize('args,names', BAD, ids=[repr(args) for args, _names in BAD])
def test_bad_input_fails_with_one_clear_line(python, args, names):
    proc = script(python, *args)
    assert proc.returncode == 2, 'rc={0} for {1}'.format(proc.returncode, args)
    assert proc.stdout == '', 'stdout {0!r} for {1}'.format(proc.stdout, args)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith('\n'), 'stderr {0!r} is not one line'.format(proc.stderr)
    assert names in lines[0], 'stderr {0!r} does not name {1}'.format(lines[0], names)
    assert 'Traceback' not in proc.stderr
