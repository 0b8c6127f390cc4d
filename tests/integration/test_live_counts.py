# -*- coding: utf-8 -*-
"""Every backend of the counter against real sockets on 127.0.0.1 and ::1, with ss and psutil as oracles.

The exact tests filter on the test's own listener ports, so that the host's other sockets do not matter;
the whole-host tests compare against `ss -tan` and psutil read just before and after, with a margin for
the host's churn.
"""

import pytest

import tcp_status_counter as tsc
from tcp_live import STATES, agree_despite_churn, psutil_counts, settle, ss_counts, within, zero_counts

BACKENDS = ('netlink', 'proc', 'psutil')


def counts(**expected):
    result = zero_counts()
    result.update(expected)
    return result


@pytest.fixture
def scene(farm):
    """One set of sockets for the whole module, and what each port filter must count."""
    v4 = farm.listener('ipv4')
    v6 = farm.listener('ipv6')
    dual = farm.listener('dual')
    for _ in range(3):
        farm.pair(v4)
    for _ in range(2):
        farm.time_wait(v4)
        farm.close_wait(v4)
    for _ in range(2):
        farm.pair(v6, client='ipv6')
    farm.time_wait(v6, client='ipv6')
    farm.close_wait(v6, client='ipv6')
    farm.pair(dual, client='ipv4')
    farm.pair(dual, client='ipv4')
    farm.pair(dual, client='ipv6')
    client_port = farm.pair(v4)[0].getsockname()[1]  # one more pair, to filter on both ends
    full = farm.listener('ipv4', backlog=0)  # never accepts: one queued connection, then SYN_SENT clients
    farm.queued(full)
    farm.syn_sent(full)
    farm.syn_sent(full)
    expect = {
        # (family, local ports, remote ports) -> counts
        ('all', (v4,), None): counts(LISTEN=1, ESTABLISHED=4, CLOSE_WAIT=2),
        ('ipv4', (v4,), None): counts(LISTEN=1, ESTABLISHED=4, CLOSE_WAIT=2),
        ('ipv6', (v4,), None): counts(),
        ('all', None, (v4,)): counts(ESTABLISHED=4, TIME_WAIT=2, FIN_WAIT2=2),
        ('all', (v6,), None): counts(LISTEN=1, ESTABLISHED=2, CLOSE_WAIT=1),
        ('ipv4', (v6,), None): counts(),
        ('all', None, (v6,)): counts(ESTABLISHED=2, TIME_WAIT=1, FIN_WAIT2=1),
        # the dual-stack listener's server ends are all IPv6, also for its IPv4 clients
        ('ipv6', (dual,), None): counts(LISTEN=1, ESTABLISHED=3),
        ('ipv4', (dual,), None): counts(),
        ('ipv4', None, (dual,)): counts(ESTABLISHED=2),
        ('ipv6', None, (dual,)): counts(ESTABLISHED=1),
        ('all', (v4, v6, dual), None): counts(LISTEN=3, ESTABLISHED=9, CLOSE_WAIT=3),
        ('all', (v4,), (client_port,)): counts(ESTABLISHED=1),
        ('all', (client_port,), (v4,)): counts(ESTABLISHED=1),
        ('all', (v4,), (v4,)): counts(),
        ('all', (full,), None): counts(LISTEN=1, ESTABLISHED=1),
        ('ipv4', None, (full,)): counts(ESTABLISHED=1, SYN_SENT=2),
    }
    for (family, local, remote), want in expect.items():
        seen = settle(want, family, local, remote)
        assert seen == want, 'ss disagrees with the sockets the test made: {0} {1} {2}: {3}'.format(
            family, local, remote, seen)
    psutil_keys = [('all', (v4,), None), ('ipv6', (dual,), None), ('ipv4', None, (dual,)),
                   ('all', (v4,), (client_port,))]
    return {'v4': v4, 'v6': v6, 'dual': dual, 'expect': expect, 'psutil_keys': psutil_keys}


def spec(ports):
    return None if ports is None else ','.join(str(port) for port in ports)


# psutil walks every process's file descriptors: on a host with many sockets one call takes seconds, so
# the psutil backend (the non-Linux fallback) is checked on the filters in scene['psutil_keys'] only.


@pytest.mark.parametrize('backend', BACKENDS)
def test_backend_counts_exactly_the_test_sockets(scene, backend):
    wrong = []
    for (family, local, remote), want in scene['expect'].items():
        if backend == 'psutil' and (family, local, remote) not in scene['psutil_keys']:
            continue
        result = tsc.count_states(family=family, local_ports=spec(local), remote_ports=spec(remote), backend=backend)
        assert result['backend'] == backend and result['family'] == family
        if result['counts'] != want or result['total'] != sum(want.values()):
            wrong.append('{0} local={1} remote={2}: {3} != {4}'.format(family, local, remote, result['counts'], want))
    assert not wrong, '\n'.join(wrong)


@pytest.mark.parametrize('backend', BACKENDS)
def test_backend_port_forms_and_state_selection(scene, backend):
    v4, v6, dual = scene['v4'], scene['v6'], scene['dual']
    low, high = min(v4, v6), max(v4, v6)
    # The range may hold other sockets of the host: compare with ss read before and after.
    def compare():
        before = ss_counts('all', local=range(low, high + 1))
        ranged = tsc.count_states(local_ports='{0}-{1}'.format(low, high), backend=backend)['counts']
        after = ss_counts('all', local=range(low, high + 1))
        assert ranged['LISTEN'] >= 2
        return ['{0}: {1}, ss {2} then {3}'.format(state, ranged[state], before[state], after[state])
                for state in STATES if not within(ranged[state], before[state], after[state])]
    agree_despite_churn(compare)
    listed = tsc.count_states(local_ports=[v4, str(v6), '{0}-{0}'.format(dual)], backend=backend)
    assert listed['counts'] == scene['expect'][('all', (v4, v6, dual), None)]
    some = tsc.count_states(states=['time-wait', 'FIN_WAIT2', 'Established'], remote_ports=[v4], backend=backend)
    assert some['counts'] == {'ESTABLISHED': 4, 'TIME_WAIT': 2, 'FIN_WAIT2': 2} and some['total'] == 8


def test_auto_uses_netlink_here(scene):
    result = tsc.count_states(local_ports=[scene['v4']])
    assert result['backend'] == 'netlink'
    assert result['counts'] == scene['expect'][('all', (scene['v4'],), None)]


def test_ipv4_client_of_dual_stack_listener_counts_as_ipv6(scene):
    dual = scene['dual']
    for backend in ('netlink', 'proc'):  # psutil: in test_backend_counts_exactly_the_test_sockets
        v6 = tsc.count_states(states=['ESTABLISHED'], family='ipv6', local_ports=[dual], backend=backend)
        v4 = tsc.count_states(states=['ESTABLISHED'], family='ipv4', local_ports=[dual], backend=backend)
        assert (v6['total'], v4['total']) == (3, 0), backend


def compare_whole_host():
    """One round: every backend and family between two reads of ss and psutil; the disagreements."""
    families = ('all', 'ipv4', 'ipv6')
    runs = [(backend, family) for backend in ('netlink', 'proc') for family in families] + [('psutil', 'all')]
    ss_before = dict((family, ss_counts(family)) for family in families)
    ps_before = psutil_counts()
    results = dict((run, tsc.count_states(family=run[1], backend=run[0])) for run in runs)
    ss_after = dict((family, ss_counts(family)) for family in families)
    ps_after = psutil_counts()
    off = []
    for (backend, family), result in sorted(results.items()):
        assert result['backend'] == backend and set(result['counts']) == set(STATES)
        assert result['total'] == sum(result['counts'].values())
        assert result['total'] >= 10  # at least the test's own listeners and connections
        for state in STATES + ('total',):
            got = result['total'] if state == 'total' else result['counts'][state]
            for oracle, before, after in (('ss', ss_before, ss_after), ('psutil', ps_before, ps_after)):
                first = sum(before[family].values()) if state == 'total' else before[family][state]
                last = sum(after[family].values()) if state == 'total' else after[family][state]
                if not within(got, first, last):
                    off.append('{0} {1} {2}: {3} counted, {4} saw {5} then {6}'.format(
                        backend, family, state, got, oracle, first, last))
    return off


def test_whole_host_matches_ss_and_psutil(scene):
    """Every backend and family against ss and psutil, read before and after (retried if the host churns)."""
    agree_despite_churn(compare_whole_host)


def test_one_state_needs_only_that_state(scene):
    """The kernel's state mask: asking for LISTEN must not count anything else."""
    def compare():
        before = ss_counts()['LISTEN']
        listen = tsc.count_states(states=['LISTEN'], backend='netlink')
        after = ss_counts()['LISTEN']
        assert list(listen['counts']) == ['LISTEN'] and listen['total'] >= 4
        return [] if within(listen['total'], before, after) else ['LISTEN {0}, ss {1} then {2}'.format(
            listen['total'], before, after)]
    agree_despite_churn(compare)
