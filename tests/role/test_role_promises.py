"""README promises on this machine's real agents, each by a real playbook run (issue 14's "never exercised" list).

- tags: --tags config configures everything but the local fact; --tags facts then installs only the fact,
  without touching the agent's files or restarting it;
- zabbix_tcp_status_rollback: false leaves the files as written when the verify fails;
- a failed verify on agent 2 rolls back as on the classic agent;
- a main config without Include= gets a marked block (and a second run changes nothing);
- agent 2's relative Include=./... is where the UserParameters go;
- a custom zabbix_tcp_status_agent_config is the file read, edited and tested;
- zabbix_get missing: the role installs zabbix-proxy-sqlite3 and stops and disables the proxy it brings;
- the agent missing: with zabbix_tcp_status_install_agent false the run fails and changes nothing, check mode
  changes nothing, and with it true the role installs the agent and configures it.

Every test holds /tmp/zts-system-agent.lock (fixture system_agent) and restores the packages it removed.
"""
import glob
import os
import re
import shutil

import pytest

from role_run import (RECIPE_KEY, agent_pid, agent_running, apt, assert_same, changed_paths, fake_python,
                      package_installed, playbook, prepare, read, recap, run, snapshot, verify_message, wait_for_answer,
                      write, zabbix_get)

pytestmark = pytest.mark.usefixtures('system_agent')

SCRIPT = '/etc/zabbix/tcp_status.py'
FACT = '/etc/ansible/facts.d/tcp_status.fact'
AGENTD_CONF = '/etc/zabbix/zabbix_agentd.conf'
AGENTD_DROPIN = '/etc/zabbix/zabbix_agentd.conf.d/userparameter_tcp_status.conf'
AGENT2_CONF = '/etc/zabbix/zabbix_agent2.conf'
AGENT2_DROPIN = '/etc/zabbix/zabbix_agent2.d/userparameter_tcp_status.conf'
COMMENTED_RECIPE = re.compile(r'(?m)^# UserParameter=tcp\.status\[\*\],/etc/zabbix/tcp_connections\.sh')
LIVE_RECIPE = re.compile(r'(?m)^\s*UserParameter=tcp\.status\[\*\],/etc/zabbix/tcp_connections\.sh')


def answers_our_keys(port=10050):
    """The role's script answers: JSON with every state, and an error line (not usage text) for a bad state."""
    assert wait_for_answer(RECIPE_KEY, port=port).isdigit()
    assert zabbix_get('tcp.status.json', port).startswith('{"ESTABLISHED":')
    assert 'unknown TCP state' in zabbix_get('tcp.status[FOO]', port)


# ------------------------------------------------------------------------------------------------------------
# Tags


def test_tags_config_then_facts():
    # --tags facts alone on a host the role never configured: no fact that would run a missing script.
    prepare('agent')
    before = snapshot()
    result = playbook('--tags', 'facts')
    assert result.rc != 0 and '/etc/zabbix/tcp_status.py is not installed' in result.text, result.tail()
    assert 'Nothing was changed' in result.text
    assert_same(before, snapshot())
    # --tags config: everything but the local fact.
    result = playbook('--tags', 'config')
    assert result.rc == 0, result.tail()
    assert os.path.exists(SCRIPT) and os.path.exists(AGENTD_DROPIN)
    assert not os.path.exists(FACT), '--tags config installed the local fact'
    answers_our_keys()
    # --tags facts on that host: only the fact, the agent's files untouched and the agent not restarted.
    before, pid = snapshot(), agent_pid()
    result = playbook('--tags', 'facts')
    assert result.rc == 0, result.tail()
    assert changed_paths(before, snapshot()) == [FACT]
    assert agent_pid() == pid, '--tags facts restarted the agent'
    assert run([FACT]).stdout.startswith('{"ESTABLISHED":'), 'the fact runs the installed script'


# ------------------------------------------------------------------------------------------------------------
# Rollback switched off; rollback on agent 2


def test_rollback_false_leaves_the_files_as_written():
    prepare('agent')
    fake = fake_python('zero', only_running_agent=True)
    result = playbook('-e', 'zabbix_tcp_status_rollback=false', '-e', 'zabbix_tcp_status_python=' + fake)
    assert result.rc != 0, result.tail()
    assert 'Rollback is off' in result.text and 'Rolled back:' not in result.text, result.tail()
    assert read(SCRIPT).startswith('#!%s -S\n' % fake), 'the script stays as written'
    assert os.path.exists(AGENTD_DROPIN)
    assert COMMENTED_RECIPE.search(read(AGENTD_CONF)) and not LIVE_RECIPE.search(read(AGENTD_CONF))


def test_failed_verify_on_agent2_rolls_back_and_agent2_answers_the_recipe_again():
    prepare('agent2')
    before = snapshot()
    result = playbook('-e', 'zabbix_tcp_status_agent_flavour=agent2', '-e',
                      'zabbix_tcp_status_python=' + fake_python('zero', only_running_agent=True))
    assert result.rc != 0, result.tail()
    assert verify_message(r'tcp\.status\[(?:ESTABLISHED|TIME_WAIT|LISTEN)\]', '0').search(result.text), result.tail()
    assert 'Rolled back:' in result.text and 'answers agent.ping again' in result.text, result.tail()
    assert_same(before, snapshot())
    assert agent_running('agent2')
    assert wait_for_answer(RECIPE_KEY).isdigit()
    assert 'unknown TCP state' not in zabbix_get('tcp.status[FOO]'), 'the recipe\'s script answers, not ours'


# ------------------------------------------------------------------------------------------------------------
# Config shapes


def test_config_without_include_gets_a_marked_block_and_stays_idempotent():
    prepare('agent')
    text = read(AGENTD_CONF)
    assert re.search(r'(?m)^Include=', text)
    write(AGENTD_CONF, re.sub(r'(?m)^Include=.*\n', '', text))
    assert run(['service', 'zabbix-agent', 'restart']).rc == 0
    assert wait_for_answer(RECIPE_KEY).isdigit()
    result = playbook()
    assert result.rc == 0, result.tail()
    conf = read(AGENTD_CONF)
    block = re.search(r'(?ms)^# BEGIN zabbix_tcp_status UserParameters\n(.*?)^# END zabbix_tcp_status UserParameters$',
                      conf)
    assert block, conf[-2000:]
    assert "UserParameter=tcp.status[*],%s '$1' '$2' '$3' '$4'" % SCRIPT in block.group(1)
    assert COMMENTED_RECIPE.search(conf) and not LIVE_RECIPE.search(conf)
    assert not os.path.exists(AGENTD_DROPIN), 'a file nobody includes'
    answers_our_keys()
    again = playbook()
    assert again.rc == 0 and recap(again)['changed'] == 0, again.tail()


def test_agent2_relative_include_is_where_the_userparameters_go():
    prepare('agent2')
    text = read(AGENT2_CONF)
    assert '\nInclude=/etc/zabbix/zabbix_agent2.d/*.conf\n' in text
    # Agent 2 resolves a relative Include= against its config file's directory (its own plugins.d line does).
    write(AGENT2_CONF, text.replace('\nInclude=/etc/zabbix/zabbix_agent2.d/*.conf\n', '\nInclude=./zabbix_agent2.d/*.conf\n'))
    assert run(['service', 'zabbix-agent2', 'restart']).rc == 0
    assert wait_for_answer(RECIPE_KEY).isdigit()
    result = playbook('-e', 'zabbix_tcp_status_agent_flavour=agent2')
    assert result.rc == 0, result.tail()
    assert os.path.exists(AGENT2_DROPIN)
    assert 'zabbix_tcp_status UserParameters' not in read(AGENT2_CONF), 'a block although the agent includes a directory'
    answers_our_keys()


def test_custom_agent_config_is_the_file_read_edited_and_tested():
    # Debian's init script starts the agent without -c (the compiled-in /etc/zabbix/zabbix_agentd.conf), so the
    # custom file is reached through a symlink from there: the agent loads what the role edits.
    custom_dir = '/etc/zabbix/custom'
    custom = custom_dir + '/agentd.conf'
    prepare('agent')
    try:
        os.makedirs(custom_dir + '/conf.d')
        write(custom, read(AGENTD_CONF).replace('Include=/etc/zabbix/zabbix_agentd.conf.d/*.conf',
                                                'Include=%s/conf.d/*.conf' % custom_dir))
        os.remove(AGENTD_CONF)
        os.symlink(custom, AGENTD_CONF)
        assert run(['service', 'zabbix-agent', 'restart']).rc == 0
        assert wait_for_answer(RECIPE_KEY).isdigit()
        result = playbook('-e', 'zabbix_tcp_status_agent_config=' + custom)
        assert result.rc == 0, result.tail()
        assert os.readlink(AGENTD_CONF) == custom, 'the standard path must stay a link to the custom file'
        assert os.path.exists(custom_dir + '/conf.d/userparameter_tcp_status.conf')
        assert not os.path.exists(AGENTD_DROPIN), 'written into the standard include directory'
        assert COMMENTED_RECIPE.search(read(custom)) and not LIVE_RECIPE.search(read(custom))
        # The file the role changed is the custom one, named so (through the link it would back up the link's name).
        backups = sorted(os.listdir('/var/lib/zabbix_tcp_status/backup'))
        assert [b for b in backups if b.startswith('agentd.conf.')], backups
        assert not [b for b in backups if b.startswith('zabbix_agentd.conf')], backups
        answers_our_keys()
    finally:
        if os.path.islink(AGENTD_CONF):
            os.remove(AGENTD_CONF)
        shutil.rmtree(custom_dir, ignore_errors=True)
        prepare('agent')


# ------------------------------------------------------------------------------------------------------------
# Packages: zabbix_get, the agent itself


def proxy_boot_links():
    return sorted(glob.glob('/etc/rc?.d/*zabbix-proxy'))


def test_missing_zabbix_get_installs_the_proxy_package_and_stops_and_disables_its_proxy():
    prepare('agent')
    links_before = proxy_boot_links()
    try:
        apt('remove', 'zabbix-proxy-sqlite3')
        assert not os.path.exists('/usr/bin/zabbix_get')
        result = playbook()
        assert result.rc == 0, result.tail()
        assert package_installed('zabbix-proxy-sqlite3') and os.path.exists('/usr/bin/zabbix_get')
        assert run(['service', 'zabbix-proxy', 'status']).rc != 0, 'the proxy that came with zabbix_get runs'
        started = [link for link in proxy_boot_links() if re.match(r'/etc/rc[2345]\.d/S', link)]
        assert not started, 'the proxy starts at boot: %s' % started
        assert 'tcp.status.json' in result.text and 'Show what the agent answered' in result.text
        answers_our_keys()
    finally:
        if not package_installed('zabbix-proxy-sqlite3'):
            apt('install', '--no-install-recommends', 'zabbix-proxy-sqlite3')
        run(['service', 'zabbix-proxy', 'stop'])
        # Back to the boot links the machine had (the package's own, or an earlier run's).
        if any(re.match(r'/etc/rc[2345]\.d/S', link) for link in links_before):
            run(['update-rc.d', 'zabbix-proxy', 'enable'])
        assert proxy_boot_links() == links_before


class TestAgentMissing(object):
    """In order: the classic agent removed (its config files stay, as apt-get remove leaves them); install off
    fails unchanged; check mode changes nothing; install on installs it. The package is back afterwards."""

    @pytest.fixture(scope='class', autouse=True)
    def agent_removed(self):
        prepare('agent')
        run(['service', 'zabbix-agent', 'stop'])
        try:
            apt('remove', 'zabbix-agent')
            assert not os.path.exists('/usr/sbin/zabbix_agentd')
            yield
        finally:
            if not package_installed('zabbix-agent'):
                apt('install', '--no-install-recommends', 'zabbix-agent')
            prepare('agent')

    def test_install_agent_false_fails_and_changes_nothing(self):
        before = snapshot()
        result = playbook('-e', 'zabbix_tcp_status_agent_flavour=agent', '-e', 'zabbix_tcp_status_install_agent=false')
        assert result.rc != 0, result.tail()
        assert 'No Zabbix agent on this host' in result.text and 'Nothing was changed' in result.text, result.tail()
        assert_same(before, snapshot())
        assert not package_installed('zabbix-agent')

    def test_check_mode_on_a_host_without_agent_changes_nothing(self):
        before = snapshot()
        result = playbook('--check', '-e', 'zabbix_tcp_status_agent_flavour=agent')
        assert result.rc == 0, result.tail()
        assert recap(result)['changed'] >= 1, 'check mode must report that the agent would be installed'
        assert_same(before, snapshot())
        assert not package_installed('zabbix-agent')

    def test_the_role_installs_the_missing_agent_and_configures_it(self):
        result = playbook('-e', 'zabbix_tcp_status_agent_flavour=agent')
        assert result.rc == 0, result.tail()
        assert package_installed('zabbix-agent') and agent_running('agent')
        assert os.path.exists(AGENTD_DROPIN)
        answers_our_keys()
