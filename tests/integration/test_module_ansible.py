# -*- coding: utf-8 -*-
"""The tcp_status module through real ansible runs from the repo root (ansible.cfg there finds the module):
ad hoc and in a playbook, normal and check mode, with the controller's ansible-core (2.19, target = the
venv's Python 3.11) and with ansible-core 2.16 on Python 2.7 and 3.6 targets (CentOS 7's interpreters)."""

import json
import os
import re
import subprocess

import pytest

from interpreters import find_interpreters
from tcp_live import LIBRARY, REPO, STATES, VENV_BIN, agree_despite_churn, ansible_env, refuse_sock_diag, \
    run_adhoc, run_adhoc_hosts, run_playbook, settle, ss_counts, within, zero_counts

PLAYBOOK = os.path.join('tests', 'integration', 'module_playbook.yml')


@pytest.fixture
def scene(farm):
    """The sockets module_playbook.yml expects (see its header)."""
    v4 = farm.listener('ipv4')
    v6 = farm.listener('ipv6')
    dual = farm.listener('dual')
    farm.pair(v4)
    farm.pair(v4)
    farm.time_wait(v4)
    farm.close_wait(v4)
    farm.pair(v6, client='ipv6')
    farm.pair(dual, client='ipv4')
    want = zero_counts()
    want.update(LISTEN=1, ESTABLISHED=2, CLOSE_WAIT=1)
    assert settle(want, local=(v4,)) == want
    want = zero_counts()
    want.update(ESTABLISHED=2, TIME_WAIT=1, FIN_WAIT2=1)
    assert settle(want, remote=(v4,)) == want
    return {'v4': v4, 'v6': v6, 'dual': dual}


def assert_full_result(result):
    assert result['changed'] is False
    assert sorted(result['counts']) == sorted(STATES)
    assert all(type(value) is int for value in result['counts'].values())
    assert result['total'] == sum(result['counts'].values())
    assert result['backend'] == 'counters' and result['family'] == 'all' and result['fallbacks'] == []
    fact = result['ansible_facts']['tcp_status']
    assert fact['counts'] == result['counts'] and fact['total'] == result['total'] and fact['fallbacks'] == []
    assert fact['local_ports'] == [] and fact['remote_ports'] == []


def disagreements(result, before, after):
    return ['{0}: module {1}, ss {2} then {3}'.format(state, result['counts'][state], before[state], after[state])
            for state in STATES if not within(result['counts'][state], before[state], after[state])]


@pytest.mark.parametrize('check', [False, True], ids=['normal', 'check_mode'])
def test_adhoc_counts_match_ss(scene, check):
    def compare():
        before = ss_counts()
        status, result, proc = run_adhoc(check=check)
        after = ss_counts()
        assert status == 'SUCCESS' and proc.returncode == 0, proc.stdout + proc.stderr
        assert_full_result(result)
        return disagreements(result, before, after)
    agree_despite_churn(compare)


def test_adhoc_oneline_fleet_view(scene):
    status, result, proc = run_adhoc(oneline=True)
    assert status == 'SUCCESS' and proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(result['counts']) == sorted(STATES) and result['backend'] == 'counters'


def test_adhoc_options(scene):
    status, result, proc = run_adhoc('states=LISTEN,time-wait,Estab local_ports={0} family=ipv4 backend=proc'.format(
        scene['v4']))
    assert status == 'SUCCESS', proc.stdout + proc.stderr
    assert result['counts'] == {'LISTEN': 1, 'TIME_WAIT': 0, 'ESTABLISHED': 2}
    assert (result['backend'], result['family'], result['total']) == ('proc', 'ipv4', 3)
    assert result['ansible_facts']['tcp_status']['local_ports'] == [str(scene['v4'])]


REFUSED = 'netlink: cannot open a NETLINK_SOCK_DIAG socket: [Errno 13] Permission denied'
REFUSED_WARNING = '[WARNING]: tcp_status counted with the proc backend; tried first: ' + REFUSED


def test_adhoc_says_why_netlink_was_not_used(scene):
    """Refused the sock_diag socket (EACCES, as SELinux refuses it on EL), auto counts from /proc and says why."""
    status, result, proc = run_adhoc('local_ports={0}'.format(scene['v4']), preexec_fn=refuse_sock_diag)
    assert status == 'SUCCESS', proc.stdout + proc.stderr
    want = zero_counts()
    want.update(LISTEN=1, ESTABLISHED=2, CLOSE_WAIT=1)
    assert (result['backend'], result['counts'], result['fallbacks']) == ('proc', want, [REFUSED])
    assert result['ansible_facts']['tcp_status']['fallbacks'] == [REFUSED]
    assert REFUSED_WARNING in ' '.join(proc.stderr.split()), proc.stderr
    _status, result, proc = run_adhoc('local_ports={0}'.format(scene['v4']))
    assert (result['backend'], result['counts'], result['fallbacks']) == ('netlink', want, [])
    assert 'WARNING' not in proc.stderr, proc.stderr


def test_adhoc_unsupported_option_fails():
    """Bad values of every option are failed in module_playbook.yml; an unknown option fails here."""
    status, result, proc = run_adhoc('nonsense=1')
    assert status == 'FAILED!' and proc.returncode != 0
    assert 'nonsense' in result['msg'] and 'counts' not in result, result['msg']


def test_adhoc_states_all_means_every_state():
    """The unknown-state message offers "or all": the module accepts all, alone or among other states."""
    for value in ('all', 'ALL', 'LISTEN,all'):
        status, result, proc = run_adhoc('states={0}'.format(value))
        assert status == 'SUCCESS', (value, result.get('msg'), proc.stderr)
        assert sorted(result['counts']) == sorted(STATES), value
    status, result, _proc = run_adhoc('states=bogus')
    assert status == 'FAILED!' and 'or all' in result['msg'], result


@pytest.mark.parametrize('check', [False, True], ids=['normal', 'check_mode'])
def test_playbook(scene, check):
    extra_vars = {'zts': dict(scene, backends=['netlink', 'proc', 'psutil'], psutil_missing=False)}
    proc = run_playbook(PLAYBOOK, extra_vars, check=check)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert 'failed=0' in proc.stdout and 'ok=' in proc.stdout


def test_ansible_doc_renders():
    env = ansible_env()
    proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-doc'), '-M', LIBRARY, 'tcp_status'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and 'ERROR' not in proc.stderr, proc.stderr
    for word in ('tcp_status', 'states', 'family', 'local_ports', 'remote_ports', 'backend', 'EXAMPLES',
                 'RETURN VALUES', 'check_mode'):
        assert word in proc.stdout, word
    proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-doc'), '-M', LIBRARY, '--json', 'tcp_status'], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(proc.stdout)['tcp_status']
    options = doc['doc']['options']
    assert sorted(options) == ['backend', 'family', 'local_ports', 'max_ports', 'per_port', 'remote_ports', 'states']
    assert options['family']['choices'] == ['all', 'ipv4', 'ipv6']
    assert options['backend']['choices'] == ['auto', 'counters', 'netlink', 'proc', 'psutil']
    assert doc['doc']['attributes']['check_mode']['support'] == 'full'
    returns = doc['return']
    for key, kind in (('counts', 'dict'), ('total', 'int'), ('backend', 'str'), ('family', 'str'),
                      ('fallbacks', 'list'), ('ansible_facts', 'dict')):
        assert returns[key]['type'] == kind and 'sample' in returns[key] or key == 'ansible_facts', key
    assert doc['examples'].strip()


# --------------------------------------------------------------------------------------------------
# ansible-core 2.16 with Python 2.7 and 3.6 targets (CentOS 7)
# --------------------------------------------------------------------------------------------------

OLD_TARGETS = {'py27': '2.7', 'py36': '3.6'}


@pytest.fixture
def old_targets(tmp_path):
    """An inventory of two local hosts, one for each old interpreter (skipped unless both are installed)."""
    found = find_interpreters(OLD_TARGETS.values())
    missing = sorted(set(OLD_TARGETS.values()) - set(found))
    if missing:
        pytest.skip('Python {0} not installed here'.format(', '.join(missing)))
    inventory = tmp_path / 'old-targets.yml'
    hosts = dict((name, {'ansible_connection': 'local', 'ansible_python_interpreter': found[version]})
                 for name, version in OLD_TARGETS.items())
    inventory.write_text(json.dumps({'old_targets': {'hosts': hosts}}))
    return ['-i', str(inventory)]


@pytest.mark.parametrize('check', [False, True], ids=['normal', 'check_mode'])
def test_adhoc_on_old_targets(scene, ansible_216, old_targets, check):
    def compare():
        before = ss_counts()
        results, proc = run_adhoc_hosts(extra=old_targets, bin_dir=ansible_216, check=check, pattern='old_targets')
        after = ss_counts()
        assert sorted(results) == sorted(OLD_TARGETS), proc.stdout + proc.stderr
        off = []
        for host, (status, result) in sorted(results.items()):
            assert status == 'SUCCESS', (host, result)
            assert_full_result(result)
            off += [host + ' ' + line for line in disagreements(result, before, after)]
        return off
    agree_despite_churn(compare)


def test_refused_netlink_on_old_targets(scene, ansible_216, old_targets):
    results, proc = run_adhoc_hosts('states=LISTEN,ESTABLISHED local_ports={0}'.format(scene['v4']),
                                    extra=old_targets, bin_dir=ansible_216, pattern='old_targets',
                                    preexec_fn=refuse_sock_diag)
    assert sorted(results) == sorted(OLD_TARGETS), proc.stdout + proc.stderr
    for host, (status, result) in sorted(results.items()):
        assert status == 'SUCCESS', (host, result)
        assert (result['backend'], result['counts'], result['fallbacks']) == (
            'proc', {'LISTEN': 1, 'ESTABLISHED': 2}, [REFUSED]), host
    assert REFUSED_WARNING in ' '.join(proc.stderr.split()), proc.stderr  # once: ansible shows a warning once


def test_playbook_on_old_targets(scene, ansible_216, old_targets):
    """The whole playbook (every option, bad input, check_mode task) on Python 2.7 and 3.6 at once."""
    extra_vars = {'zts': dict(scene, backends=['netlink', 'proc'], psutil_missing=True),
                  'zts_hosts': 'old_targets'}
    proc = run_playbook(PLAYBOOK, extra_vars, bin_dir=ansible_216, extra=old_targets)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    for host in OLD_TARGETS:
        assert re.search(r'^{0}\s+: ok=\d+ +changed=0 +unreachable=0 +failed=0 '.format(host), proc.stdout, re.M), \
            proc.stdout[-3000:]
