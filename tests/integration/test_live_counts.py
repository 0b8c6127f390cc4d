# -*- coding: utf-8 -*-
"""Every backend of the counter against real sockets on 127.0.0.1 and ::1, with ss and psutil as oracles.

The exact tests filter on the test's own listener ports, so that the host's other sockets do not matter;
the whole-host tests compare against `ss -tan` and psutil read just before and after, with a margin for
the host's churn.
"""

import pytest

import tcp_status_counter as tsc
from tcp_live import STATES, psutil_counts, settle, ss_counts, within, zero_counts

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
    }
    for (family, local, remote), want in expect.items():
        seen = settle(want, family, local, remote)
        assert seen == want, 'ss disagrees with the sockets the test made: {0} {1} {2}: {3}'.format(
            family, local, remote, seen)
    return {'v4': v4, 'v6': v6, 'dual': dual, 'expect': expect}


def spec(ports):
    return None if ports is None else ','.join(str(port) for port in ports)


@pytest.mark.parametrize('backend', BACKENDS)
def test_backend_counts_exactly_the_test_sockets(scene, backend):
    wrong = []
    for (family, local, remote), want in scene['expect'].items():
        result = tsc.count_states(family=family, local_ports=spec(local), remote_ports=spec(remote), backend=backend)
        assert result['backend'] == backend and result['family'] == family
        if result['counts'] != want or result['total'] != sum(want.values()):
            wrong.append('{0} local={1} remote={2}: {3} != {4}'.format(family, local, remote, result['counts'], want))
    assert not wrong, '\n'.join(wrong)


@pytest.mark.parametrize('backend', BACKENDS)
def test_backend_port_forms_and_state_selection(scene, backend):
    v4, v6, dual = scene['v4'], scene['v6'], scene['dual']
    low, high = min(v4, v6), max(v4, v6)
    wanted_by_range = ss_counts('all', local=range(low, high + 1))
    ranged = tsc.count_states(local_ports='{0}-{1}'.format(low, high), backend=backend)['counts']
    assert ranged == wanted_by_range  # the range may hold other sockets of the host: compare with ss
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
    for backend in BACKENDS:
        v6 = tsc.count_states(states=['ESTABLISHED'], family='ipv6', local_ports=[dual], backend=backend)
        v4 = tsc.count_states(states=['ESTABLISHED'], family='ipv4', local_ports=[dual], backend=backend)
        assert (v6['total'], v4['total']) == (3, 0), backend


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('family', ['all', 'ipv4', 'ipv6'])
def test_whole_host_matches_ss_and_psutil(scene, backend, family):
    ss_before = ss_counts(family)
    ps_before = psutil_counts(family)
    result = tsc.count_states(family=family, backend=backend)
    ss_after = ss_counts(family)
    ps_after = psutil_counts(family)
    assert set(result['counts']) == set(STATES)
    assert result['total'] == sum(result['counts'].values())
    assert result['total'] >= 3 + 4 + 3  # at least the test's own listeners and connections
    off = []
    for state in STATES + ('total',):
        got = result['total'] if state == 'total' else result['counts'][state]
        for oracle, before, after in (('ss', ss_before, ss_after), ('psutil', ps_before, ps_after)):
            first = sum(before.values()) if state == 'total' else before[state]
            last = sum(after.values()) if state == 'total' else after[state]
            if not within(got, first, last):
                off.append('{0}: {1} counted, {2} saw {3} then {4}'.format(state, got, oracle, first, last))
    assert not off, '\n'.join(off)


def test_one_state_needs_only_that_state(scene):
    """The kernel's state mask: asking for LISTEN must not count anything else."""
    listen = tsc.count_states(states=['LISTEN'], backend='netlink')
    assert list(listen['counts']) == ['LISTEN']
    assert within(listen['total'], ss_counts()['LISTEN'], ss_counts()['LISTEN'])
