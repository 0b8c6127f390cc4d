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

The helpers here (lock, snapshot, fake interpreter, playbook runs) are shared by tests/role/test_role_*.py.
"""
import fcntl
import glob
import hashlib
import os
import re
import signal
import stat
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCK = '/tmp/zts-system-agent.lock'
WATCHED = ['/etc/zabbix', '/etc/ansible/facts.d']
BOOT_LINKS = ['/etc/rc?.d/*zabbix*', '/etc/systemd/system/**/*zabbix*']
RECIPE_KEY = 'tcp.status[LISTEN]'
SEED_KEYS = ['tcp.status[ESTABLISHED]', 'tcp.status[TIME_WAIT]', 'tcp.status[LISTEN]']
SERVICES = {'agent': 'zabbix-agent', 'agent2': 'zabbix-agent2'}
THIEF_PID = '/tmp/zts-fake-thief.pid'


# ------------------------------------------------------------------------------------------------------------
# Helpers, also imported by the other tests/role/test_role_*.py files


class Result(object):
    """A finished command: rc, stdout, and text (stdout with every run of whitespace made one space, since the
    yaml callback folds long messages)."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.stdout = proc.stdout + proc.stderr
        self.text = ' '.join(self.stdout.split())

    def tail(self):
        return self.stdout[-4000:]


def run(args, **kwargs):
    return Result(subprocess.run(args, cwd=ROOT, capture_output=True, text=True, **kwargs))


def playbook(*args, **kwargs):
    return run(['ansible-playbook', 'playbook.yml'] + list(args), **kwargs)


def recap(result, host='localhost'):
    """{'ok': n, 'changed': n, ...} of the host's PLAY RECAP line."""
    match = re.search(r'^%s\s+:\s+(ok=.*)$' % re.escape(host), result.stdout, re.M)
    assert match, result.tail()
    return dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', match.group(1)))


def snapshot(tops=WATCHED):
    """Every file under tops, the role's backups (*~) included: content hash, mode and owner (symlinks: their
    target); plus the agents' boot links and units, so that a change of the boot-enabled state shows."""
    files = {}
    for top in tops:
        for folder, dirs, names in os.walk(top):
            for name in names + dirs:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    files[path] = ('->', os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    files[path] = ('dir', stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
                else:
                    with open(path, 'rb') as handle:
                        digest = hashlib.sha256(handle.read()).hexdigest()
                    files[path] = (digest, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    for pattern in BOOT_LINKS:
        for path in glob.glob(pattern, recursive=True):
            files[path] = ('boot', os.path.realpath(path))
    return files


def assert_same(before, after):
    """Names the files that differ, rather than printing two dicts of hundreds of entries."""
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, 'changed, created or removed: %s' % ['%s: %s -> %s' % (p, before.get(p), after.get(p))
                                                             for p in changed]


def agent_running(flavour='agent'):
    return run(['service', SERVICES[flavour], 'status']).rc == 0


def zabbix_get(key, port=10050):
    return run(['zabbix_get', '-s', '127.0.0.1', '-p', str(port), '-k', key]).stdout.strip()


def wait_for_answer(key, timeout=20, port=10050):
    deadline = time.time() + timeout
    while True:
        value = zabbix_get(key, port)
        if value.isdigit() or time.time() > deadline:
            return value
        time.sleep(0.5)


def prepare(flavour='agent'):
    """The agent as the old recipe leaves it, running (molecule/shared/prepare.yml)."""
    result = run(['ansible-playbook', 'molecule/shared/prepare.yml', '-e', 'zabbix_tcp_status_test_flavour=' + flavour])
    assert result.rc == 0, result.tail()
    assert agent_running(flavour)
    assert wait_for_answer(RECIPE_KEY).isdigit(), 'the recipe answers before the role runs'


def stop_agents():
    for service in SERVICES.values():
        run(['service', service, 'stop'])


@pytest.fixture(scope='module', autouse=True)
def system_agent():
    """Hold the machine's agents for this module; leave them stopped afterwards."""
    with open(LOCK, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            stop_agents()
            for fake in glob.glob('/tmp/zts-fake-*.py'):
                os.remove(fake)


# The fake interpreter. The installed script starts with `#!FAKE -S`, so every call of the script (the agent's
# item test, the agent's UserParameter, the local fact) runs `FAKE -S /etc/zabbix/tcp_status.py ARGS...`. The
# fake runs the real counter with the real Python, then answers what MODE says. Any other call (the role asking
# the interpreter something) goes to the real Python unchanged.
FAKE = r'''#!/usr/bin/python3
import json, os, socket, subprocess, sys, time
MODE = %(mode)r
REAL = '/usr/bin/python3'
args = sys.argv[1:]
if len(args) < 2 or args[0] != '-S':
    os.execv(REAL, [REAL] + args)
params = args[2:]
first = params[0] if params else ''
real = subprocess.run([REAL] + args, stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()


def steal_the_port():
    """A process that takes the agent's port as soon as the agent lets go of it, for two minutes."""
    if os.fork():
        os.wait()
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 4096)
    with open(%(thief)r, 'w') as handle:
        handle.write(str(os.getpid()))
    deadline = time.time() + 120
    # Both of the agent's listening addresses: the agent starts if it can bind either.
    wanted = [(socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')]
    held = []
    while wanted and time.time() < deadline:
        family, address = wanted[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((address, 10050))
        except OSError:
            sock.close()
            time.sleep(0.002)
            continue
        sock.listen(16)
        sock.settimeout(0.5)
        held.append(sock)
        wanted.pop(0)
    while time.time() < deadline:
        for sock in held:
            try:
                sock.accept()[0].close()
            except OSError:
                pass
    os._exit(0)


if first == 'all':
    counts = json.loads(real)
    if MODE == 'json_missing_state':
        del counts['CLOSING']
    elif MODE == 'json_non_numeric':
        counts['ESTABLISHED'], counts['TIME_WAIT'] = 'oops', None
    elif MODE == 'json_negative':
        counts['CLOSING'] = -1
    elif MODE == 'json_all_zero':
        counts = dict((state, 0) for state in counts)
    print(json.dumps(counts, separators=(',', ':')))
elif MODE == 'zero':
    print(0)
elif MODE == 'constant_23':
    print(23)
elif MODE == 'non_integer' and first != 'LISTEN':
    print('oops')
elif MODE == 'non_integer_everywhere':
    print('oops')
elif MODE == 'port_thief' and first == 'TIME_WAIT':
    steal_the_port()
    print('oops')
else:
    print(real)
'''


def fake_python(mode):
    path = '/tmp/zts-fake-%s.py' % mode
    with open(path, 'w') as handle:
        handle.write(FAKE % {'mode': mode, 'thief': THIEF_PID})
    os.chmod(path, 0o755)
    return path


def ss_counts():
    # tests/ is on sys.path through tests/conftest.py
    from ss_oracle import ss_state_counts
    return ss_state_counts()


# ------------------------------------------------------------------------------------------------------------
# Tests


_RECIPE = {}


@pytest.fixture
def recipe_host():
    """The recipe's host, running; returns its snapshot. Each test ends by asserting that its rollback left the
    host exactly so; when it did, the next test starts from there (saves a prepare run), else prepare.yml again."""
    known = _RECIPE.get('snapshot')
    if not (known and snapshot() == known and agent_running('agent') and zabbix_get(RECIPE_KEY).isdigit()
            and 'unknown TCP state' not in zabbix_get('tcp.status[FOO]')):
        prepare('agent')
        _RECIPE['snapshot'] = snapshot()
    return _RECIPE['snapshot']


def assert_old_agent_back(before):
    assert_same(before, snapshot())
    assert agent_running('agent')
    assert wait_for_answer(RECIPE_KEY).isdigit(), 'the recipe answers again'
    assert 'unknown TCP state' not in zabbix_get('tcp.status[FOO]'), 'the recipe\'s script is back, not ours'


def verify_message(key, value):
    """The verify's failure for one key, as the role words it (whitespace normalised)."""
    return re.compile(r"-k '%s'` run on localhost answered '%s'; expected" % (key, value))


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
    # Each lie passes the agent's item test (LISTEN an integer, the JSON with "LISTEN":<digits>), so only the
    # verify after the restart can catch it.
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
        result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python(mode))
        assert result.rc != 0, result.tail()
        assert message.search(result.text), result.tail()
        assert 'Rolled back:' in result.text and 'answers agent.ping again' in result.text, result.tail()
        assert_old_agent_back(recipe_host)
    finally:
        if boot_disabled:
            run(['update-rc.d', 'zabbix-agent', 'enable'])


def test_non_integer_caught_by_the_item_test_before_any_restart(recipe_host):
    pid_before = open('/run/zabbix/zabbix_agentd.pid').read().strip()
    result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python('non_integer_everywhere'))
    assert result.rc != 0, result.tail()
    assert "The agent's own test" in result.text and 'expected one non-negative integer' in result.text, result.tail()
    assert '|oops]' in result.text, result.tail()  # the agent's test prints the value as [t|oops]
    assert 'Rolled back:' in result.text, result.tail()
    assert_old_agent_back(recipe_host)
    assert open('/run/zabbix/zabbix_agentd.pid').read().strip() == pid_before, 'the agent was never restarted'


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
        result = playbook('-e', 'zabbix_tcp_status_python=' + fake_python('port_thief'))
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
