#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: tcp_status
short_description: Count TCP sockets by state (IPv4 and IPv6) and return them as facts
description:
  - Counts the host's TCP sockets in each kernel state (ESTABLISHED, TIME_WAIT, LISTEN, ...), for IPv4 and
    IPv6 together or one family, optionally only those on given local or remote ports.
  - Reads the kernel's socket table through netlink sock_diag, falling back to C(/proc/net/tcp) and
    C(/proc/net/tcp6) when netlink is refused (saying why in RV(fallbacks) and a warning), and to psutil only
    where neither exists (not Linux).
  - For a whole-host count that includes ESTABLISHED (no port filter), the kernel is asked only for the sockets
    in the other states, and ESTABLISHED is derived from the kernel's counters (C(/proc/net/sockstat) and
    C(/proc/net/sockstat6) C(inuse)), checked against C(/proc/net/snmp) C(CurrEstab); when the two disagree
    beyond the sockets that changed state during the call, or on kernels older than 4.4, every socket is dumped
    instead. RV(backend) says which path answered (V(counters) or V(netlink)).
  - Port filters are passed to the kernel as a sock_diag bytecode filter (as C(ss) does), so only the matching
    sockets are listed.
  - The counting code is the same file that the role C(zabbix_tcp_status) installs as the Zabbix agent's script,
    so the module and the agent always agree.
  - Half-open request sockets (the kernel's NEW_SYN_RECV) are counted as C(SYN_RECV), as C(ss) and C(netstat)
    show them. An IPv4 client of a dual-stack (C(::)) listener is an IPv6 socket, as in C(ss -6).
version_added: "1.0.0"
author:
  - zabbix-tcp-status contributors
options:
  states:
    description:
      - The states to count. Netstat names (C(TIME_WAIT), C(LISTEN)) or ss names (C(time-wait), C(listening)),
        any case.
      - Counting fewer states is cheaper with the netlink backend, because the kernel skips the other sockets.
      - Empty means every state.
    type: list
    elements: str
    default: []
  family:
    description:
      - Which address family's sockets to count.
    type: str
    choices: [all, ipv4, ipv6]
    default: all
  local_ports:
    description:
      - Count only sockets whose local port is one of these. Items are ports or ranges such as C(1024-65535).
      - Empty means any port.
    type: list
    elements: str
    default: []
  remote_ports:
    description:
      - Count only sockets whose remote port is one of these, written as for O(local_ports).
    type: list
    elements: str
    default: []
  backend:
    description:
      - How to read the socket table. V(auto) tries V(counters) (only for a whole-host count that includes
        ESTABLISHED), then V(netlink), then V(proc), then V(psutil), and reports which answered in RV(backend).
      - V(counters) derives ESTABLISHED from the kernel's counters, cross-checked, and dumps only the other states;
        it takes no port filters.
      - V(netlink) dumps every socket asked for; choose it to force the full dump.
    type: str
    choices: [auto, counters, netlink, proc, psutil]
    default: auto
  per_port:
    description:
      - Also return RV(per_port), the same breakdown the Zabbix key C(tcp.status.ports) answers, from one more dump -
        for every local port with a LISTEN socket, the count of sockets in each state on that port and the accept
        queue of its fullest listener; for every port of O(remote_ports), the count in each state of the sockets
        connected to it.
      - With O(per_port), O(local_ports) limits the listening ports reported, O(remote_ports) (at most 100 ports)
        lists the remote ports to report, and O(family) applies too; RV(counts) keeps its meaning.
      - Needs the V(netlink) or V(proc) backend (V(auto) picks them); V(counters) and V(psutil) cannot count per
        port.
    type: bool
    default: false
  max_ports:
    description:
      - With O(per_port), the most listening ports reported, busiest first; RV(per_port.truncated) says how many
        were left out. The answer also stays under 60,000 bytes of JSON, what a Zabbix text value holds.
    type: int
    default: 100
attributes:
  check_mode:
    support: full
    details: Read-only; returns the same counts in check mode.
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
    details: Linux for the netlink and proc backends; elsewhere only with psutil installed on the target.
notes:
  - Runs on Python 2.7 (CentOS 7) and Python 3.6 and later targets, with no extra packages.
  - The connection that Ansible itself uses is counted too (usually one ESTABLISHED socket on each end).
seealso:
  - name: ss(8)
    description: The iproute2 tool that reads the same netlink interface.
    link: https://man7.org/linux/man-pages/man8/ss.8.html
'''

EXAMPLES = r'''
- name: Count every TCP state, IPv4 and IPv6
  tcp_status:

- name: Count established connections to a web server and fail when there are too many
  tcp_status:
    states: [ESTABLISHED]
    local_ports: [80, 443]
  register: web_conns
  failed_when: web_conns.counts.ESTABLISHED > 5000

- name: TIME_WAIT and CLOSE_WAIT of outgoing connections to PostgreSQL, IPv4 only
  tcp_status:
    states: [time-wait, close-wait]
    remote_ports: ['5432']
    family: ipv4

- name: Count every state from a dump of every socket, not from the kernel's counters
  tcp_status:
    backend: netlink

- name: Which listening ports hold the connections, and the connections to PostgreSQL and Redis
  tcp_status:
    per_port: true
    remote_ports: ['5432', '6379']
    max_ports: 10
  register: by_port

- name: Fail when a listener's accept queue is full
  ansible.builtin.assert:
    that: item.backlog is none or item.queue < item.backlog
    fail_msg: "port {{ item.port }} ({{ item.service }}): accept queue {{ item.queue }} of {{ item.backlog }}"
  loop: "{{ by_port.per_port.ports }}"
  loop_control:
    label: "{{ item.port }}"

# Ad hoc, across a fleet, one line per host:
#   ansible all -m tcp_status -o
#   ansible all -m tcp_status -a 'states=TIME_WAIT,CLOSE_WAIT' -o
#   ansible all -m tcp_status -a 'per_port=true max_ports=5'
'''

RETURN = r'''
counts:
  description: Sockets in each requested state (every state when O(states) is empty).
  returned: always
  type: dict
  sample: {"ESTABLISHED": 12, "SYN_SENT": 0, "SYN_RECV": 0, "FIN_WAIT1": 0, "FIN_WAIT2": 1, "TIME_WAIT": 40,
           "CLOSE": 0, "CLOSE_WAIT": 2, "LAST_ACK": 0, "LISTEN": 9, "CLOSING": 0}
total:
  description: The sum of RV(counts).
  returned: always
  type: int
  sample: 64
backend:
  description:
    - The backend that counted. V(counters) means ESTABLISHED came from the kernel's counters, which agreed with
      each other (see RV(check)); V(netlink) means a dump of every socket asked for.
  returned: always
  type: str
  sample: counters
check:
  description:
    - The cross-check behind a V(counters) answer, both address families together. RV(check.derived) is
      ESTABLISHED from sockstat C(inuse) minus the other full sockets; RV(check.curr_estab) the snmp counter,
      which counts ESTABLISHED (or ESTABLISHED and CLOSE_WAIT, depending on the kernel build);
      RV(check.off) how far apart they are under the closer meaning; RV(check.churn) the bound on sockets that
      changed state during the call, which RV(check.off) may not exceed.
  returned: when RV(backend) is V(counters)
  type: dict
  sample: {"derived": 200000, "curr_estab": 201001, "close_wait": 1001, "off": 0, "churn": 0, "agrees": true}
family:
  description: The address family counted.
  returned: always
  type: str
  sample: all
fallbacks:
  description:
    - Why each backend tried before RV(backend) could not count, one string each, starting with the backend's
      name; empty when the first one tried answered. With O(backend=auto) an entry starting with V(netlink:) means
      netlink was refused (for example by SELinux, or a kernel without C(tcp_diag)) and the slower C(/proc) files
      were read; the module also warns with it. An entry starting with V(counters:) says why ESTABLISHED was
      counted by the full dump instead (for example counters that disagreed during heavy churn); no warning.
  returned: always
  type: list
  elements: str
  sample: ["netlink: cannot open a NETLINK_SOCK_DIAG socket: [Errno 13] Permission denied"]
per_port:
  description:
    - The per-port breakdown (the JSON of the Zabbix key C(tcp.status.ports)), from one dump of every socket (or of
      the sockets on O(local_ports) and O(remote_ports) when O(local_ports) is given).
  returned: when O(per_port) is true
  type: dict
  contains:
    ports:
      description:
        - One entry per local port with a LISTEN socket (IPv4 and IPv6 together with O(family=all)), busiest first
          (the most sockets besides its listeners, then the longest accept queue, then the lowest port), at most
          O(max_ports).
        - V(port); V(service), its name in C(/etc/services) or an empty string; V(states), every state's count
          of the sockets whose local port it is (the listeners themselves as C(LISTEN), the connections the kernel
          completed but the application has not accepted yet as C(ESTABLISHED), half-open ones as C(SYN_RECV)).
        - V(queue) and V(backlog), the accept queue's current length and its limit (C(ss -lt)'s Recv-Q and
          Send-Q) of the port's fullest listener (the highest queue/backlog), because several listeners on one port
          (two addresses, IPv4 and IPv6-only sockets, SO_REUSEPORT groups) each have their own queue, and a
          listener drops connections when its own queue is full, whatever the others hold, so a sum would hide a
          full one behind empty ones. The kernel queues up to backlog + 1 connections. V(backlog) is null when
          the C(proc) backend answered (C(/proc/net/tcp) has the queue's length, not its limit).
      type: list
      elements: dict
      sample: [{"port": 22, "service": "ssh", "queue": 0, "backlog": 128, "states": {"ESTABLISHED": 3,
               "SYN_SENT": 0, "SYN_RECV": 0, "FIN_WAIT1": 0, "FIN_WAIT2": 0, "TIME_WAIT": 0, "CLOSE": 0,
               "CLOSE_WAIT": 0, "LAST_ACK": 0, "LISTEN": 2, "CLOSING": 0}}]
    remote:
      description:
        - One entry per port of O(remote_ports), in port order, with or without sockets; V(port), V(service),
          V(states) (every state's count of the sockets whose remote port it is, this host's outbound side).
      type: list
      elements: dict
      sample: [{"port": 5432, "service": "postgresql", "states": {"ESTABLISHED": 12, "SYN_SENT": 0,
               "SYN_RECV": 0, "FIN_WAIT1": 0, "FIN_WAIT2": 0, "TIME_WAIT": 30, "CLOSE": 0, "CLOSE_WAIT": 0,
               "LAST_ACK": 0, "LISTEN": 0, "CLOSING": 0}}]
    truncated:
      description: How many listening ports were left out, by O(max_ports) or by the 60,000-byte bound; 0 when none.
      type: int
      sample: 0
    listen_overflows:
      description: C(/proc/net/netstat) C(TcpExt ListenOverflows) (connections dropped for a full accept queue), a
        counter since boot, of this network namespace.
      type: int
      sample: 0
    listen_drops:
      description: C(TcpExt ListenDrops) (every SYN or connection a listener dropped, overflows included).
      type: int
      sample: 0
    backend:
      description: V(netlink) or V(proc).
      type: str
      sample: netlink
    fallbacks:
      description: As RV(fallbacks), for this dump.
      type: list
      elements: str
      sample: []
ansible_facts:
  description: The same result as a fact.
  returned: always
  type: dict
  contains:
    tcp_status:
      description: V(counts), V(total), V(backend), V(family), V(fallbacks), V(check) (with V(counters)), V(per_port) (with O(per_port)),
        V(local_ports) and V(remote_ports) as above.
      type: dict
      returned: always
      sample: {"counts": {"ESTABLISHED": 12, "LISTEN": 9, "TIME_WAIT": 40}, "total": 61, "backend": "counters",
               "family": "all", "fallbacks": [], "local_ports": [], "remote_ports": []}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.tcp_status_counter import (BACKENDS, FAMILIES, MAX_PORTS_DEFAULT, TcpStatusError, count_ports,
                                                     count_states)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            states=dict(type='list', elements='str', default=[]),
            family=dict(type='str', choices=list(FAMILIES), default='all'),
            local_ports=dict(type='list', elements='str', default=[]),
            remote_ports=dict(type='list', elements='str', default=[]),
            backend=dict(type='str', choices=list(BACKENDS), default='auto'),
            per_port=dict(type='bool', default=False),
            max_ports=dict(type='int', default=MAX_PORTS_DEFAULT),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = count_states(states=params['states'], family=params['family'],
                              local_ports=params['local_ports'], remote_ports=params['remote_ports'],
                              backend=params['backend'])
        if params['per_port']:
            per_port = count_ports(family=params['family'], local_ports=params['local_ports'],
                                   remote_ports=params['remote_ports'], max_ports=params['max_ports'],
                                   backend=params['backend'])
            result['per_port'] = dict((key, per_port[key]) for key in (
                'ports', 'remote', 'truncated', 'listen_overflows', 'listen_drops', 'backend', 'fallbacks'))
    except TcpStatusError as exc:
        result = {'error': to_native(exc)}
    if 'error' in result:
        # Outside the except block, so that the failure is the message alone, not a traceback.
        module.fail_json(msg=result['error'])
    for reason in result['fallbacks'] + result.get('per_port', {}).get('fallbacks', []):
        if reason.startswith('counters:'):
            continue  # the full dump answered instead: exact, and nothing the user must act on
        module.warn('tcp_status counted with the {0} backend; tried first: {1}'.format(result['backend'], reason))
    facts = dict(result, local_ports=params['local_ports'], remote_ports=params['remote_ports'])
    module.exit_json(changed=False, ansible_facts={'tcp_status': facts}, **result)


if __name__ == '__main__':
    main()
