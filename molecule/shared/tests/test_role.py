"""Verify a host converged by the role: files, the agent, and real zabbix_get answers held to what `ss` counts.

Also the check step: molecule/shared/snapshot_before_check.yml (the side_effect step) recorded the host's state
just before `check`; test_check_mode_changed_nothing compares the host with it.
"""
import json
import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# The tests' one ss oracle (tests/ss_oracle.py): its state map and parser, fed with what `host` ran.
sys.path.insert(0, os.path.join(HERE, '..', '..', '..', 'tests'))
from ss_oracle import SS_STATES, parse_ss, state_counts  # noqa: E402

STATES = ['ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT',
          'LAST_ACK', 'LISTEN', 'CLOSING']
assert sorted(STATES) == sorted(SS_STATES.values())
FLAVOURS = {
    'agent': {'config': '/etc/zabbix/zabbix_agentd.conf', 'dir': '/etc/zabbix/zabbix_agentd.conf.d',
              'process': 'zabbix_agentd'},
    'agent2': {'config': '/etc/zabbix/zabbix_agent2.conf', 'dir': '/etc/zabbix/zabbix_agent2.d',
               'process': 'zabbix_agent2'},
}
SCRIPT = '/etc/zabbix/tcp_status.py'
BACKUPS = '/var/lib/zabbix_tcp_status/backup'
BEFORE_CHECK = '/var/tmp/zts-molecule-before-check.json'
# The zabbix_get connection's own sockets: both of its ends are ESTABLISHED while the agent runs the script,
# and its closing end is in TIME_WAIT after it.
OWN = {'ESTABLISHED': 2, 'TIME_WAIT': 1}
ATTEMPTS = 3


@pytest.fixture(scope='module')
def flavour(host):
    return FLAVOURS[host.ansible.get_variables()['zabbix_tcp_status_test_flavour']]


def zabbix_get(host, key):
    cmd = host.run('zabbix_get -s 127.0.0.1 -p 10050 -k %s', key)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def ss_rows(host):
    return parse_ss(host.check_output('ss -Htan'))


def windowed(host, key, read, count, own=None):
    """Asks the agent for key between two ss counts and holds every state it answers to the window the counts
    allow: from the lower count to the higher, widened by what changed between them (churn) and by the query's
    own sockets (own: {STATE: n}). read turns the answer into {STATE: n} (failing on a malformed answer); count
    turns ss rows into {STATE: n}. Tries ATTEMPTS times (fresh counts each time): a wrong answer fails them all.
    """
    own = OWN if own is None else own
    misses = []
    for _ in range(ATTEMPTS):
        before = count(ss_rows(host))
        answer = zabbix_get(host, key)
        after = count(ss_rows(host))
        values = read(answer)
        bad = []
        for state, value in sorted(values.items()):
            low, high = sorted((before.get(state, 0), after.get(state, 0)))
            churn = high - low
            window = (low - churn - own.get(state, 0), high + churn + own.get(state, 0))
            if not window[0] <= value <= window[1]:
                bad.append((state, value, window))
        if not bad:
            return values
        misses.append((answer, bad))
    pytest.fail('%s outside the ss window %d times (answer, [(state, value, window)]): %s'
                % (key, ATTEMPTS, misses))


def read_count(state):
    def read(answer):
        assert re.match(r'^\d+$', answer), 'not a count: %r' % answer
        return {state: int(answer)}
    return read


def read_json(answer):
    value = json.loads(answer)
    assert sorted(value) == sorted(STATES), answer
    assert all(type(n) is int and n >= 0 for n in value.values()), answer
    return value


def test_check_mode_changed_nothing(host):
    # molecule's check step ran converge with --check on the converged host: no file, pid or boot link may differ.
    record = host.file(BEFORE_CHECK)
    assert record.exists, BEFORE_CHECK + ' missing: run the side_effect step (snapshot_before_check.yml) before check'
    before = json.loads(record.content_string)
    now = json.loads(host.check_output('python3 %s', os.path.join(HERE, '..', 'host_state.py')))
    assert before['files'], 'the record holds no files: ' + BEFORE_CHECK
    assert [v for v in before['agents'].values() if v], 'no agent was running before the check step'
    for part in ('files', 'agents', 'boot'):
        changed = sorted(k for k in set(before[part]) | set(now[part]) if before[part].get(k) != now[part].get(k))
        assert not changed, '%s changed by check mode: %s' % (part, [(k, before[part].get(k), now[part].get(k))
                                                                      for k in changed])


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
    # Single quotes: even under UnsafeUserParameters=1 a key parameter cannot run $(...) or backticks.
    assert conf.contains(r"^UserParameter=tcp.status\[\*\],%s '\$1' '\$2' '\$3' '\$4'$" % SCRIPT)
    assert conf.contains(r"^UserParameter=tcp.status.json\[\*\],%s all '\$1' '\$2' '\$3'$" % SCRIPT)


def test_recipe_line_commented_out_and_backed_up_outside_the_agents_files(host, flavour):
    main = host.file(flavour['config'])
    assert main.contains(r'^# UserParameter=tcp.status\[\*\],/etc/zabbix/tcp_connections.sh \$1 \$2  # replaced by')
    assert not main.contains(r'^UserParameter=tcp.status')
    # Backups never go next to the agent's files (a directory Include= would load them).
    assert host.check_output('find /etc/zabbix -name "*~"') == ''
    backups = host.check_output('find %s -type f', BACKUPS).split()
    assert any(host.file(b).contains(r'^UserParameter=tcp.status\[\*\],/etc/zabbix/tcp_connections.sh') for b in backups), \
        'the role keeps a backup of the file it changed, under ' + BACKUPS


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
    windowed(host, 'tcp.status[%s]' % state, read_count(state), state_counts)


def test_json_key_answers_every_state_as_ss_counts_it(host):
    windowed(host, 'tcp.status.json', read_json, state_counts)


def by_local_port(ports):
    return lambda rows: state_counts([row for row in rows if row[2] in ports])


def test_port_filter_through_the_agent(host):
    # The agent's listeners: exactly as many as ss lists on port 10050 (nothing else churns there).
    listen = windowed(host, 'tcp.status[LISTEN,10050]', read_count('LISTEN'), by_local_port({10050}))
    assert listen['LISTEN'] >= 1
    windowed(host, 'tcp.status[LISTEN,1]', read_count('LISTEN'), by_local_port({1}))
    windowed(host, 'tcp.status[listening,"10050,1-5"]', read_count('LISTEN'), by_local_port({10050, 1, 2, 3, 4, 5}))
    # While the agent counts, the query's own connection is ESTABLISHED on local port 10050 (the agent's end):
    # a filter that ignored the port, or an answer of 0, fails here.
    mine = windowed(host, 'tcp.status[ESTABLISHED,10050]', read_count('ESTABLISHED'), by_local_port({10050}),
                    own={'ESTABLISHED': 1, 'TIME_WAIT': 1})
    assert mine['ESTABLISHED'] >= 1
    windowed(host, 'tcp.status.json[10050]', read_json, by_local_port({10050}), own={'ESTABLISHED': 1, 'TIME_WAIT': 1})


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
