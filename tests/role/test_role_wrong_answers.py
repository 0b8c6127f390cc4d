"""The role's verify against an agent that answers wrong: every wrong answer must fail the run and roll back.

Each test resets this machine's real agent to the old recipe's state (molecule/shared/prepare.yml), points the
installed script's shebang at a fake interpreter (-e zabbix_tcp_status_python=/tmp/zts-fake-MODE.py) that runs
the real counter and then lies the way MODE says, runs the real playbook, and asserts:

- the run fails, with the message of the check that caught the lie (the agent's own item test before the
  restart, or the verify after it, naming the key and the answer);
- every file under /etc/zabbix and /etc/ansible/facts.d is back byte for byte, mode and owner, the role's
  backups (*~) included, and so are the boot links (/etc/rc?.d/*zabbix*, /etc/systemd/system/**/zabbix*);
- the agent runs again and answers the recipe's key with the recipe's script.

The last test makes the agent unable to come back after the rollback (its port taken while it restarts) and
asserts that the run says so instead of claiming a restart.

The helpers (lock, snapshot, fake interpreter, playbook runs) are tests/role/role_run.py and conftest.py.
"""
import os
import signal

import pytest

from role_run import (RECIPE_KEY, SEED_KEYS, THIEF_PID, agent_pid, agent_running, assert_same, fake_python, playbook,
                      run, snapshot, ss_counts, verify_message, wait_for_answer, zabbix_get)

pytestmark = pytest.mark.usefixtures('system_agent')


# ------------------------------------------------------------------------------------------------------------
# Tests


def assert_old_agent_back(before):
    assert_same(before, snapshot())
    assert agent_running('agent')
    assert wait_for_answer(RECIPE_KEY).isdigit(), 'the recipe answers again'
    assert 'unknown TCP state' not in zabbix_get('tcp.status[FOO]'), 'the recipe\'s script is back, not ours'


SEED = r'tcp\.status\[(?:ESTABLISHED|TIME_WAIT|LISTEN)\]'
JSON_KEY = r'tcp\.status\.json'
CAUGHT_AFTER_RESTART = [
    # mode, the message that must name the lie
    ('zero', verify_message(SEED, '0')),
    ('constant_23', verify_message(SEED, '23')),
    ('non_integer', verify_message(r'tcp\.status\[(?:ESTABLISHED|TIME_WAIT)\]', 'oops')),
    ('json_missing_state', verify_message(JSON_KEY, r'\{[^\']*\}')),
    ('json_non_numeric', verify_message(JSON_KEY, r'\{"ESTABLISHED":"oops"[^\']*\}')),
    ('json_negative', verify_message(JSON_KEY, r'\{[^\']*"CLOSING":-1\}')),
    ('json_all_zero', verify_message(JSON_KEY, r'\{"ESTABLISHED":0,[^\']*"LISTEN":0,"CLOSING":0\}')),
]


@pytest.mark.parametrize('mode, message', CAUGHT_AFTER_RESTART, ids=[c[0] for c in CAUGHT_AFTER_RESTART])
def test_wrong_answer_after_the_restart_fails_and_rolls_back(recipe_host, mode, message):
    # The fake tells the agent's item test the truth (the item test judges answers as the verify does, since the
    # item table), so that only the running agent lies and the verify after the restart must catch it.
    if mode == 'constant_23':
        counts = ss_counts()
        assert min(counts.get(k[11:-1], 0) for k in SEED_KEYS) <= 10, (
            'this test needs a seed state with well under 23 sockets on the host: %s' % counts)
    boot_disabled = mode == 'zero'
    if boot_disabled:
        # The rollback also restores the boot-enabled state: start from an agent disabled at boot.
        assert run(['update-rc.d', 'zabbix-agent', 'disable']).rc == 0
        recipe_host = snapshot()
    try:
        result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python(mode, only_running_agent=True))
        assert result.rc != 0, result.tail()
        assert message.search(result.text), result.tail()
        assert 'Rolled back:' in result.text and 'answers agent.ping again' in result.text, result.tail()
        assert_old_agent_back(recipe_host)
    finally:
        if boot_disabled:
            run(['update-rc.d', 'zabbix-agent', 'enable'])


def test_non_integer_caught_by_the_item_test_before_any_restart(recipe_host):
    pid_before = agent_pid()
    result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python('non_integer_everywhere'))
    assert result.rc != 0, result.tail()
    assert "The agent's own test" in result.text and 'expected one non-negative integer' in result.text, result.tail()
    assert '|oops]' in result.text, result.tail()  # the agent's test prints the value as [t|oops]
    assert 'Rolled back:' in result.text, result.tail()
    assert_old_agent_back(recipe_host)
    assert agent_pid() == pid_before, 'the agent was never restarted'


def _kill_thief():
    try:
        with open(THIEF_PID) as handle:
            pid = int(handle.read())
    except (IOError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os.remove(THIEF_PID)
    return True


def test_agent_that_does_not_come_back_after_the_rollback_is_reported(recipe_host):
    # The fake answers 'oops' for tcp.status[TIME_WAIT] (the verify fails) and, on that call, leaves a process
    # behind that takes port 10050 the moment the agent lets go of it: the rollback's restart cannot bring the
    # agent back. The run must say so, not claim a restart; the files must be back all the same.
    _kill_thief()
    try:
        result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python('port_thief', only_running_agent=True))
        assert os.path.exists(THIEF_PID), 'the fake did not run: ' + result.tail()
        assert result.rc != 0, result.tail()
        assert verify_message(r'tcp\.status\[TIME_WAIT\]', 'oops').search(result.text), result.tail()
        assert 'Rolled back:' in result.text and 'DOES NOT ANSWER' in result.text, result.tail()
        assert 'answers agent.ping again' not in result.text
        assert zabbix_get('agent.ping') != '1'
        assert_same(recipe_host, snapshot())
    finally:
        _kill_thief()
    # The old configuration itself is sound: once the port is free, the agent starts on it.
    assert run(['service', 'zabbix-agent', 'restart']).rc == 0
    assert wait_for_answer(RECIPE_KEY).isdigit()
