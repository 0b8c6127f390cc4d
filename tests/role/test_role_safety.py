"""The role against this machine's real agent: rollback, check mode, bad input.

Each test resets the agent to the old recipe's state (molecule/shared/prepare.yml), snapshots every file under
/etc/zabbix, runs the real playbook with something that must fail, and asserts that the files are back byte for
byte (content, mode, owner) and that the agent is in the state it was in.
"""
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = '/etc/zabbix/zabbix_agentd.conf'
INCLUDE_DIR = '/etc/zabbix/zabbix_agentd.conf.d'
RECIPE_LINE = 'UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2'

WATCHED = ['/etc/zabbix', '/etc/ansible/facts.d']
RECIPE_KEY = 'tcp.status[LISTEN]'


def run(args, **kwargs):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, **kwargs)


def playbook(*args):
    """A run of the project's playbook; stdout holds stderr too (where ansible-core 2.19 prints the failure)."""
    return subprocess.run(['ansible-playbook', 'playbook.yml'] + list(args), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def snapshot():
    """Content hash, mode and owner of every file under WATCHED, backups (*~) included: none may be left there."""
    files = {}
    for top in WATCHED:
        for folder, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
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


@pytest.fixture
def zabbix_tmp():
    """A directory in /tmp that the agent's user can reach (pytest's tmp_path is root's alone)."""
    path = tempfile.mkdtemp(prefix='zts-safety-', dir='/tmp')
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def answer_zero(zabbix_tmp):
    """An interpreter for the installed script that answers 0 for every key: an agent that lies."""
    path = os.path.join(zabbix_tmp, 'answer-zero')
    with open(path, 'w') as handle:
        handle.write('#!/bin/sh\n# called as: answer-zero -S /etc/zabbix/tcp_status.py STATE ...\n'
                    'if [ "$3" = all ]; then echo \'{"ESTABLISHED":0,"SYN_SENT":0,"SYN_RECV":0,"FIN_WAIT1":0,'
                    '"FIN_WAIT2":0,"TIME_WAIT":0,"CLOSE":0,"CLOSE_WAIT":0,"LAST_ACK":0,"LISTEN":0,"CLOSING":0}\'; '
                    'else echo 0; fi\n')
    os.chmod(path, 0o755)
    return path


def set_config(edit, wait=True):
    """Rewrite the agent's main configuration with edit(text) and restart the agent on it."""
    with open(CONFIG) as handle:
        text = handle.read()
    with open(CONFIG, 'w') as handle:
        handle.write(edit(text))
    assert run(['service', 'zabbix-agent', 'restart']).returncode == 0
    if wait:
        wait_for_agent()


def wait_for_agent():
    for _ in range(50):
        if zabbix_get('agent.ping') == '1':
            return
        time.sleep(0.2)
    raise AssertionError('the agent does not answer: ' + zabbix_get('agent.ping'))


def agent_pid():
    with open('/run/zabbix/zabbix_agentd.pid') as handle:
        return handle.read().strip()


def backups_in_etc():
    return [os.path.join(folder, name) for folder, _dirs, names in os.walk('/etc/zabbix') for name in names
            if name.endswith('~')]


def recap(result):
    return re.search(r'localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)', result.stdout).groups()


def assert_rolled_back(before, result, running):
    assert result.returncode != 0, 'the play must fail'
    assert 'Rolled back: ' in result.stdout, result.stdout[-3000:]
    assert snapshot() == before
    assert agent_running() == running


def test_failed_item_test_restores_every_file_and_keeps_the_agent(recipe_host):
    # The script's interpreter prints nothing: the agent's own item test catches it before any restart.
    result = playbook('-e', 'zabbix_tcp_status_python=/bin/false')
    assert "The agent's own test" in result.stdout
    assert 'expected one non-negative integer' in ' '.join(result.stdout.split()), result.stdout[-3000:]
    assert_rolled_back(recipe_host, result, running=True)
    assert zabbix_get(RECIPE_KEY).isdigit(), 'the recipe still answers'


def test_failed_verify_after_restart_restores_and_restarts_the_old_agent(recipe_host, answer_zero):
    # The installed script answers 0 for every state: the agent's item test accepts an integer, the verify after
    # the restart must not (this host has LISTEN sockets).
    result = playbook('-e', 'zabbix_tcp_status_python=' + answer_zero)
    assert 'RUNNING HANDLER [zabbix_tcp_status : Restart the Zabbix agent]' in result.stdout
    assert "-k 'tcp.status[LISTEN]'` run on localhost answered '0'" in ' '.join(result.stdout.split())
    assert 'restarted with the restored configuration and answers agent.ping again' in ' '.join(result.stdout.split())
    assert_rolled_back(recipe_host, result, running=True)
    assert zabbix_get(RECIPE_KEY).isdigit()
    assert 'unknown TCP state' not in zabbix_get('tcp.status[FOO]'), 'the old script is back, not ours'


def test_failure_on_a_stopped_agent_leaves_it_stopped(recipe_host, answer_zero):
    assert run(['service', 'zabbix-agent', 'stop']).returncode == 0
    before = snapshot()
    result = playbook('-e', 'zabbix_tcp_status_python=' + answer_zero)
    assert 'the agent was stopped again, as it was before the run' in ' '.join(result.stdout.split())
    assert_rolled_back(before, result, running=False)


def test_check_mode_on_a_fresh_host_reports_changes_and_makes_none(recipe_host):
    result = playbook('--check', '--diff')
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r'localhost\s+: ok=\d+\s+changed=[1-9]', result.stdout)
    assert "+UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py '$1' '$2' '$3' '$4'" in result.stdout
    assert '+# UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2' in result.stdout
    assert snapshot() == recipe_host


def test_bad_role_input_fails_before_any_change(recipe_host):
    result = playbook('-e', 'zabbix_tcp_status_agent_flavour=agent3')
    assert result.returncode != 0
    assert 'zabbix_tcp_status_agent_flavour' in result.stdout and 'agent3' in result.stdout
    assert snapshot() == recipe_host




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
    assert first.returncode == 0, first.stdout[-3000:]
    changed = playbook('-e', 'zabbix_tcp_status_json_key=tcp.status.all')
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert 'RUNNING HANDLER [zabbix_tcp_status : Restart the Zabbix agent]' in changed.stdout
    assert agent_running()
    assert backups_in_etc() == [], 'a backup left where the agent loads it'
    assert json.loads(zabbix_get('tcp.status.all'))['LISTEN'] >= 1
    assert all(zabbix_get(key).isdigit() for key in ('tcp.status[ESTABLISHED]', 'tcp.status[TIME_WAIT]',
                                                     'tcp.status[LISTEN]'))
    pid = agent_pid()
    third = playbook('-e', 'zabbix_tcp_status_json_key=tcp.status.all')
    assert recap(third) == ('0', '0'), third.stdout[-3000:]
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
        assert first.returncode == 0, first.stdout[-3000:]
        with open(loaded) as handle:
            assert handle.read().startswith('# ' + RECIPE_LINE + '  # replaced by the zabbix_tcp_status role')
        for path in unloaded:
            with open(path) as handle:
                assert handle.read() == RECIPE_LINE + '\n', path + ' is not loaded by the agent: left alone'
        second = playbook()
        assert recap(second) == ('0', '0'), second.stdout[-3000:]
        assert backups_in_etc() == []
    finally:
        for path in [loaded] + unloaded:
            if os.path.exists(path):
                os.remove(path)


def test_unsafe_userparameters_cannot_run_commands(recipe_host, zabbix_tmp):
    """Defect 3: with UnsafeUserParameters=1, "$1" quoting let $(...) and backticks run."""
    set_config(lambda text: text + 'UnsafeUserParameters=1\n')
    result = playbook()
    assert result.returncode == 0, result.stdout[-3000:]
    assert 'UnsafeUserParameters=1 in /etc/zabbix/zabbix_agentd.conf' in ' '.join(result.stdout.split())
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
    assert result.returncode != 0
    assert 'can be written by a user other than root' in ' '.join(result.stdout.split())
    assert 'Nothing was changed' in result.stdout
    assert snapshot() == recipe_host and os.listdir(str(loose)) == []


def test_server_that_refuses_the_verifier_fails_before_any_change(recipe_host):
    """Defect 6: Server= without the verifier's address failed only after the change and a restart."""
    set_config(lambda text: text.replace('\nServer=127.0.0.1\n', '\nServer=192.0.2.10\n'), wait=False)
    time.sleep(1)
    assert agent_running()
    before = snapshot()
    pid = agent_pid()
    result = playbook()
    text = ' '.join(result.stdout.split())
    assert result.returncode != 0
    assert 'does not allow 127.0.0.1' in text and 'zabbix_tcp_status_verify_from' in text
    assert 'Nothing was changed' in text
    assert snapshot() == before and agent_pid() == pid


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
        assert result.returncode == 0, result.stdout[-3000:]
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
    assert result.returncode == 0, result.stdout[-3000:]
    with open(CONFIG, 'rb') as handle:
        data = handle.read()
    lines = data.split(b'\n')[:-1]
    assert all(line.endswith(b'\r') for line in lines), 'mixed line endings'
    assert all(b'\r' not in line[:-1] for line in lines), 'a CR inside a line'
    assert b'# ' + RECIPE_LINE.encode() + b'  # replaced by the zabbix_tcp_status role' in data
    assert (b"UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py '$1'" in data) == (shape == 'block')
    assert agent_running() and zabbix_get(RECIPE_KEY).isdigit()
    assert recap(playbook()) == ('0', '0'), 'a CRLF file must not change on a rerun'
