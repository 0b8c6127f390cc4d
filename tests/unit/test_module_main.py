# -*- coding: utf-8 -*-
"""The modules' main() (roles/zabbix_tcp_status/library/) with a mocked module object, as linux-system-roles/firewall
tests its own: the arguments come from ansible-core's patch_module_args, and AnsibleModule's exit_json, fail_json
and warn are replaced by functions that raise or record. Underneath, the real module_utils run: the counter counts
this machine's real sockets, the config reader reads files written here. The modules' real Ansible runs (ad hoc,
playbooks, Python 2.7/3.6 targets) are in tests/integration/test_module_ansible.py."""

import errno
import importlib.util
import json
import os
import sys

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

import tcp_status_counter
import zabbix_agent_config
from tcp_live import refuse_sock_diag, ss_counts

LIBRARY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       'roles', 'zabbix_tcp_status', 'library')
STATES = tuple(tcp_status_counter.STATES)


class ExitJson(Exception):
    """exit_json was called; args[0] is the result."""


class FailJson(Exception):
    """fail_json was called; args[0] is the result (msg included)."""


def exit_json(_module, **kwargs):
    raise ExitJson(kwargs)


def fail_json(_module, **kwargs):
    raise FailJson(kwargs)


@pytest.fixture
def load_module(monkeypatch):
    """load_module(name) -> the library module, importing the role's real module_utils as Ansible ships them
    (ansible.module_utils.<name>)."""
    monkeypatch.setitem(sys.modules, 'ansible.module_utils.tcp_status_counter', tcp_status_counter)
    monkeypatch.setitem(sys.modules, 'ansible.module_utils.zabbix_agent_config', zabbix_agent_config)

    def load(name):
        spec = importlib.util.spec_from_file_location('zts_library_' + name, os.path.join(LIBRARY, name + '.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def run_main(monkeypatch):
    """run_main(module, args, check_mode=False) -> ('exit' or 'fail', result, warnings)."""
    def run(module, args, check_mode=False):
        warnings = []
        monkeypatch.setattr(basic.AnsibleModule, 'exit_json', exit_json)
        monkeypatch.setattr(basic.AnsibleModule, 'fail_json', fail_json)
        monkeypatch.setattr(basic.AnsibleModule, 'warn', lambda _module, warning: warnings.append(warning))
        args = dict(args, _ansible_check_mode=check_mode)
        with patch_module_args(args):
            try:
                module.main()
            except ExitJson as exc:
                return 'exit', exc.args[0], warnings
            except FailJson as exc:
                return 'fail', exc.args[0], warnings
        raise AssertionError('main() returned without exit_json or fail_json')
    return run


def in_child_refused(function):
    """function()'s JSON-able result, computed in a forked child whose NETLINK_SOCK_DIAG sockets the kernel refuses
    (a seccomp filter, as SELinux refuses them to the agent on EL without the role's policy)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(read_end)
        code = 0
        try:
            refuse_sock_diag()
            data = json.dumps(function())
        except BaseException as exc:  # pylint: disable=broad-except
            data, code = json.dumps({'child_error': repr(exc)}), 1
        with os.fdopen(write_end, 'w') as handle:
            handle.write(data)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert 'child_error' not in result, result
    return result


# --------------------------------------------------------------------------------------------------
# tcp_status
# --------------------------------------------------------------------------------------------------

def test_tcp_status_default_counts_every_state_and_sets_the_fact(load_module, run_main, farm):
    farm.listener('ipv6')
    status, result, warnings = run_main(load_module('tcp_status'), {})
    assert status == 'exit', result
    assert result['changed'] is False
    assert tuple(sorted(result['counts'], key=STATES.index)) == STATES
    assert all(isinstance(value, int) and value >= 0 for value in result['counts'].values()), result['counts']
    assert result['total'] == sum(result['counts'].values())
    assert result['counts']['LISTEN'] >= 1, result['counts']
    assert result['family'] == 'all' and result['backend'] in tcp_status_counter.BACKENDS
    assert result['fallbacks'] == [] and warnings == []
    # The fact is the result (without changed and the fact itself) plus the port filters asked for.
    fact = result['ansible_facts']['tcp_status']
    assert fact == dict([(key, result[key]) for key in result if key not in ('changed', 'ansible_facts')],
                        local_ports=[], remote_ports=[])


@pytest.mark.parametrize('check_mode', [False, True], ids=['normal', 'check_mode'])
def test_tcp_status_counts_a_real_listener_in_check_mode_too(load_module, run_main, farm, check_mode):
    """A read-only facts module returns full results under --check (an empty result there is a bug)."""
    port = farm.listener('ipv4')
    farm.pair(port)
    args = {'states': ['listening', 'ESTAB', 'time-wait'], 'local_ports': [str(port)], 'family': 'ipv4'}
    status, result, _warnings = run_main(load_module('tcp_status'), args, check_mode=check_mode)
    assert status == 'exit', result
    assert result['counts'] == {'ESTABLISHED': 1, 'TIME_WAIT': 0, 'LISTEN': 1}, result
    assert result['total'] == 2 and result['family'] == 'ipv4'
    assert result['ansible_facts']['tcp_status']['local_ports'] == [str(port)]


def test_tcp_status_port_ranges_and_remote_ports(load_module, run_main, farm):
    port = farm.listener('ipv4')
    for _ in range(3):
        farm.pair(port)
    args = {'states': ['ESTABLISHED'], 'remote_ports': ['{0}-{0}'.format(port)], 'backend': 'proc'}
    status, result, _warnings = run_main(load_module('tcp_status'), args)
    assert status == 'exit', result
    assert (result['counts'], result['backend']) == ({'ESTABLISHED': 3}, 'proc')
    assert result['counts']['ESTABLISHED'] == ss_counts(remote=(port,))['ESTABLISHED']


@pytest.mark.parametrize('args, words', [
    ({'family': 'ipv5'}, ['family', 'ipv5', 'all, ipv4, ipv6']),
    ({'backend': 'bogus'}, ['backend', 'bogus', 'netlink', 'proc']),
    ({'colour': 'red'}, ['Unsupported parameters', 'colour']),
    ({'states': ['LISTEN', 'FOO']}, ["'FOO'", 'ESTABLISHED', 'TIME_WAIT']),
    ({'local_ports': ['80', 'http']}, ["'http'"]),
    ({'remote_ports': ['70000']}, ["'70000'", 'out of range']),
    ({'states': ['x' * 1000]}, ["'" + 'x' * 64 + "'...(1000 chars)"]),
], ids=['family', 'backend', 'unknown-option', 'state', 'local-port', 'remote-port', 'huge-state'])
def test_tcp_status_bad_arguments_fail_with_a_message_naming_them(load_module, run_main, args, words):
    status, result, _warnings = run_main(load_module('tcp_status'), args)
    assert status == 'fail', result
    for word in words:
        assert word in result['msg'], (word, result['msg'])
    assert '\n' not in result['msg'] and 'Traceback' not in result['msg']
    assert len(result['msg']) < 600, result['msg']


def test_tcp_status_refused_netlink_falls_back_to_proc_and_warns(load_module, run_main, farm):
    port = farm.listener('ipv4')
    farm.pair(port)
    module = load_module('tcp_status')
    status, result, warnings = tuple(in_child_refused(
        lambda: run_main(module, {'states': ['LISTEN', 'ESTABLISHED'], 'local_ports': [str(port)]})))
    assert status == 'exit', result
    assert (result['backend'], result['counts']) == ('proc', {'LISTEN': 1, 'ESTABLISHED': 1}), result
    assert len(result['fallbacks']) == 1 and result['fallbacks'][0].startswith('netlink: '), result['fallbacks']
    assert os.strerror(errno.EACCES) in result['fallbacks'][0]
    assert warnings == ['tcp_status counted with the proc backend; tried first: ' + result['fallbacks'][0]]


def test_tcp_status_refused_netlink_fails_when_netlink_is_asked_for(load_module, run_main):
    module = load_module('tcp_status')
    status, result, _warnings = tuple(in_child_refused(lambda: run_main(module, {'backend': 'netlink'})))
    assert status == 'fail', result
    assert 'NETLINK_SOCK_DIAG' in result['msg'] and os.strerror(errno.EACCES) in result['msg'], result['msg']


# --------------------------------------------------------------------------------------------------
# zabbix_agent_config_info
# --------------------------------------------------------------------------------------------------

OUR_LINE = "UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py '$1' '$2' '$3' '$4'"
RECIPE_LINE = 'UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2'


@pytest.fixture
def agent_dir(tmp_path):
    """A main config including a directory, the recipe's line in the main file."""
    include = tmp_path / 'zabbix_agentd.d'
    include.mkdir()
    config = tmp_path / 'zabbix_agentd.conf'
    config.write_text('Server=127.0.0.1\nTimeout=7\nInclude={0}/*.conf\n{1}\n'.format(include, RECIPE_LINE))
    return tmp_path


def config_info_args(agent_dir, **extra):
    args = {'config': str(agent_dir / 'zabbix_agentd.conf'), 'keys': ['tcp.status', 'tcp.status.json'],
            'script': '/etc/zabbix/tcp_status.py', 'userparameter_file': 'userparameter_tcp_status.conf'}
    args.update(extra)
    return args


@pytest.mark.parametrize('check_mode', [False, True], ids=['normal', 'check_mode'])
def test_config_info_reads_the_agent_config(load_module, run_main, agent_dir, check_mode):
    status, result, warnings = run_main(load_module('zabbix_agent_config_info'), config_info_args(agent_dir),
                                        check_mode=check_mode)
    assert status == 'exit', result
    assert result['changed'] is False and warnings == []
    assert result['config'] == str(agent_dir / 'zabbix_agentd.conf')
    assert result['timeout'] == 7 and result['unsafe_userparameters'] is False
    assert result['userparameter_path'] == str(agent_dir / 'zabbix_agentd.d' / 'userparameter_tcp_status.conf')
    assert result['foreign_files'] == [str(agent_dir / 'zabbix_agentd.conf')]
    assert result['verify']['server_allows'] is True and result['line_endings'] == 'lf'


def test_config_info_without_keys_returns_no_plan(load_module, run_main, agent_dir):
    status, result, _warnings = run_main(load_module('zabbix_agent_config_info'),
                                         {'config': str(agent_dir / 'zabbix_agentd.conf')})
    assert status == 'exit', result
    assert 'userparameter_path' not in result and 'foreign_files' not in result
    assert result['userparameters'][0]['command'] == '/etc/zabbix/tcp_connections.sh $1 $2'


def test_config_info_warns_about_unsafe_userparameters_and_problems(load_module, run_main, agent_dir):
    config = agent_dir / 'zabbix_agentd.conf'
    config.write_text(config.read_text() + 'UnsafeUserParameters=1\nthis is not a setting\n')
    status, result, warnings = run_main(load_module('zabbix_agent_config_info'), config_info_args(agent_dir))
    assert status == 'exit', result
    assert result['unsafe_userparameters'] is True and len(result['problems']) == 1
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith('{0} sets UnsafeUserParameters=1'.format(config)), warnings
    assert warnings[1] == result['problems'][0]


@pytest.mark.parametrize('args, words', [
    ({'config': '/nonexistent/zabbix_agentd.conf'}, ['cannot read', '/nonexistent/zabbix_agentd.conf']),
    ({'flavour': 'agent3'}, ['flavour', 'agent3', 'agent, agent2']),
    ({'config': None}, ['config']),
    ({'colour': 'red'}, ['Unsupported parameters', 'colour']),
], ids=['missing-config', 'flavour', 'no-config', 'unknown-option'])
def test_config_info_bad_arguments_fail_with_a_message(load_module, run_main, agent_dir, args, words):
    args = dict(config_info_args(agent_dir), **args)
    if args['config'] is None:
        del args['config']
    status, result, _warnings = run_main(load_module('zabbix_agent_config_info'), args)
    assert status == 'fail', result
    for word in words:
        assert word in result['msg'], (word, result['msg'])


def test_config_info_refuses_a_missing_include_and_a_backup_dir_the_agent_loads(load_module, run_main, agent_dir):
    module = load_module('zabbix_agent_config_info')
    config = agent_dir / 'zabbix_agentd.conf'
    status, result, _warnings = run_main(module, config_info_args(agent_dir, backup_dir=str(agent_dir)))
    assert status == 'fail' and 'backups there could be loaded' in result['msg'], result
    config.write_text(config.read_text() + 'Include={0}/nowhere.conf\n'.format(agent_dir))
    status, result, _warnings = run_main(module, config_info_args(agent_dir))
    assert status == 'fail' and 'nowhere.conf' in result['msg'] and 'no such file' in result['msg'], result
