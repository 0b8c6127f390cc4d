"""The item table (roles/zabbix_tcp_status/vars/main.yml, _zabbix_tcp_status_items) is the one place that defines
the keys: adding a row is all it takes for the UserParameter file, the agent's item test, the zabbix_get verify and
the template to follow.

The role tests run a copy of the role with one row added, on this machine's real agent: the new key is installed,
asked by the agent's item test and by zabbix_get, and a row whose script does not answer as the row says stops the
run at the item test, before any restart. The template test reads the generated files.
"""
import fcntl
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml

from zabbix import role_items

LOCK = '/tmp/zts-system-agent.lock'
DROPIN = '/etc/zabbix/zabbix_agentd.conf.d/userparameter_tcp_status.conf'
PLAY = """- name: The role with one more row in its item table
  hosts: zabbix_agents
  become: true
  roles:
    - role: {role}
"""
EXTRA_ROW = {'key': 'tcp.status.extra', 'command': ['all'], 'params': ['LOCAL_PORTS'],
             'description': 'a row added by tests/role/test_item_table.py', 'answer': 'states',
             'checks': ['tcp.status.extra', 'tcp.status.extra[]']}
# The script prints one integer for `LISTEN`; a row that says it answers every state as JSON is wrong.
WRONG_ROW = {'key': 'tcp.status.wrong', 'command': ['LISTEN'], 'params': [],
             'description': 'a row whose answer is not what its command prints', 'answer': 'states',
             'checks': ['tcp.status.wrong']}


def run(args):
    proc = subprocess.run(args, cwd=role_items.REPO, capture_output=True, text=True, timeout=600)
    return proc.returncode, ' '.join((proc.stdout + proc.stderr).split())


def role_with(tmp_path, row):
    """A copy of the role whose item table has ``row`` added, and a playbook that runs it."""
    role = tmp_path / 'zabbix_tcp_status'
    shutil.copytree(role_items.ROLE, str(role), symlinks=True)
    path = role / 'vars' / 'main.yml'
    text = path.read_text()
    table_end = text.index('# The names of the keys the role defines')
    new_row = ''.join('  ' + line + '\n' for line in yaml.safe_dump([row], width=1000).splitlines())
    path.write_text(text[:table_end] + new_row + text[table_end:])
    assert yaml.safe_load(path.read_text())['_zabbix_tcp_status_items'][-1] == row
    play = tmp_path / 'play.yml'
    play.write_text(PLAY.format(role=role))
    return str(play)


@pytest.fixture(scope='module')
def system_agent():
    """The machine's classic agent, held for the module; the repo's own role puts it back as it converges."""
    with open(LOCK, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rc, out = run(['ansible-playbook', 'playbook.yml'])
        assert rc == 0, out[-3000:]
        try:
            yield
        finally:
            rc, out = run(['ansible-playbook', 'playbook.yml'])
            run(['service', 'zabbix-agent', 'stop'])
            assert rc == 0, out[-3000:]


def read(path):
    with open(path) as handle:
        return handle.read()


def test_a_new_row_is_installed_tested_and_verified(system_agent, tmp_path):
    rc, out = run(['ansible-playbook', '-v', role_with(tmp_path, EXTRA_ROW)])
    assert rc == 0, out[-3000:]
    # The UserParameter file: the row's line, its parameter single-quoted.
    assert re.search(r"(?m)^UserParameter=tcp\.status\.extra\[\*\],/etc/zabbix/tcp_status\.py all '\$1'$",
                     read(DROPIN)), read(DROPIN)
    # The agent's item test and then zabbix_get (tasks/ask.yml, included by validate.yml and verify.yml) asked both
    # of the row's checks: each answer (zabbix_tcp_status_ask's results, shown with -v) names its key.
    sections = [part[:part.index('TASK [')] for part in out.split('Ask every key, attempt 1]')[1:]]
    assert len(sections) == 2, out[-3000:]
    item_test, zabbix_get = sections
    for section in (item_test, zabbix_get):
        for key in EXTRA_ROW['checks']:
            assert ' key: {0} '.format(key) in section, section
    # And the agent answers it, with a port filter too.
    answer = subprocess.run(['zabbix_get', '-s', '127.0.0.1', '-k', 'tcp.status.extra[10050]'],
                            capture_output=True, text=True).stdout
    assert answer.startswith('{"ESTABLISHED":'), answer


def test_a_row_whose_answer_is_wrong_stops_the_run_at_the_item_test(system_agent, tmp_path):
    pid = read('/run/zabbix/zabbix_agentd.pid').strip()
    before = read(DROPIN)
    rc, out = run(['ansible-playbook', role_with(tmp_path, WRONG_ROW)])
    assert rc != 0, out[-3000:]
    assert "The agent's own test" in out and 'tcp.status.wrong' in out, out[-3000:]
    assert 'expected a JSON object with every state' in out, out[-3000:]
    assert read(DROPIN) == before, 'the UserParameter file is restored'
    assert read('/run/zabbix/zabbix_agentd.pid').strip() == pid, 'the agent was never restarted'


def test_the_template_follows_the_table_and_the_counter():
    states = role_items.states()
    master = role_items.item('states')['key']
    per_state = role_items.item('count')['key'] + '[{0}]'
    with open(os.path.join(role_items.REPO, 'zabbix', 'template_tcp_status.yaml')) as handle:
        template = yaml.safe_load(handle)['zabbix_export']['templates'][0]
    ports = role_items.item('ports')['key']
    # The agent items (the rest are dependent on them): the table's keys, some with macros as parameters.
    agent_items = [i['key'].split('[')[0] for i in template['items'] if i.get('type', 'ZABBIX_PASSIVE') != 'DEPENDENT']
    assert sorted(agent_items) == sorted([master, ports])
    on_master = [i['key'] for i in template['items'] if i.get('master_item', {}).get('key') == master]
    assert on_master == [per_state.format(s) for s in states]
    xml = ET.parse(os.path.join(role_items.REPO, 'zabbix', 'template_tcp_status_3.4.xml'))
    keys = [k.text for k in xml.findall('./templates/template/items/item/key')]
    assert keys[:len(states) + 1] == [master] + [per_state.format(s) for s in states]
    agent_keys = [item.find('key').text for item in xml.findall('./templates/template/items/item')
                  if item.find('type').text != '18']  # 18: a dependent item
    assert set(key.split('[')[0] for key in agent_keys) <= set(row['key'] for row in role_items.items()), agent_keys


def test_the_userparameter_file_rendered_for_python_is_the_roles(system_agent):
    """What role_items renders for the benchmark's and the lab's private agents is what the role installs."""
    rc, out = run(['ansible-playbook', 'playbook.yml'])
    assert rc == 0, out[-3000:]
    installed = read(DROPIN)
    rendered = role_items.userparameter_conf('/etc/zabbix/tcp_status.py')
    strip = lambda text: [line for line in text.splitlines() if not line.startswith('# ')]  # noqa: E731
    assert strip(rendered) == strip(installed)
    assert len([line for line in strip(installed) if line.startswith('UserParameter=')]) == len(role_items.items())
