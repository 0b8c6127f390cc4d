# -*- coding: utf-8 -*-
"""The per-port keys through this machine's real agent (issue 10): the role (playbook.yml) installs them from its
item table, its item test and zabbix_get verify judge their answers (kinds ports and discovery of the verify
filter), and a real zabbix_get of each is held to ss for the agent's own port and for a listener this test owns.
Holds the agents' lock, as every test that drives them; leaves the agents stopped."""

import fcntl
import json
import re

import pytest

from role_run import LOCK, playbook, prepare, recap, stop_agents, zabbix_get
from ss_oracle import ss_sockets
from tcp_live import zero_counts


@pytest.fixture(scope='module')
def installed():
    """The role applied to this machine's classic agent as the recipe left it (molecule/shared/prepare.yml: other
    tests leave other agent configurations behind), held under the lock for the module; its run's output."""
    with open(LOCK, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            prepare('agent')
            result = playbook()
            assert result.rc == 0 and recap(result)['failed'] == 0, result.tail()
            yield result
        finally:
            stop_agents()


def ss_states(port):
    counts = zero_counts()
    for _family, state, lport, _rport in ss_sockets():
        if lport == port:
            counts[state] += 1
    return counts


def test_the_role_installs_and_verifies_the_per_port_keys(installed):
    # The item test and the zabbix_get verify (tasks/ask.yml) asked both keys, and the run passed their judgement.
    for key in ('tcp.status.ports', 'tcp.status.ports.discovery'):
        assert '(item={0})'.format(key) in installed.stdout, installed.tail()
    with open('/etc/zabbix/zabbix_agentd.conf.d/userparameter_tcp_status.conf') as handle:
        conf = handle.read()
    assert re.search(r"(?m)^UserParameter=tcp\.status\.ports\[\*\],/etc/zabbix/tcp_status\.py ports '\$1' '\$2' "
                     r"'\$3' '\$4'$", conf), conf


def test_zabbix_get_answers_per_port_as_ss_counts(installed, farm):
    port = farm.listener('ipv4')
    farm.pair(port)
    farm.pair(port)
    farm.close_wait(port)
    value = zabbix_get('tcp.status.ports["{0},10050",{0}]'.format(port))
    answer = json.loads(value)
    byport = dict((entry['port'], entry) for entry in answer['ports'])
    assert sorted(byport) == sorted([port, 10050]) and answer['truncated'] == 0, value
    # The test's own listener: nothing else uses its port, so the count is exact.
    assert byport[port]['states'] == ss_states(port), (byport[port], ss_states(port))
    assert byport[port]['states']['ESTABLISHED'] == 2 and byport[port]['states']['CLOSE_WAIT'] == 1
    assert (byport[port]['queue'], byport[port]['backlog']) == (0, 64), byport[port]
    assert [entry['port'] for entry in answer['remote']] == [port]
    assert answer['remote'][0]['states']['ESTABLISHED'] == 2 and answer['remote'][0]['states']['FIN_WAIT2'] == 1
    # The agent's port, while it answers: its listener(s), and this query's connection ESTABLISHED on it.
    agent = byport[10050]
    assert agent['service'] == 'zabbix-agent' and agent['states']['ESTABLISHED'] >= 1, agent
    assert agent['states']['LISTEN'] == ss_states(10050)['LISTEN'] >= 1, agent
    discovery = json.loads(zabbix_get('tcp.status.ports.discovery[{0}]'.format(port)))
    assert discovery == {'data': [{'{#PORT}': str(port), '{#SERVICE}': '', '{#SIDE}': 'local'}]}, discovery
    # A bad argument: the script's one line, which the agent returns as the reason (never JSON).
    assert "bad MAX_PORTS 'lots'" in zabbix_get('tcp.status.ports[,,,lots]')
