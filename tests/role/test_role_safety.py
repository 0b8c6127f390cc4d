"""The role against this machine's real agent: rollback, check mode, bad input.

Each test resets the agent to the old recipe's state (molecule/shared/prepare.yml), snapshots every file under
/etc/zabbix, runs the real playbook with something that must fail, and asserts that the files are back byte for
byte (content, mode, owner) and that the agent is in the state it was in.
"""
import fcntl
import hashlib
import os
import re
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WATCHED = ['/etc/zabbix', '/etc/ansible/facts.d']
RECIPE_KEY = 'tcp.status[LISTEN]'


def run(args, **kwargs):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, **kwargs)


def playbook(*args):
    return run(['ansible-playbook', 'playbook.yml'] + list(args))


def snapshot():
    """Content hash, mode and owner of every file under WATCHED, except the role's own backups (*~)."""
    files = {}
    for top in WATCHED:
        for folder, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith('~'):
                    continue
                info = os.lstat(path)
                with open(path, 'rb') as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                files[path] = (digest, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return files


def agent_running():
    return run(['service', 'zabbix-agent', 'status']).returncode == 0


def zabbix_get(key):
    return run(['zabbix_get', '-s', '127.0.0.1', '-k', key]).stdout.strip()


@pytest.fixture(scope='module', autouse=True)
def system_agent():
    """Hold the machine's agent for this module; leave it stopped afterwards."""
    with open('/tmp/zts-system-agent.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        run(['service', 'zabbix-agent', 'stop'])
        run(['service', 'zabbix-agent2', 'stop'])


@pytest.fixture
def recipe_host():
    """The agent as the old recipe leaves it, running; returns the snapshot of its files."""
    result = run(['ansible-playbook', 'molecule/shared/prepare.yml', '-e', 'zabbix_tcp_status_test_flavour=agent'])
    assert result.returncode == 0, result.stdout[-3000:]
    assert agent_running()
    assert zabbix_get(RECIPE_KEY).isdigit(), 'the recipe answers before the role runs'
    return snapshot()


def assert_rolled_back(before, result, running):
    assert result.returncode != 0, 'the play must fail'
    assert 'Rolled back: ' in result.stdout, result.stdout[-3000:]
    assert snapshot() == before
    assert agent_running() == running


def test_failed_item_test_restores_every_file_and_keeps_the_agent(recipe_host):
    # The script's interpreter prints nothing: the agent's own item test catches it before any restart.
    result = playbook('-e', 'zabbix_tcp_status_python=/bin/false')
    assert "The agent's own test" in result.stdout and 'did not return an integer' in result.stdout
    assert_rolled_back(recipe_host, result, running=True)
    assert zabbix_get(RECIPE_KEY).isdigit(), 'the recipe still answers'


def test_failed_verify_after_restart_restores_and_restarts_the_old_agent(recipe_host):
    # Nothing listens on port 10099: the verify cannot succeed after the agent was restarted on the new config.
    result = playbook('-e', 'zabbix_tcp_status_verify_port=10099')
    assert 'RUNNING HANDLER [zabbix_tcp_status : Restart the Zabbix agent]' in result.stdout
    assert 'zabbix_get -s 127.0.0.1 -p 10099' in result.stdout
    assert 'restarted with the restored configuration' in result.stdout
    assert_rolled_back(recipe_host, result, running=True)
    assert zabbix_get(RECIPE_KEY).isdigit()
    assert 'unknown TCP state' not in zabbix_get('tcp.status[FOO]'), 'the old script is back, not ours'


def test_failure_on_a_stopped_agent_leaves_it_stopped(recipe_host):
    assert run(['service', 'zabbix-agent', 'stop']).returncode == 0
    before = snapshot()
    result = playbook('-e', 'zabbix_tcp_status_verify_port=10099')
    assert 'stopped as it was' in result.stdout
    assert_rolled_back(before, result, running=False)


def test_check_mode_on_a_fresh_host_reports_changes_and_makes_none(recipe_host):
    result = playbook('--check', '--diff')
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r'localhost\s+: ok=\d+\s+changed=[1-9]', result.stdout)
    assert '+UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py "$1" "$2" "$3" "$4"' in result.stdout
    assert '+# UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2' in result.stdout
    assert snapshot() == recipe_host


def test_bad_role_input_fails_before_any_change(recipe_host):
    result = playbook('-e', 'zabbix_tcp_status_agent_flavour=agent3')
    assert result.returncode != 0
    assert 'zabbix_tcp_status_agent_flavour' in result.stdout and 'agent3' in result.stdout
    assert snapshot() == recipe_host


def test_wrong_count_names_the_key_the_answer_and_what_to_check(recipe_host):
    # A tolerance no count can meet: the agent answers, but the verify must reject the answer and say why.
    result = playbook('-e', 'zabbix_tcp_status_verify_tolerance=-1000000')
    assert "-k 'tcp.status[ESTABLISHED]'` run on localhost answered '" in result.stdout
    assert 'expected an integer within -1000000 of the module' in result.stdout
    assert 'Check: Server= in /etc/zabbix/zabbix_agentd.conf' in result.stdout
    assert_rolled_back(recipe_host, result, running=True)
