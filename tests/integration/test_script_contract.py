# -*- coding: utf-8 -*-
"""The agent's script contract, run as the agent runs it (a new process, no shell), under Python 2.7
(CentOS 7's python), 3.6 (CentOS 7's python3), this machine's /usr/bin/python3 (the agent's) and 3.13:

    tcp_status.py STATE|all [LOCAL_PORTS [REMOTE_PORTS [FAMILY]]]
"""

import json
import os
import re
import subprocess

import pytest

from tcp_live import COUNTER, MODULE_UTILS, STATES, agree_despite_churn, refuse_sock_diag, settle, ss_counts, \
    within, zero_counts

SS_SPELLINGS = ('estab', 'syn-sent', 'syn-recv', 'fin-wait-1', 'fin-wait-2', 'time-wait', 'closed',
                'close-wait', 'last-ack', 'listen', 'listening', 'closing')
SEED_KEYS = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN')
# The seed recipe's command, verbatim (with ASCII quotes), as the oracle of what the old items meant.
RECIPE = "netstat -an | awk '/^tcp/ {++S[$NF]} END {for(a in S) print a, S[a]}' | grep -w %s | cut -d' ' -f2"

pytestmark = pytest.mark.parametrize('interpreter', ['2.7', '3.6', 'agent', '3.13'], indirect=True)


def script(interpreter, *args):
    return subprocess.run([interpreter, COUNTER] + list(args), capture_output=True, text=True, timeout=30)


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


def test_every_state_every_spelling_prints_one_integer(interpreter, scene):
    """Each netstat and ss name once, in mixed case (the unit tests check every case form in-process)."""
    spellings = [alternate(state, True) for state in STATES] + [alternate(name, False) for name in SS_SPELLINGS]
    assert 'EsTaBlIsHeD' in spellings and 'tImE-WaIt' in spellings
    for spelling in spellings:
        integer(script(interpreter, spelling), spelling)


def test_seed_keys_mean_what_the_netstat_recipe_meant(interpreter, scene):
    def compare():
        off = []
        for state in SEED_KEYS:
            before = recipe(state)
            got = integer(script(interpreter, state), state)
            after = recipe(state)
            assert before.strip() and after.strip(), 'netstat sees no {0} although the test holds some'.format(state)
            if not within(got, int(before), int(after)):
                off.append('{0}: script {1}, netstat {2} then {3}'.format(state, got, before.strip(), after.strip()))
        return off
    agree_despite_churn(compare)


def test_seed_keys_print_0_where_netstat_prints_nothing(interpreter):
    """In an empty network namespace the recipe printed an empty line; the script prints 0."""
    for state in SEED_KEYS:
        assert recipe(state, netns=True) == ''
        proc = subprocess.run(['unshare', '-n', interpreter, COUNTER, state], capture_output=True, text=True,
                              timeout=30)
        assert integer(proc, state) == 0
    proc = subprocess.run(['unshare', '-n', interpreter, COUNTER, 'all'], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and json.loads(proc.stdout) == zero_counts()


def test_all_prints_json_of_every_state(interpreter, scene):
    def compare():
        before = ss_counts()
        proc = script(interpreter, 'all')
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
        assert sorted(json.loads(script(interpreter, spelling).stdout)) == sorted(STATES)


def test_port_and_family_arguments(interpreter, scene):
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
        assert integer(script(interpreter, *args), args) == want, args
    data = json.loads(script(interpreter, 'all', v4).stdout)
    want = zero_counts()
    want.update(LISTEN=1, ESTABLISHED=3, CLOSE_WAIT=1)
    assert data == want
    data = json.loads(script(interpreter, 'all', '', v4, 'ipv4').stdout)
    want = zero_counts()
    want.update(ESTABLISHED=3, TIME_WAIT=2, FIN_WAIT2=1)
    assert data == want


def test_trailing_empty_arguments_are_ignored(interpreter, scene):
    """The UserParameter passes "$1" "$2" "$3" "$4" whatever the key holds."""
    v4 = str(scene['v4'])
    assert integer(script(interpreter, 'LISTEN', v4, '', ''), 'LISTEN') == 1
    assert integer(script(interpreter, 'ESTABLISHED', v4, '', '', ''), 'ESTABLISHED') == 3  # all of $1-$4 empty but 1
    data = json.loads(script(interpreter, 'all', v4, '', '').stdout)
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
def test_bad_input_fails_with_one_clear_line(interpreter, args, names):
    proc = script(interpreter, *args)
    assert proc.returncode == 2, 'rc={0} for {1}'.format(proc.returncode, args)
    assert proc.stdout == '', 'stdout {0!r} for {1}'.format(proc.stdout, args)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith('\n'), 'stderr {0!r} is not one line'.format(proc.stderr)
    assert names in lines[0], 'stderr {0!r} does not name {1}'.format(lines[0], names)
    assert 'Traceback' not in proc.stderr


# --------------------------------------------------------------------------------------------------
# The netlink deadline (issue 9 item 5): the whole dump must end before the agent's Timeout kills the script
# --------------------------------------------------------------------------------------------------

DEADLINE_LINE = re.compile(r'^NETLINK_TIMEOUT = .*$', re.M)  # the regex the role rewrites the installed line with
AGENT_DEFAULT_TIMEOUT = 3.0


def script_with_deadline(tmp_path, seconds):
    """A copy of the script whose deadline line is rewritten as the role rewrites it."""
    with open(COUNTER) as handle:
        text = handle.read()
    lines = DEADLINE_LINE.findall(text)
    assert len(lines) == 1, 'the role needs exactly one NETLINK_TIMEOUT line to rewrite, found {0}'.format(lines)
    assert re.match(r'^NETLINK_TIMEOUT = [0-9]+\.[0-9]+$', lines[0]), 'not a float literal: {0!r}'.format(lines[0])
    path = tmp_path / 'tcp_status.py'
    path.write_text(DEADLINE_LINE.sub('NETLINK_TIMEOUT = {0!r}'.format(seconds), text))
    return str(path)


def test_deadline_covers_the_whole_dump(interpreter, tmp_path):
    """A deadline shorter than one dump fails with one line, although the kernel answers each recv at once.

    The kernel queues each part of a dump before recv asks for it: a timeout per recv (the old design) never
    fires here, however short; a deadline over the whole dump does.
    """
    proc = subprocess.run([interpreter, script_with_deadline(tmp_path, 1e-6), 'all'], capture_output=True,
                          text=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (1, ''), (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count('\n') == 1 and proc.stderr.endswith('\n'), proc.stderr
    assert proc.stderr.startswith('tcp_status: netlink dump gave no answer within 1e-06 s '), proc.stderr


# The drivers below import the counter as the module does (from module_utils).
WITH_COUNTER = dict(os.environ, PYTHONPATH=MODULE_UTILS)

# A driver that runs the counter's own netlink backend against a real NETLINK_SOCK_DIAG socket whose request
# the kernel ignores: netlink_rcv_skb() drops a message without NLM_F_REQUEST and answers nothing, as a hung
# dump would. Only the request's flags are changed; the socket, the kernel and the deadline are real.
HUNG_DUMP = r'''
import struct, time
import tcp_status_counter as tsc
real = tsc.diag_request
def unanswered(family, mask, seq=1, bytecode=b''):
    request = bytearray(real(family, mask, seq, bytecode))
    struct.pack_into('=H', request, 6, 0)
    return bytes(request)
tsc.diag_request = unanswered
for backend in ('netlink', 'auto'):
    start = time.time()
    try:
        tsc.count_states(backend=backend)
        print('COUNTED ' + backend)
    except tsc.TcpStatusError as exc:
        print('{0} {1:.3f} {2} {3}'.format(backend, time.time() - start, type(exc).__name__, exc))
'''


def test_hung_dump_fails_before_the_agent_timeout(interpreter):
    proc = subprocess.run([interpreter, '-c', HUNG_DUMP], env=WITH_COUNTER, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == '', proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    for backend, line in zip(('netlink', 'auto'), lines):
        name, elapsed, kind, message = line.split(' ', 3)
        assert name == backend, line
        # auto does not fall back to /proc here: the deadline is spent, the agent would kill the fallback.
        assert kind == 'TcpStatusError', line
        assert message.startswith('netlink dump gave no answer within 2.5 s'), line
        assert 2.4 <= float(elapsed) < AGENT_DEFAULT_TIMEOUT - 0.3, line


# --------------------------------------------------------------------------------------------------
# Netlink refused (issue 9 item 5), as SELinux refuses it to the agent on EL without the role's policy module
# --------------------------------------------------------------------------------------------------

REFUSED = 'netlink: cannot open a NETLINK_SOCK_DIAG socket: [Errno 13] Permission denied'


def test_refused_netlink_keeps_the_output_contract(interpreter, scene):
    """The script falls back to /proc and says nothing: the agent reads stdout and stderr as one value."""
    v4 = str(scene['v4'])
    for args, want in ((('ESTABLISHED', v4), '3\n'), (('LISTEN', v4), '1\n'), (('close-wait', v4), '1\n')):
        proc = subprocess.run([interpreter, COUNTER] + list(args), capture_output=True, text=True, timeout=30,
                              preexec_fn=refuse_sock_diag)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, want, ''), (args, proc)
    proc = subprocess.run([interpreter, COUNTER, 'all', v4], capture_output=True, text=True, timeout=30,
                          preexec_fn=refuse_sock_diag)
    want = zero_counts()
    want.update(LISTEN=1, ESTABLISHED=3, CLOSE_WAIT=1)
    assert proc.returncode == 0 and proc.stderr == '' and json.loads(proc.stdout) == want, proc


BACKEND_AND_FALLBACKS = r'''
import tcp_status_counter as tsc
result = tsc.count_states(states=['LISTEN'])
print(result['backend'])
for reason in result['fallbacks']:
    print(reason)
'''


def test_count_states_says_why_it_fell_back(interpreter):
    def run(**kwargs):
        proc = subprocess.run([interpreter, '-c', BACKEND_AND_FALLBACKS], env=WITH_COUNTER, capture_output=True,
                              text=True, timeout=30, **kwargs)
        assert proc.returncode == 0 and proc.stderr == '', proc.stderr
        return proc.stdout.splitlines()
    assert run() == ['netlink']
    assert run(preexec_fn=refuse_sock_diag) == ['proc', REFUSED]


# --------------------------------------------------------------------------------------------------
# A huge argument (issue 9 item 8): the error line names it, capped, never echoes it whole
# --------------------------------------------------------------------------------------------------

HUGE = 'x' * 100000
HUGE_CASES = [
    ((HUGE,), 100000),
    (('LISTEN', HUGE), 100000),
    (('LISTEN', '80,' + HUGE), 100000),
    (('LISTEN', '', '1' * 100000), 100000),
    (('all', '', '', HUGE), 100000),
    (('LISTEN', '', '', 'ipv4', HUGE, 'y'), 100000),
    (('LISTEN', '\n' * 100000), 100000),
]


@pytest.mark.parametrize('args,length', HUGE_CASES, ids=['state', 'local', 'local-item', 'remote', 'family', 'extra',
                                                         'newlines'])
def test_huge_argument_is_capped_in_the_error_line(interpreter, args, length):
    proc = script(interpreter, *args)
    assert (proc.returncode, proc.stdout) == (2, ''), (proc.returncode, proc.stdout[:200], proc.stderr[:200])
    assert proc.stderr.count('\n') == 1 and proc.stderr.endswith('\n'), proc.stderr[:300]
    assert len(proc.stderr) < 600, 'error line of {0} characters: {1}...'.format(len(proc.stderr), proc.stderr[:300])
    assert '...({0} chars)'.format(length) in proc.stderr, proc.stderr
    assert proc.stderr.startswith('tcp_status: ') and 'Traceback' not in proc.stderr
