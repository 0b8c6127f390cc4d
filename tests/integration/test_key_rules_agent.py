# -*- coding: utf-8 -*-
"""The AllowKey/DenyKey reading of module_utils/zabbix_agent_config.py held to the real agents: for each rule set,
the key forms the reader calls denied (NAME, NAME[...]) are exactly those for which the agent's own item test
(zabbix_agentd -t, zabbix_agent2 -t on a private configuration file; no agent runs) denies a sample request.

The UserParameter for each key is defined, so an allowed key answers its echo; a denied one answers "Unsupported
item key." (zabbix_agentd) or "Unknown metric" (agent 2)."""
import os
import subprocess

import pytest

from zabbix_agent_config import AgentConfig, denied_keys

KEYS = ['tcp.status', 'tcp.status.json']
# Requests of each form, as the role's items and the template make them.
REQUESTS = {'bare': ['{0}'], 'params': ['{0}[LISTEN]', '{0}[]', '{0}[ESTABLISHED,80]']}
AGENTS = {'agent': ['/usr/sbin/zabbix_agentd'], 'agent2': ['/usr/sbin/zabbix_agent2']}
DENIED = ('Unsupported item key', 'Unknown metric')
RULE_SETS = [
    ['AllowKey=agent.*', 'AllowKey=system.*', 'DenyKey=*'],
    ['DenyKey=tcp.status[*]'],
    ['DenyKey=tcp.*'],
    ['DenyKey=tcp.*[*]'],
    ['DenyKey=tcp.status[LISTEN,*]'],
    ['AllowKey=tcp.status[LISTEN]', 'AllowKey=tcp.status', 'DenyKey=*'],
    ['AllowKey=tcp.status[*]', 'AllowKey=tcp.status', 'AllowKey=tcp.status.json*', 'DenyKey=*'],
    ['AllowKey=system.run[*]', 'DenyKey=vfs.file.*[*]'],
    ['AllowKey=tcp.status', 'AllowKey=tcp.status[*]', 'AllowKey=tcp.status.json', 'AllowKey=tcp.status.json[*]',
     'DenyKey=*'],
]


def agent_denies(binary, config, key):
    proc = subprocess.run([binary, '-c', config, '-t', key], capture_output=True, text=True, timeout=20)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 or any(text in out for text in DENIED), out
    return any(text in out for text in DENIED)


# Agent 2 takes half a second per item test: it is held to the first rule sets (the same rules as the classic agent).
CASES = [('agent', rules) for rules in RULE_SETS] + [('agent2', rules) for rules in RULE_SETS[:4]]


@pytest.mark.parametrize('flavour,rules', CASES, ids=lambda v: ','.join(v) if isinstance(v, list) else v)
def test_denied_key_forms_are_the_agents(tmp_path, flavour, rules):
    binary = AGENTS[flavour][0]
    if not os.path.exists(binary):
        pytest.skip(binary + ' is not installed')
    config = tmp_path / 'agent.conf'
    lines = ['UserParameter={0}[*],echo 1'.format(key) for key in KEYS] + rules
    config.write_text('\n'.join(lines) + '\n')
    ours = set(entry['key'] for entry in denied_keys(AgentConfig(str(config), flavour), KEYS))
    theirs = set()
    for key in KEYS:
        for form, requests in REQUESTS.items():
            if any(agent_denies(binary, str(config), request.format(key)) for request in requests):
                theirs.add(key if form == 'bare' else key + '[*]')
    assert ours == theirs


def test_the_check_fails_on_a_wrong_reading(tmp_path):
    """The comparison above can fail: a reader that ignored DenyKey would be caught on the recommended whitelist."""
    config = tmp_path / 'agent.conf'
    config.write_text('UserParameter=tcp.status[*],echo 1\nAllowKey=agent.*\nDenyKey=*\n')
    assert agent_denies(AGENTS['agent'][0], str(config), 'tcp.status[LISTEN]')
    assert not agent_denies(AGENTS['agent'][0], str(config), 'agent.ping')
