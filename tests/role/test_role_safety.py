"""The role against this machine's real agent: rollback, check mode, bad input.

Each test starts from the old recipe's state (molecule/shared/prepare.yml, or the previous test's host when its
rollback left it so byte for byte: fixture recipe_host), snapshots every file under /etc/zabbix and
/etc/ansible/facts.d and the boot links, runs the real playbook with something that must fail, and asserts that the
files are back byte for byte (content, mode, owner) and that the agent is in the state it was in. Helpers:
role_run.py.
"""
import json
import os
import pwd
import time

import pytest

from role_run import (CONFIG, INCLUDE_DIR, RECIPE_KEY, RECIPE_LINE, agent_pid, agent_running, assert_same,
                      backups_in_etc, fake_python, playbook, recap, run, set_config, snapshot, unchanged_run,
                      wait_for_agent, zabbix_get)

pytestmark = pytest.mark.usefixtures('system_agent')


def assert_rolled_back(before, result, running):
    assert result.rc != 0, 'the play must fail'
    assert 'Rolled back: ' in result.stdout, result.tail()
    assert_same(before, snapshot())
    assert agent_running() == running


def test_failed_item_test_restores_every_file_and_keeps_the_agent(recipe_host):
    # The script's interpreter prints nothing: the agent's own item test catches it before any restart.
    result = playbook('-e', 'zabbix_tcp_status_python=/bin/false')
    assert "The agent's own test" in result.stdout
    assert 'expected one non-negative integer' in result.text, result.tail()
    assert_rolled_back(recipe_host, result, running=True)
    assert zabbix_get(RECIPE_KEY).isdigit(), 'the recipe still answers'


def test_failed_verify_after_restart_restores_and_restarts_the_old_agent(recipe_host):
    # The installed script answers 0 for every state to the running agent (the truth to the agent's item test): the
    # verify after the restart must not accept it (this host has LISTEN sockets).
    result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python('all_zero', only_running_agent=True))
    assert 'RUNNING HANDLER [zabbix_tcp_status : Restart the Zabbix agent]' in result.stdout
    assert "-k 'tcp.status[LISTEN]'` run on localhost answered '0'" in result.text
    assert 'restarted with the restored configuration and answers agent.ping again' in result.text
    assert_rolled_back(recipe_host, result, running=True)
    assert zabbix_get(RECIPE_KEY).isdigit()
    assert 'unknown TCP state' not in zabbix_get('tcp.status[FOO]'), 'the old script is back, not ours'


def test_failure_on_a_stopped_agent_leaves_it_stopped(recipe_host):
    assert run(['service', 'zabbix-agent', 'stop']).rc == 0
    before = snapshot()
    result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python('all_zero', only_running_agent=True))
    assert 'the agent was stopped again, as it was before the run' in result.text
    assert_rolled_back(before, result, running=False)


def test_check_mode_on_a_fresh_host_reports_changes_and_makes_none(recipe_host):
    result = playbook('--check', '--diff')
    assert result.rc == 0, result.tail()
    assert recap(result)['changed'] >= 1, result.tail()
    assert "+UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py '$1' '$2' '$3' '$4'" in result.stdout
    assert '+# UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2' in result.stdout
    assert_same(recipe_host, snapshot())


def test_bad_role_input_fails_before_any_change(recipe_host):
    result = playbook('-e', 'zabbix_tcp_status_agent_flavour=agent3')
    assert result.rc != 0
    assert 'zabbix_tcp_status_agent_flavour' in result.stdout and 'agent3' in result.stdout
    assert_same(recipe_host, snapshot())


# ------------------------------------------------------------------------------------------------------------
# Issue 9: agent configuration shapes real fleets have


def directory_include(text):
    """CentOS 7's agent 3.0 package: Include= names the directory, which loads every file in it."""
    return text.replace('Include=/etc/zabbix/zabbix_agentd.conf.d/*.conf', 'Include=%s/' % INCLUDE_DIR)


def test_directory_include_changed_rerun_keeps_the_agent_up(recipe_host):
    """Defect 1: a changed rerun put the template's backup (*~) in the directory, the agent saw tcp.status twice,
    refused to start, and the rollback restarted it into the same duplicate."""
    set_config(directory_include)
    first = playbook()
    assert first.rc == 0, first.tail()
    changed = playbook('-e', 'zabbix_tcp_status_json_key=tcp.status.all')
    assert changed.rc == 0, changed.tail()
    assert 'RUNNING HANDLER [zabbix_tcp_status : Restart the Zabbix agent]' in changed.stdout
    assert agent_running()
    assert backups_in_etc() == [], 'a backup left where the agent loads it'
    assert json.loads(zabbix_get('tcp.status.all'))['LISTEN'] >= 1
    assert all(zabbix_get(key).isdigit() for key in ('tcp.status[ESTABLISHED]', 'tcp.status[TIME_WAIT]',
                                                     'tcp.status[LISTEN]'))
    pid = agent_pid()
    third = playbook('-e', 'zabbix_tcp_status_json_key=tcp.status.all')
    assert unchanged_run(third), third.tail()
    assert agent_pid() == pid, 'an unchanged run restarted the agent'
    assert os.listdir('/var/lib/zabbix_tcp_status/backup'), 'the backups are kept outside the include directory'


def test_recipe_line_in_the_include_directory_is_handled_once(recipe_host):
    """Defect 2: the recipe's line in a file of the include directory; files the agent never loads stay as
    they are, and the second run changes nothing."""
    set_config(lambda text: text.replace(RECIPE_LINE + '\n', ''))
    loaded = os.path.join(INCLUDE_DIR, 'tcp_connections.conf')
    unloaded = [os.path.join(INCLUDE_DIR, name) for name in ('tcp_connections.conf.rpmsave', 'old.conf.disabled')]
    for path in [loaded] + unloaded:
        with open(path, 'w') as handle:
            handle.write(RECIPE_LINE + '\n')
    wait_for_agent()
    try:
        first = playbook()
        assert first.rc == 0, first.tail()
        with open(loaded) as handle:
            assert handle.read().startswith('# ' + RECIPE_LINE + '  # replaced by the zabbix_tcp_status role')
        for path in unloaded:
            with open(path) as handle:
                assert handle.read() == RECIPE_LINE + '\n', path + ' is not loaded by the agent: left alone'
        second = playbook()
        assert unchanged_run(second), second.tail()
        assert backups_in_etc() == []
    finally:
        for path in [loaded] + unloaded:
            if os.path.exists(path):
                os.remove(path)


def test_unsafe_userparameters_cannot_run_commands(recipe_host, zabbix_tmp):
    """Defect 3: with UnsafeUserParameters=1, "$1" quoting let $(...) and backticks run."""
    set_config(lambda text: text + 'UnsafeUserParameters=1\n')
    result = playbook()
    assert result.rc == 0, result.tail()
    assert 'UnsafeUserParameters=1 in /etc/zabbix/zabbix_agentd.conf' in result.text
    for key in ('tcp.status[$(touch {0}/dollar)]', 'tcp.status[`touch {0}/tick`]', 'tcp.status.json[$(touch {0}/j)]'):
        answer = zabbix_get(key.format(zabbix_tmp))
        assert 'unknown TCP state' in answer or 'bad port' in answer, answer
    assert os.listdir(zabbix_tmp) == [], 'a key parameter ran a command'


def test_script_directory_writable_by_others_is_refused_before_any_change(recipe_host, tmp_path):
    """Defect 4: whoever can write the script's directory can replace what the agent and the root fact run."""
    loose = tmp_path / 'scripts'
    loose.mkdir()
    loose.chmod(0o1777)
    result = playbook('-e', 'zabbix_tcp_status_script_dir=' + str(loose))
    assert result.rc != 0
    assert 'can be written by a user other than root' in result.text
    assert 'Nothing was changed' in result.stdout
    assert_same(recipe_host, snapshot())
    assert os.listdir(str(loose)) == []


def test_server_that_refuses_the_verifier_fails_before_any_change(recipe_host):
    """Defect 6: Server= without the verifier's address failed only after the change and a restart."""
    set_config(lambda text: text.replace('\nServer=127.0.0.1\n', '\nServer=192.0.2.10\n'), wait=False)
    time.sleep(1)
    assert agent_running()
    before = snapshot()
    pid = agent_pid()
    result = playbook()
    text = result.text
    assert result.rc != 0
    assert 'does not allow 127.0.0.1' in text and 'zabbix_tcp_status_verify_from' in text
    assert 'Nothing was changed' in text
    assert_same(before, snapshot())
    assert agent_pid() == pid


def test_psk_agent_is_verified_through_tls(recipe_host):
    """Defect 6: an agent that accepts only PSK connections; zabbix_get gets the agent's TLS settings."""
    psk = '/etc/zabbix/zts-test.psk'
    with open(psk, 'w') as handle:
        handle.write(os.urandom(32).hex() + '\n')
    os.chown(psk, pwd.getpwnam('zabbix').pw_uid, 0)
    os.chmod(psk, 0o400)
    set_config(lambda text: text + 'TLSConnect=psk\nTLSAccept=psk\nTLSPSKIdentity=zts-test\nTLSPSKFile=%s\n' % psk,
               wait=False)
    time.sleep(1)
    assert agent_running()
    assert zabbix_get('agent.ping') == '', 'the agent must refuse an unencrypted connection'
    try:
        result = playbook()
        assert result.rc == 0, result.tail()
        answer = run(['zabbix_get', '-s', '127.0.0.1', '-k', 'tcp.status[LISTEN]', '--tls-connect', 'psk',
                      '--tls-psk-identity', 'zts-test', '--tls-psk-file', psk]).stdout.strip()
        assert answer.isdigit() and int(answer) >= 1, answer
    finally:
        os.remove(psk)


@pytest.mark.parametrize('shape', ['include', 'block'])
def test_crlf_configuration_keeps_its_line_endings(recipe_host, shape):
    """Defect 8: the commented line got a CR in its middle; the file ended with mixed endings. With no Include=,
    the role's marked block goes into the CRLF file itself."""
    def crlf(text):
        if shape == 'block':
            text = text.replace('Include=/etc/zabbix/zabbix_agentd.conf.d/*.conf\n', '')
        return text.replace('\n', '\r\n')
    set_config(crlf)
    result = playbook()
    assert result.rc == 0, result.tail()
    with open(CONFIG, 'rb') as handle:
        data = handle.read()
    lines = data.split(b'\n')[:-1]
    assert all(line.endswith(b'\r') for line in lines), 'mixed line endings'
    assert all(b'\r' not in line[:-1] for line in lines), 'a CR inside a line'
    assert b'# ' + RECIPE_LINE.encode() + b'  # replaced by the zabbix_tcp_status role' in data
    assert (b"UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py '$1'" in data) == (shape == 'block')
    assert agent_running() and zabbix_get(RECIPE_KEY).isdigit()
    assert unchanged_run(playbook()), 'a CRLF file must not change on a rerun'
