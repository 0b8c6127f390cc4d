"""Verify a host converged by the role: files, the agent, and real zabbix_get answers."""
import json
import re

import pytest

STATES = ['ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT',
          'LAST_ACK', 'LISTEN', 'CLOSING']
FLAVOURS = {
    'agent': {'config': '/etc/zabbix/zabbix_agentd.conf', 'dir': '/etc/zabbix/zabbix_agentd.conf.d',
              'process': 'zabbix_agentd'},
    'agent2': {'config': '/etc/zabbix/zabbix_agent2.conf', 'dir': '/etc/zabbix/zabbix_agent2.d',
               'process': 'zabbix_agent2'},
}
SCRIPT = '/etc/zabbix/tcp_status.py'
# Connections come and go while we compare (zabbix_get itself adds an ESTABLISHED pair and a TIME_WAIT).
TOLERANCE = 20


@pytest.fixture(scope='module')
def flavour(host):
    return FLAVOURS[host.ansible.get_variables()['zabbix_tcp_status_test_flavour']]


def zabbix_get(host, key):
    cmd = host.run('zabbix_get -s 127.0.0.1 -p 10050 -k %s', key)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def ss_counts(host):
    counts = dict((state, 0) for state in STATES)
    names = {'ESTAB': 'ESTABLISHED', 'SYN-SENT': 'SYN_SENT', 'SYN-RECV': 'SYN_RECV', 'FIN-WAIT-1': 'FIN_WAIT1',
             'FIN-WAIT-2': 'FIN_WAIT2', 'TIME-WAIT': 'TIME_WAIT', 'UNCONN': 'CLOSE', 'CLOSE-WAIT': 'CLOSE_WAIT',
             'LAST-ACK': 'LAST_ACK', 'LISTEN': 'LISTEN', 'CLOSING': 'CLOSING'}
    for line in host.check_output('ss -Htan').splitlines():
        counts[names[line.split()[0]]] += 1
    return counts


def test_script_is_root_owned_and_not_writable_by_zabbix(host):
    script = host.file(SCRIPT)
    assert script.user == 'root' and script.group == 'root'
    assert script.mode == 0o755
    assert host.run('runuser -u zabbix -- test -w %s', SCRIPT).rc != 0
    shebang = script.content_string.splitlines()[0]
    assert re.match(r'^#!/usr/bin/python[23]? -S$', shebang), shebang


def test_userparameters_in_their_own_file(host, flavour):
    conf = host.file(flavour['dir'] + '/userparameter_tcp_status.conf')
    assert conf.user == 'root' and conf.mode == 0o644
    assert conf.contains(r'^UserParameter=tcp.status\[\*\],%s "\$1" "\$2" "\$3" "\$4"$' % SCRIPT)
    assert conf.contains(r'^UserParameter=tcp.status.json\[\*\],%s all "\$1" "\$2" "\$3"$' % SCRIPT)


def test_recipe_line_commented_out_and_backed_up(host, flavour):
    main = host.file(flavour['config'])
    assert main.contains(r'^# UserParameter=tcp.status\[\*\],/etc/zabbix/tcp_connections.sh \$1 \$2  # replaced by')
    assert not main.contains(r'^UserParameter=tcp.status')
    backups = host.run('ls %s.*~', flavour['config']).stdout.split()
    assert backups, 'the role keeps a backup of the file it changed'
    assert any(host.file(b).contains(r'^UserParameter=tcp.status\[\*\],/etc/zabbix/tcp_connections.sh') for b in backups)


def test_agent_settings_not_widened(host, flavour):
    text = host.file(flavour['config']).content_string
    assert re.findall(r'(?m)^Server=(.*)$', text) == ['127.0.0.1']
    assert not re.search(r'(?m)^\s*UnsafeUserParameters\s*=\s*1', text)
    assert host.run('grep -rs "^UnsafeUserParameters=1" %s', flavour['dir']).rc != 0


def test_agent_runs_and_listens(host, flavour):
    assert host.process.filter(comm=flavour['process'])
    assert any(host.socket(addr).is_listening for addr in ('tcp://0.0.0.0:10050', 'tcp://:::10050'))


@pytest.mark.parametrize('state', ['ESTABLISHED', 'TIME_WAIT', 'LISTEN'])
def test_seed_keys_answer_counts_that_match_ss(host, state):
    before = ss_counts(host)[state]
    value = zabbix_get(host, 'tcp.status[%s]' % state)
    after = ss_counts(host)[state]
    assert re.match(r'^\d+$', value), value
    assert min(before, after) - TOLERANCE <= int(value) <= max(before, after) + TOLERANCE


def test_json_key_answers_every_state(host):
    value = json.loads(zabbix_get(host, 'tcp.status.json'))
    assert sorted(value) == sorted(STATES)
    assert all(isinstance(n, int) and n >= 0 for n in value.values())
    assert abs(value['LISTEN'] - ss_counts(host)['LISTEN']) <= 2


def test_port_filter_through_the_agent(host):
    assert int(zabbix_get(host, 'tcp.status[LISTEN,10050]')) >= 1
    assert zabbix_get(host, 'tcp.status[LISTEN,1]') == '0'
    assert zabbix_get(host, 'tcp.status[listening,"10050,1-5"]') == zabbix_get(host, 'tcp.status[LISTEN,10050]')


@pytest.mark.parametrize('key, message', [
    ('tcp.status[FOO]', "unknown TCP state 'FOO'"),
    ('tcp.status[]', 'missing STATE'),
    ('tcp.status[LISTEN,http]', "bad port 'http'"),
    ('tcp.status[LISTEN,,,ipv5]', "unknown address family 'ipv5'"),
    ('tcp.status[ESTABLISHED;id]', 'ZBX_NOTSUPPORTED'),
    ('tcp.status.json[a]', "bad port 'a'"),
])
def test_bad_keys_never_answer_a_number(host, key, message):
    value = zabbix_get(host, key)
    assert message in value
    assert not re.match(r'^\d+$', value)


def test_local_fact(host):
    fact = host.file('/etc/ansible/facts.d/tcp_status.fact')
    assert fact.mode == 0o755
    assert sorted(json.loads(host.check_output(fact.path))) == sorted(STATES)
