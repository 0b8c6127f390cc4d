"""Verify a host converged by the role: files, the agent, and real zabbix_get answers held to what `ss` counts.

The keys come from the role's item table (zabbix/role_items.py), the states and the ss parser from the tests' one
ss oracle (tests/ss_oracle.py); both are on PYTHONPATH through the verifier's env in molecule/*/molecule.yml.

Also the check step: molecule/shared/snapshot_before_check.yml (the side_effect step) recorded the host's state
just before `check`; test_check_mode_changed_nothing compares the host with it.
"""
import json
import os
import re

import pytest
from ss_oracle import STATES, parse_ss, state_counts
from zabbix import role_items

HERE = os.path.dirname(os.path.abspath(__file__))
# The role's item table with its defaults (converge.yml sets only the agent flavour): one row per key.
ITEMS = role_items.items()
COUNT_KEY = role_items.item('count')['key']
STATES_KEY = role_items.item('states')['key']
# Every key the role itself asks after a change, with the kind of answer it must give.
CHECKS = [(check, row['answer']) for row in ITEMS for check in row['checks']]
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


def read_ports(answer):
    """{'PORT/STATE': n} of a per-port answer (tcp.status.ports), its form checked."""
    value = json.loads(answer)
    assert sorted(value) == ['listen_drops', 'listen_overflows', 'ports', 'remote', 'truncated'], answer
    assert value['truncated'] == 0, answer
    ports = [entry['port'] for entry in value['ports']]
    assert len(ports) == len(set(ports)), answer
    counts = {}
    for entry in value['ports']:
        assert sorted(entry['states']) == sorted(STATES), answer
        assert entry['states']['LISTEN'] >= 1, answer
        counts.update(('%d/%s' % (entry['port'], state), n) for state, n in entry['states'].items())
    return counts


def per_listening_port(rows):
    """{'PORT/STATE': n} of the sockets whose local port has a listener, from ss rows."""
    listening = set(lport for _family, state, lport, _rport in rows if state == 'LISTEN')
    counts = {}
    for _family, state, lport, _rport in rows:
        if lport in listening:
            key = '%d/%s' % (lport, state)
            counts[key] = counts.get(key, 0) + 1
    return counts


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


def userparameter_line(row):
    """The line the table's row must give: the key, the script with the row's fixed arguments, then one single-quoted
    $N per parameter (even under UnsafeUserParameters=1 a key parameter cannot run $(...) or backticks)."""
    words = [SCRIPT] + row['command'] + ["'$%d'" % (n + 1) for n in range(len(row['params']))]
    return 'UserParameter=%s[*],%s' % (row['key'], ' '.join(words))


def test_userparameters_in_their_own_file(host, flavour):
    conf = host.file(flavour['dir'] + '/userparameter_tcp_status.conf')
    assert conf.user == 'root' and conf.mode == 0o644
    lines = [line for line in conf.content_string.splitlines() if line.startswith('UserParameter=')]
    assert lines == [userparameter_line(row) for row in ITEMS]
    assert "UserParameter=tcp.status[*],%s '$1' '$2' '$3' '$4'" % SCRIPT in lines, 'the recipe\'s key, as it was'


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


@pytest.mark.parametrize('key, answer', CHECKS, ids=[key for key, _answer in CHECKS])
def test_checked_keys_answer_what_ss_counts(host, key, answer):
    """The keys the role's verify asks (the item table's checks), held to what ss counts."""
    if answer == 'count':
        state = re.match(r'^[^[]+\[([A-Z_]+)\]$', key).group(1)
        assert state in STATES, key
        windowed(host, key, read_count(state), state_counts)
    elif answer == 'states':
        windowed(host, key, read_json, state_counts)
    elif answer == 'ports':
        # The agent's end of the query's connection is on its listening port 10050.
        counts = windowed(host, key, read_ports, per_listening_port, own={'10050/ESTABLISHED': 1, '10050/TIME_WAIT': 1})
        assert set(k.split('/')[0] for k in counts) == set(k.split('/')[0] for k in per_listening_port(ss_rows(host)))
    else:
        assert answer == 'discovery', (key, answer)
        rows = json.loads(zabbix_get(host, key))['data']
        assert set(row['{#PORT}'] for row in rows) == set(k.split('/')[0] for k in per_listening_port(ss_rows(host)))
        assert all(row['{#SIDE}'] == 'local' for row in rows), rows


def by_local_port(ports):
    return lambda rows: state_counts([row for row in rows if row[2] in ports])


def test_port_filter_through_the_agent(host):
    # The agent's listeners: exactly as many as ss lists on port 10050 (nothing else churns there).
    listen = windowed(host, COUNT_KEY + '[LISTEN,10050]', read_count('LISTEN'), by_local_port({10050}))
    assert listen['LISTEN'] >= 1
    windowed(host, COUNT_KEY + '[LISTEN,1]', read_count('LISTEN'), by_local_port({1}))
    windowed(host, COUNT_KEY + '[listening,"10050,1-5"]', read_count('LISTEN'), by_local_port({10050, 1, 2, 3, 4, 5}))
    # While the agent counts, the query's own connection is ESTABLISHED on local port 10050 (the agent's end):
    # a filter that ignored the port, or an answer of 0, fails here.
    mine = windowed(host, COUNT_KEY + '[ESTABLISHED,10050]', read_count('ESTABLISHED'), by_local_port({10050}),
                    own={'ESTABLISHED': 1, 'TIME_WAIT': 1})
    assert mine['ESTABLISHED'] >= 1
    windowed(host, STATES_KEY + '[10050]', read_json, by_local_port({10050}), own={'ESTABLISHED': 1, 'TIME_WAIT': 1})


@pytest.mark.parametrize('key, params, message', [
    (COUNT_KEY, 'FOO', "unknown TCP state 'FOO'"),
    (COUNT_KEY, '', 'missing STATE'),
    (COUNT_KEY, 'LISTEN,http', "bad port 'http'"),
    (COUNT_KEY, 'LISTEN,,,ipv5', "unknown address family 'ipv5'"),
    (COUNT_KEY, 'ESTABLISHED;id', 'ZBX_NOTSUPPORTED'),
    (STATES_KEY, 'a', "bad port 'a'"),
])
def test_bad_keys_never_answer_a_number(host, key, params, message):
    key = '%s[%s]' % (key, params)
    value = zabbix_get(host, key)
    assert message in value
    assert not re.match(r'^\d+$', value)


def test_local_fact(host):
    fact = host.file('/etc/ansible/facts.d/tcp_status.fact')
    assert fact.mode == 0o755
    assert sorted(json.loads(host.check_output(fact.path))) == sorted(STATES)
