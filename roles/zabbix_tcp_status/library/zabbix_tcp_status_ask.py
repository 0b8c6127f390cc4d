#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: zabbix_tcp_status_ask
short_description: Ask a Zabbix agent for item keys with zabbix_get or the agent's own item test, in one call
description:
  - Runs O(argv) followed by each key of O(checks) (C(zabbix_get ... -k KEY), or C(zabbix_agentd -c FILE -t KEY))
    and returns every answer, so that the role asks all its keys in one round trip.
  - O(secret) is given to each command on its standard input and never written to disk; zabbix_get reads an
    agent's PSK that way with C(--tls-psk-file /dev/stdin).
  - With O(wait), first repeats the first key until the agent answers anything other than a refused connection,
    for at most O(wait) seconds (an agent still starting after a restart).
  - Read-only; used by the role C(zabbix_tcp_status) for its item test and its verify.
version_added: "1.2.0"
author:
  - zabbix-tcp-status contributors
options:
  argv:
    description: The command line before the key (the key is appended as the last argument).
    type: list
    elements: str
    required: true
  checks:
    description: What to ask - each a dict with C(key) (and anything else, returned as the answer's C(item)).
    type: list
    elements: dict
    required: true
  secret:
    description: Standard input of every command (a PSK); not logged.
    type: str
  wait:
    description: Seconds to wait for the first key to get an answer other than a refused connection.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    details: Asks in check mode too; it changes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
'''

EXAMPLES = r'''
- name: Ask the agent for two keys, with its PSK on standard input
  zabbix_tcp_status_ask:
    argv: [zabbix_get, -s, 192.0.2.10, --tls-connect, psk, --tls-psk-identity, web1, --tls-psk-file, /dev/stdin, -k]
    checks: [{key: "tcp.status[LISTEN]"}, {key: tcp.status.json}]
    secret: "{{ psk }}"
'''

RETURN = r'''
results:
  description: Each answer, in the order of O(checks) - the check as C(item), C(rc), C(stdout), C(stderr), C(cmd).
  returned: always
  type: list
  elements: dict
  sample: [{"item": {"key": "agent.ping"}, "rc": 0, "stdout": "1", "stderr": "",
            "cmd": ["zabbix_get", "-k", "agent.ping"]}]
waited:
  description: Seconds spent waiting for the first answer.
  returned: always
  type: float
'''

import time

from ansible.module_utils.basic import AnsibleModule

REFUSED = 'cannot connect'


def ask(module, argv, key, secret):
    cmd = list(argv) + [key]
    rc, out, err = module.run_command(cmd, data=secret, binary_data=False)
    return {'cmd': cmd, 'rc': rc, 'stdout': out.rstrip('\n'), 'stderr': err.rstrip('\n')}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            argv=dict(type='list', elements='str', required=True),
            checks=dict(type='list', elements='dict', required=True),
            secret=dict(type='str', no_log=True),
            wait=dict(type='int', default=0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    started = time.time()
    results = []
    for index, check in enumerate(params['checks']):
        answer = ask(module, params['argv'], check['key'], params['secret'])
        while index == 0 and REFUSED in answer['stdout'] + answer['stderr'] and \
                time.time() - started < params['wait']:
            time.sleep(0.5)
            answer = ask(module, params['argv'], check['key'], params['secret'])
        answer['item'] = check
        results.append(answer)
    module.exit_json(changed=False, results=results, waited=round(time.time() - started, 1))


if __name__ == '__main__':
    main()
