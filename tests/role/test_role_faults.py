# -*- coding: utf-8 -*-
"""The promise under faults (issue 19), on this machine's real agent: a controller killed at a task boundary, two
runs at once, a full or read-only include directory, a key whitelist, a PSK verified from another inventory host,
an agent that never loaded the files on disk.

Kills: tests/role/callback_plugins/zts_kill_at.py makes ansible-playbook send itself SIGKILL (or SIGINT) when the
named task is about to start, so each kill falls exactly on a task boundary. After each: (a) restarting the agent
by hand leaves it up with no key defined twice and nothing stray where it loads, (b) the next run exits 0 with every
key verified, (c) the run after changes nothing. The boundaries tested in `make test` are one per state the host can
be in at a boundary of the configure / validate / restart / verify / rollback path (docs/FAULTS.md lists every
boundary and its state); ZTS_FAULTS_ALL=1 kills at every boundary of that path.
"""
import glob
import itertools
import json
import os
import re
import signal
import subprocess
import time

import pytest

from role_run import (CONFIG, INCLUDE_DIR, ROOT, Result, agent_pid, agent_running, assert_same, backups_in_etc,
                      fake_python, playbook, prepare, read, run, set_config, snapshot, unchanged_run,
                      wait_for_agent, write, zabbix_get)
from zabbix_agent_config import describe

pytestmark = pytest.mark.usefixtures('system_agent')

KILLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'callback_plugins')
STATE_DIR = '/var/lib/zabbix_tcp_status'
JOURNAL = os.path.join(STATE_DIR, 'journal.json')
GLOB_INCLUDE = 'Include=/etc/zabbix/zabbix_agentd.conf.d/*.conf'
KEYS = itertools.count(1)


def directory_include(text):
    """CentOS 7's agent 3.0 package: Include= names the directory, which loads every file in it."""
    return text.replace(GLOB_INCLUDE, 'Include=%s/' % INCLUDE_DIR)


SHAPES = {'el7-directory': directory_include, 'glob': lambda text: text}

# Each state a host can be in at a task boundary of the change, and the first task that starts in it: the kill
# tested in make test. (task name, its nth start in the run, the run's kind: change or failing).
BOUNDARIES = [
    ('before the change: lock held, nothing written', "Install the counter script", 1, 'change'),
    ('files written and journaled, agent not restarted', 'Start the item test with every key still to ask', 1,
     'change'),
    ('the restart owed and about to happen', 'Note that the role restarts the agent', 1, 'change'),
    ('agent restarted on the new files, not verified', 'Make sure the agent runs and starts at boot', 1, 'change'),
    ('verified, journal not yet cleared', "Clear the host's journal and release its lock", 1, 'change'),
    ('verify failed, nothing put back yet', 'Put back every file this run changed', 1, 'failing'),
    ('files put back, agent still on the failed files', 'Note whether this run touched', 1, 'failing'),
    ('agent restarted on the put-back files', 'Check that the restored agent answers again', 1, 'failing'),
]


def killed_playbook(task, nth=1, sig='KILL', extra=(), env=None):
    environment = dict(os.environ, ANSIBLE_CALLBACK_PLUGINS=KILLER, ANSIBLE_CALLBACKS_ENABLED='zts_kill_at',
                       ZTS_KILL_AT=task, ZTS_KILL_NTH=str(nth), ZTS_KILL_SIGNAL=sig, **(env or {}))
    result = playbook(*extra, env=environment)
    assert 'zts_kill_at:' in result.stdout, 'the run never reached "%s": %s' % (task, result.tail())
    return result


def stray_files():
    """What must never be where the agent loads: backups, the role's temporary directories."""
    return backups_in_etc() + glob.glob('/etc/zabbix/**/.zabbix_tcp_status.tmp', recursive=True)


def restart_by_hand():
    """(a): the operator's restart (a reboot, a package upgrade) keeps the agent up, each key defined once."""
    assert run(['service', 'zabbix-agent', 'restart']).rc == 0
    wait_for_agent()
    assert agent_running()
    assert describe(CONFIG)['duplicate_keys'] == {}
    assert stray_files() == []


def converge_then_verify(key):
    """(b) and (c): the next run exits 0 with every key verified, and the one after changes nothing."""
    result = playbook('-e', 'zabbix_tcp_status_json_key=' + key)
    assert result.rc == 0, result.tail()
    assert 'TASK [zabbix_tcp_status : Show what the agent answered]' in result.stdout
    assert json.loads(zabbix_get(key))['LISTEN'] >= 1
    assert zabbix_get('tcp.status[LISTEN]').isdigit()
    assert not os.path.exists(JOURNAL)
    again = playbook('-e', 'zabbix_tcp_status_json_key=' + key)
    assert unchanged_run(again), again.tail()
    return result


def current_shape():
    text = read(CONFIG)
    return 'el7-directory' if 'Include=%s/' % INCLUDE_DIR in text else 'glob' if GLOB_INCLUDE in text else None


@pytest.fixture
def shaped_host(system_agent, request):
    """The recipe's host in the given configuration shape with the role converged on it. The previous kill test
    leaves it so (its last run changed nothing): then it is taken as it is."""
    shape = request.param
    ready = (current_shape() == shape and os.path.exists('/etc/zabbix/tcp_status.py') and agent_running()
             and not os.path.exists(JOURNAL))
    if not ready:
        prepare('agent')
        set_config(SHAPES[shape])
        result = playbook()
        assert result.rc == 0, result.tail()
    return shape


def boundaries():
    """(shape, state, task, nth, run kind) of each kill: every state on EL 7's directory include, the states with
    the role's files written on the glob shape; every boundary of docs/FAULTS.md on both with ZTS_FAULTS_ALL=1."""
    if os.environ.get('ZTS_FAULTS_ALL'):
        return [(shape,) + row for shape in sorted(SHAPES) for row in all_boundaries()]
    glob_states = ('files written and journaled, agent not restarted', 'agent restarted on the new files, not verified')
    return [('el7-directory',) + row for row in BOUNDARIES] + [('glob',) + row for row in BOUNDARIES
                                                               if row[0] in glob_states]


def all_boundaries():
    """Every task start of the change path, from the listing docs/FAULTS.md was made from."""
    with open(os.path.join(ROOT, 'docs', 'FAULTS.md')) as handle:
        rows = re.findall(r'^\| (change|failing) \| (\d+) \| `([^`]+)` \| ([^|]+) \|', handle.read(), re.M)
    return [(state.strip(), task, int(nth), kind) for kind, nth, task, state in rows]


@pytest.mark.parametrize('shaped_host,state,task,nth,kind', boundaries(), indirect=['shaped_host'],
                         ids=['{0}: {1}'.format(b[0], b[1]) for b in boundaries()])
def test_killed_at_a_task_boundary(shaped_host, state, task, nth, kind):
    key = 'tcp.status.k%d' % next(KEYS)
    extra = ['-e', 'zabbix_tcp_status_json_key=' + key]
    if kind == 'failing':
        # The running agent's script answers 0 for every state (the truth to the item test): the verify fails.
        extra += ['-e', 'zabbix_tcp_status_python=' + fake_python('all_zero', only_running_agent=True)]
    killed = killed_playbook(task, nth, extra=extra)
    assert killed.rc == -signal.SIGKILL or killed.rc == 128 + signal.SIGKILL, killed.tail()
    assert stray_files() == [], 'a file left where the agent loads it, killed ' + state
    restart_by_hand()
    converge_then_verify(key)


def test_interrupted_with_sigint_during_the_verify(recipe_host):
    key = 'tcp.status.int'
    killed = killed_playbook('Wait until the agent answers zabbix_get', sig='INT',
                             extra=['-e', 'zabbix_tcp_status_json_key=' + key])
    assert killed.rc != 0
    restart_by_hand()
    result = converge_then_verify(key)
    assert 'did not finish: its changes were undone' in result.text, result.tail()


def test_a_killed_runs_journal_is_undone_and_the_agent_restarted(recipe_host):
    """Issue 19 case 1: killed after the write, before the restart. The next run says so, undoes, restarts."""
    result = playbook()
    assert result.rc == 0, result.tail()
    killed_playbook('Start the item test with every key still to ask',
                    extra=['-e', 'zabbix_tcp_status_json_key=tcp.status.all'])
    assert os.path.exists(JOURNAL)
    assert 'Unsupported item key' in zabbix_get('tcp.status.all'), 'the running agent never loaded the file'
    result = converge_then_verify('tcp.status.all')
    assert 'Took over the lock of run' in result.text and 'its controller process' in result.text
    assert 'did not finish: its changes were undone' in result.text
    assert 'RUNNING HANDLER [zabbix_tcp_status : Restart the Zabbix agent]' in result.stdout


def test_an_agent_that_never_loaded_its_files_is_restarted(recipe_host):
    """A file the agent loads changed after the agent started (by hand, or by a run killed before this role kept
    a journal): the run restarts the agent and says why, instead of failing its verify."""
    result = playbook()
    assert result.rc == 0, result.tail()
    dropin = os.path.join(INCLUDE_DIR, 'userparameter_tcp_status.conf')
    time.sleep(1.1)
    write(dropin, read(dropin).replace('tcp.status.json[*]', 'tcp.status.hand[*]'))
    pid = agent_pid()
    result = playbook('-e', 'zabbix_tcp_status_json_key=tcp.status.hand')
    assert result.rc == 0, result.tail()
    assert re.search(r'the running agent \(PID %s, started .*\) has not loaded %s' % (pid, re.escape(dropin)),
                     result.text), result.tail()
    assert agent_pid() != pid
    assert unchanged_run(playbook('-e', 'zabbix_tcp_status_json_key=tcp.status.hand'))


def start(*extra):
    return subprocess.Popen(['ansible-playbook', 'playbook.yml'] + list(extra), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    return Result(subprocess.CompletedProcess(proc.args, proc.returncode, out, ''))


def test_two_runs_started_together_take_turns(recipe_host):
    first = start('-e', 'zabbix_tcp_status_json_key=tcp.status.a')
    second = start('-e', 'zabbix_tcp_status_json_key=tcp.status.b')
    first, second = finish(first), finish(second)
    assert first.rc == 0, first.tail()
    assert second.rc == 0, second.tail()
    waited = [r for r in (first, second) if 'Waited' in r.text and 'to finish' in r.text]
    assert len(waited) == 1, 'exactly one run waited for the other'
    # The run that went last left its configuration in place; the other verified its own before it let go.
    last = 'tcp.status.b' if waited[0] is second else 'tcp.status.a'
    assert json.loads(zabbix_get(last))['LISTEN'] >= 1
    for result in (first, second):
        assert 'Show what the agent answered' in result.stdout


def test_a_second_run_that_cannot_wait_fails_before_any_change_naming_the_first(recipe_host):
    first = start('-e', 'zabbix_tcp_status_json_key=tcp.status.a')
    time.sleep(1)
    before = snapshot()
    second = finish(start('-e', 'zabbix_tcp_status_json_key=tcp.status.b', '-e', 'zabbix_tcp_status_lock_timeout=1'))
    first = finish(first)
    assert first.rc == 0, first.tail()
    assert second.rc != 0, second.tail()
    assert re.search(r'another run of the role holds this host: run \S+ from controller \S+ \(PID \d+, user root\), '
                     r'started ', second.text), second.tail()
    assert 'Nothing was changed' in second.text
    assert json.loads(zabbix_get('tcp.status.a'))['LISTEN'] >= 1, 'the first run\'s configuration is in place'
    assert 'Unsupported item key' in zabbix_get('tcp.status.b')
    assert set(before) - set(snapshot()) == set(), 'the second run removed nothing'


@pytest.fixture
def include_mount(recipe_host):
    """A small tmpfs over the include directory, holding its files; unmounted and the files back after."""
    saved = dict((path, read(path)) for path in glob.glob(INCLUDE_DIR + '/*'))
    assert run(['mount', '-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'zts-include', INCLUDE_DIR]).rc == 0
    for path, text in saved.items():
        write(path, text)
    # The agent restarted on the files as they are now (else it has not loaded them, and the run restarts it).
    assert run(['service', 'zabbix-agent', 'restart']).rc == 0
    wait_for_agent()
    try:
        yield INCLUDE_DIR
    finally:
        run(['umount', INCLUDE_DIR])
        run(['service', 'zabbix-agent', 'restart'])


@pytest.mark.parametrize('fault', ['full', 'read-only'])
def test_a_full_or_read_only_include_directory_fails_before_any_change(include_mount, fault):
    if fault == 'full':
        subprocess.run(['dd', 'if=/dev/zero', 'of=%s/zz-filler' % include_mount, 'bs=4k', 'count=64'],
                       capture_output=True)
        message = 'No space left on device'
    else:
        assert run(['mount', '-o', 'remount,ro', include_mount]).rc == 0
        message = 'Read-only file system'
    before = snapshot()
    pid = agent_pid()
    result = playbook()
    assert result.rc != 0
    assert 'cannot write %s/userparameter_tcp_status.conf: %s' % (include_mount, message) in result.text, \
        result.tail()
    assert 'Nothing was changed (/etc/zabbix/zabbix_agentd.conf restored from its backup)' in result.text
    assert_same(before, snapshot())
    assert agent_pid() == pid and agent_running()
    assert not os.path.exists(JOURNAL)


WHITELIST = 'AllowKey=agent.*\nAllowKey=system.*\nDenyKey=*\n'


@pytest.mark.parametrize('where', ['main', 'included', 'deny-ours'])
def test_a_key_whitelist_fails_before_any_change_or_gets_exactly_our_allow_lines(recipe_host, where):
    hardening = os.path.join(INCLUDE_DIR, '00-hardening.conf')
    if where == 'main':
        set_config(lambda text: text + WHITELIST)
        rule_file, rule = CONFIG, 'DenyKey=*'
    elif where == 'included':
        write(hardening, WHITELIST)
        set_config(lambda text: text)
        rule_file, rule = hardening, 'DenyKey=*'
    else:
        set_config(lambda text: text + 'DenyKey=tcp.status[*]\n')
        rule_file, rule = CONFIG, 'DenyKey=tcp.status[*]'
    try:
        before = snapshot()
        pid = agent_pid()
        refused = playbook()
        assert refused.rc != 0
        assert re.search(r'tcp.status\[\*\] is denied by %s \(%s:\d+\)' % (re.escape(rule), re.escape(rule_file)),
                         refused.text), refused.tail()
        assert 'zabbix_tcp_status_allow_keys: true' in refused.text and 'Nothing was changed' in refused.text
        assert_same(before, snapshot())
        assert agent_pid() == pid
        if where == 'deny-ours':
            # The agent drops a DenyKey whose pattern an AllowKey above it has (and then the AllowKey too): the
            # role cannot allow the key and says so, before any change.
            conflict = playbook('-e', 'zabbix_tcp_status_allow_keys=true')
            assert conflict.rc != 0
            assert re.search(r'DenyKey=tcp.status\[\*\] \(%s:\d+\) names a key of the role exactly' % re.escape(CONFIG),
                             conflict.text), conflict.tail()
            assert 'Nothing was changed' in conflict.text
            assert_same(before, snapshot())
            return
        # Allowed, but the verify fails: the AllowKey lines are rolled back with the rest.
        failing = playbook('-e', 'zabbix_tcp_status_allow_keys=true',
                           '-e', 'zabbix_tcp_status_python=' + fake_python('all_zero', only_running_agent=True))
        assert failing.rc != 0 and 'Rolled back: ' in failing.stdout, failing.tail()
        assert_same(before, snapshot())
        allowed = playbook('-e', 'zabbix_tcp_status_allow_keys=true')
        assert allowed.rc == 0, allowed.tail()
        text = read(rule_file)
        block = text[text.index('# BEGIN zabbix_tcp_status AllowKey'):text.index('# END zabbix_tcp_status AllowKey')]
        assert block.splitlines()[1:] == ['AllowKey=tcp.status', 'AllowKey=tcp.status[*]', 'AllowKey=tcp.status.json',
                                          'AllowKey=tcp.status.json[*]', 'AllowKey=tcp.status.ports',
                                          'AllowKey=tcp.status.ports[*]', 'AllowKey=tcp.status.ports.discovery',
                                          'AllowKey=tcp.status.ports.discovery[*]']
        assert text.index('# END zabbix_tcp_status AllowKey') < text.index('\n' + rule + '\n')
        assert zabbix_get('tcp.status[LISTEN]').isdigit()
        if where != 'deny-ours':
            assert 'ZBX_NOTSUPPORTED' in zabbix_get('vfs.file.size[/etc/passwd]'), 'the whitelist still holds'
        assert unchanged_run(playbook('-e', 'zabbix_tcp_status_allow_keys=true'))
    finally:
        if os.path.exists(hardening):
            os.remove(hardening)


def test_a_psk_verified_from_another_host_is_never_left_on_it(recipe_host, tmp_path):
    """Issue 19 case 6: zabbix_get on the verifier (here an inventory host reached by a local connection) gets the
    agent's PSK on its standard input; a run killed during the verify leaves no copy behind."""
    import pwd
    psk = '/etc/zabbix/zts-test.psk'
    secret = os.urandom(32).hex()
    write(psk, secret + '\n')
    os.chown(psk, pwd.getpwnam('zabbix').pw_uid, 0)
    os.chmod(psk, 0o400)
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text('zabbix_agents:\n  hosts:\n    localhost:\n      ansible_connection: local\n'
                         '      ansible_python_interpreter: "{{ ansible_playbook_python }}"\n'
                         'verifiers:\n  hosts:\n    zts-verifier:\n      ansible_connection: local\n'
                         '      ansible_python_interpreter: "{{ ansible_playbook_python }}"\n')
    # The verifier is this machine under another name: its zabbix_get connection is counted on both ends, one
    # ESTABLISHED socket more than a verifier elsewhere adds (the tolerance of one).
    extra = ['-i', str(inventory), '-e', 'zabbix_tcp_status_verify_from=zts-verifier',
             '-e', 'zabbix_tcp_status_verify_address=127.0.0.1', '-e', 'zabbix_tcp_status_verify_tolerance=1']
    original = read(CONFIG)
    try:
        set_config(lambda text: text + 'TLSConnect=psk\nTLSAccept=psk\nTLSPSKIdentity=zts-test\nTLSPSKFile=%s\n' % psk,
                   wait=False)
        time.sleep(1)
        extra += ['-e', 'zabbix_tcp_status_json_key=tcp.status.p']
        killed_playbook('Ask every key, attempt 1', nth=2, extra=extra)
        result = playbook(*extra)
        assert result.rc == 0, result.tail()
        left = subprocess.run(['grep', '-rl', secret, '/tmp', '/root/.ansible'], capture_output=True, text=True)
        assert left.stdout == '', 'the PSK is on disk: ' + left.stdout
        assert glob.glob('/tmp/zabbix_tcp_status_psk.*') == []
    finally:
        # The agent back on a configuration without the PSK, before the PSK file goes.
        write(CONFIG, original)
        run(['service', 'zabbix-agent', 'restart'])
        os.remove(psk)
