#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: zabbix_agent_config_info
short_description: Read a Zabbix agent's effective configuration, as the agent reads it
description:
  - Reads the main configuration file of C(zabbix_agentd) or C(zabbix_agent2) and every file its C(Include=)
    settings load (a directory loads every regular file in it, backups C(*~) included; a pattern loads its
    matches; includes nest), and returns the settings the agent uses, every C(UserParameter) with the file and
    line that defines it, keys defined twice and the line endings.
  - Given item key names, also says where a UserParameter file of a given name is loaded, which loaded files
    define the same keys with another command, and which loaded files are Ansible backups defining them.
  - Says how C(zabbix_get) reaches the agent (address, port, TLS options) and whether the agent's C(Server=)
    allows the address C(zabbix_get) connects from.
  - Read-only. Used by the role C(zabbix_tcp_status); useful alone to audit agents.
version_added: "1.1.0"
author:
  - zabbix-tcp-status contributors
options:
  config:
    description: The agent's main configuration file.
    type: path
    required: true
  flavour:
    description: The agent, C(agent) (zabbix_agentd) or C(agent2) (zabbix_agent2).
    type: str
    choices: [agent, agent2]
    default: agent
  keys:
    description: Item key names (without C([*])) whose UserParameter definitions to place, such as C(tcp.status).
    type: list
    elements: str
    default: []
  script:
    description: The command that the wanted definitions of O(keys) run; other commands are foreign.
    type: path
    default: ""
  userparameter_file:
    description: The file name of the UserParameter file to place in an include directory.
    type: str
    default: ""
  verify_source:
    description:
      - The address the agent sees C(zabbix_get) connect from. Empty means the agent's own host, which connects
        to C(127.0.0.1) (or C(::1), or the first C(ListenIP) when the agent listens on neither).
    type: str
    default: ""
  backup_dir:
    description: Fail when this directory holds an include directory of the agent (backups there would load).
    type: path
    default: ""
attributes:
  check_mode:
    support: full
    details: Read-only; returns the same result in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - A relative C(Include=) path is taken from the main file's directory, as agent 2 documents it.
  - Warns when C(UnsafeUserParameters=1), since key parameters then reach the shell unfiltered.
'''

EXAMPLES = r'''
- name: Read the agent's configuration
  zabbix_agent_config_info:
    config: /etc/zabbix/zabbix_agentd.conf
  register: agent

- name: Show every UserParameter key and where it is defined
  ansible.builtin.debug:
    msg: "{{ agent.userparameters | map(attribute='key') | list }}"

- name: Fail on a key defined twice (the agent would not start)
  ansible.builtin.assert:
    that: agent.duplicate_keys | length == 0
'''

RETURN = r'''
config:
  description: The main configuration file.
  returned: always
  type: str
  sample: /etc/zabbix/zabbix_agentd.conf
files:
  description: Every file the agent loads, in load order, with its line endings (lf, crlf, mixed, none).
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/zabbix/zabbix_agentd.conf", "line_endings": "lf"}]
includes:
  description: Every C(Include=) with the file and line that sets it, its kind (file, directory, pattern), its
    resolved path and directory, and the files it loads.
  returned: always
  type: list
  elements: dict
  sample: [{"file": "/etc/zabbix/zabbix_agentd.conf", "line": 290, "value": "/etc/zabbix/zabbix_agentd.d/",
            "kind": "directory", "path": "/etc/zabbix/zabbix_agentd.d", "directory": "/etc/zabbix/zabbix_agentd.d",
            "files": ["/etc/zabbix/zabbix_agentd.d/userparameter_mysql.conf"]}]
settings:
  description: The values the agent uses for the settings the role needs (the last one given, else the default).
  returned: always
  type: dict
  sample: {"Timeout": "3", "Server": "127.0.0.1", "ListenIP": "0.0.0.0", "ListenPort": "10050",
           "UnsafeUserParameters": "0", "TLSAccept": "unencrypted"}
timeout:
  description: The agent's C(Timeout) in seconds.
  returned: always
  type: int
  sample: 3
unsafe_userparameters:
  description: Whether C(UnsafeUserParameters=1).
  returned: always
  type: bool
  sample: false
userparameters:
  description: Every UserParameter with its key, key name, command, file and line.
  returned: always
  type: list
  elements: dict
duplicate_keys:
  description: Keys defined more than once, with each place (C(file:line)); the agent does not start with any.
  returned: always
  type: dict
  sample: {"tcp.status[*]": ["/etc/zabbix/zabbix_agentd.conf:330", "/etc/zabbix/zabbix_agentd.d/x.conf:1"]}
line_endings:
  description: The main file's line endings.
  returned: always
  type: str
  sample: lf
problems:
  description: Lines the agent would not understand.
  returned: always
  type: list
  elements: str
verify:
  description: How C(zabbix_get) reaches the agent.
  returned: always
  type: dict
  contains:
    address:
      description: The address to connect to when verifying from the agent's host (empty for another host).
      type: str
    port:
      description: The agent's C(ListenPort).
      type: int
    source:
      description: The address the agent sees the verifier connect from.
      type: str
    server_allows:
      description: Whether C(Server=) allows RV(verify.source); null when it names hosts by DNS name.
      type: bool
    tls:
      description: C(connect) (unencrypted, psk or cert) and the PSK identity and file or the certificate files.
      type: dict
userparameter_path:
  description: Where the agent loads a file named O(userparameter_file); empty when no C(Include=) loads it.
  returned: when O(keys) is given
  type: str
  sample: /etc/zabbix/zabbix_agentd.d/userparameter_tcp_status.conf
foreign_files:
  description: Loaded files, other than RV(userparameter_path), that define one of O(keys) with another command.
  returned: when O(keys) is given
  type: list
  elements: str
stray_backups:
  description: Loaded Ansible backup files (C(NAME.PID.DATE~)) that define one of O(keys).
  returned: when O(keys) is given
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.zabbix_agent_config import AgentConfigError, describe


def main():
    module = AnsibleModule(
        argument_spec=dict(
            config=dict(type='path', required=True),
            flavour=dict(type='str', choices=['agent', 'agent2'], default='agent'),
            keys=dict(type='list', elements='str', default=[], no_log=False),
            script=dict(type='path', default=''),
            userparameter_file=dict(type='str', default=''),
            verify_source=dict(type='str', default=''),
            backup_dir=dict(type='path', default=''),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = describe(params['config'], params['flavour'], params['keys'], params['script'] or '',
                          params['userparameter_file'], params['verify_source'], params['backup_dir'] or '')
    except AgentConfigError as exc:
        result = {'error': to_native(exc)}
    if 'error' in result:
        module.fail_json(msg=result['error'])
    if result['unsafe_userparameters']:
        module.warn('{0} sets UnsafeUserParameters=1: item key parameters reach the shell unfiltered. The role '
                    'quotes them with single quotes, which stops $(...) and backticks but not a parameter that '
                    'contains a single quote; restrict Server= to the Zabbix server and proxies.'.format(
                        result['config']))
    for problem in result['problems']:
        module.warn(problem)
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
