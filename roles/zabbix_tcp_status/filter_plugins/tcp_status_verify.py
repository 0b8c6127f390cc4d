# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verify's judgement of one zabbix_get answer, on the controller (tasks/verify.yml).

An answer must be what the script prints (one non-negative integer, or a JSON object with every state as one) and
each count must lie in the window that the module's own counts, taken just before and just after the zabbix_get
calls, leave open: between them, widened only by what was seen to move between the two counts (the churn), the
query's own connection (an ESTABLISHED socket on each end when zabbix_get runs on the host itself, one otherwise)
and the user's tolerance.

The per-port answers (``ports``: the JSON of tcp.status.ports, ``discovery``: its LLD form) are held to their form
strictly, and to the module's host-wide counts where a per-port count must stay inside a host-wide one: sockets on
different local ports are different sockets, so a state's sum over the listed ports cannot pass the host's count of
it; every LISTEN socket is on a listening port, so with no port cut off the listed ports' LISTEN sum is the host's.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

DOCUMENTATION = r'''
name: zabbix_tcp_status_answer_problem
short_description: What is wrong with one zabbix_get answer of the tcp.status keys, or an empty string
description:
  - Used by the role zabbix_tcp_status to verify the agent's answers against the module's own counts.
positional: key, answer, before, after, own, tolerance
options:
  _input:
    description: The answer (zabbix_get's stdout).
    type: str
    required: true
'''

# A key and its parameters: NAME or NAME[p1,p2,...] (the checks are plain keys: no quoted commas).
KEY = re.compile(r'^([^\[]+)(?:\[(.*)\])?$')
KINDS = ('count', 'states', 'ports', 'discovery')
# The counter's bounds of a per-port answer (tcp_status_counter.MAX_PORTS_DEFAULT, PORTS_JSON_MAX): the checks ask
# with the default bound; an answer cut short by its byte bound is at least this long.
MAX_PORTS_DEFAULT = 100
PORTS_JSON_MAX = 60000
PORTS_JSON_FULL = PORTS_JSON_MAX - 400


def _host_wide(key, kind, states):
    """The state a ``count`` check asks for (None for ``states``), or ValueError when the check has a filter: the
    module's counts, which judge the answer, are the whole host's."""
    match = KEY.match(key)
    params = [p.strip().strip('"') for p in match.group(2).split(',')] if match and match.group(2) is not None else []
    state = params.pop(0).upper() if kind == 'count' and params else None
    if kind == 'count' and state not in states:
        raise ValueError('the item table checks {0}, whose first parameter is not one of the states {1}'.format(
            key, ', '.join(states)))
    if any(params):
        raise ValueError('the item table checks {0}: checks must count the whole host (no port or family '
                         'parameters), as the module counts that judge them do'.format(key))
    return state


def window(state, before, after, own, tolerance):
    """The (lowest, highest) count of ``state`` that the agent may answer.

    The verify's own sockets raise the highest. Its TIME_WAITs also lower the lowest: they are still there at the
    count after, where they can hide as many older TIME_WAITs that expired meanwhile, so the two counts can be
    equal while the agent, in between, saw fewer.
    """
    low, high = sorted((int(before[state]), int(after[state])))
    churn = high - low
    own_here = int(own.get(state, 0))
    lasting = own_here if state == 'TIME_WAIT' else 0
    return max(low - churn - lasting - tolerance, 0), high + churn + own_here + tolerance


def _count_problem(state, value, before, after, own, tolerance):
    low, high = window(state, before, after, own, tolerance)
    if low <= value <= high:
        return ''
    expected = 'exactly {0}'.format(low) if low == high else 'a count from {0} to {1}'.format(low, high)
    return '{0} for {1} (the module counted {2} before and {3} after the agent answered; {4})'.format(
        expected, state, before[state], after[state],
        'zabbix_tcp_status_verify_tolerance {0}'.format(tolerance) if tolerance else
        'raise zabbix_tcp_status_verify_tolerance on hosts whose connections churn faster')


def answer_problem(answer, key, kind, before, after, own=None, tolerance=0):
    """'' when ``answer`` (the agent's answer to ``key``) is right, else what was expected instead.

    ``kind`` is the item table's ``answer`` of the key (roles/zabbix_tcp_status/vars/main.yml): ``count`` (one
    non-negative integer, the count of the state named by the key's first parameter), ``states`` (a JSON object
    with every state's count), ``ports`` (the per-port JSON of tcp.status.ports) or ``discovery`` (its LLD form).
    """
    answer = '' if answer is None else str(answer).strip()
    tolerance = int(tolerance)
    own = own or {}
    if kind not in KINDS:
        raise ValueError('unknown answer kind {0!r} for {1} in the item table: {2}'.format(kind, key, ', '.join(KINDS)))
    state = _host_wide(key, kind, before)
    if kind == 'ports':
        return _ports_problem(answer, before, after, own, tolerance)
    if kind == 'discovery':
        return _discovery_problem(answer, before, after, own, tolerance)
    if kind == 'states':
        try:
            counts = json.loads(answer)
        except ValueError:
            counts = None
        if not isinstance(counts, dict):
            return 'a JSON object with every state ({0})'.format(', '.join(before))
        missing = [state for state in before if state not in counts]
        extra = sorted(state for state in counts if state not in before)
        if missing or extra:
            return 'a JSON object with exactly the states {0} (missing: {1}; unknown: {2})'.format(
                ', '.join(before), ', '.join(missing) or 'none', ', '.join(extra) or 'none')
        for state in before:
            value = counts[state]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return 'a non-negative integer for every state; {0} is {1}'.format(state, json.dumps(value))
            problem = _count_problem(state, value, before, after, own, tolerance)
            if problem:
                return problem
        return ''
    if not re.match(r'^(0|[1-9][0-9]*)$', answer):
        return 'one non-negative integer'
    return _count_problem(state, int(answer), before, after, own, tolerance)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _states_problem(where, counts, states):
    if not isinstance(counts, dict) or sorted(counts) != sorted(states):
        return '{0}: states with exactly {1}'.format(where, ', '.join(states))
    for state in states:
        if not _is_count(counts[state]):
            return '{0}: a non-negative integer for every state; {1} is {2}'.format(
                where, state, json.dumps(counts[state]))
    return ''


def _sum_problem(entries, before, after, own, tolerance, exact_listen):
    """The listed ports' sum of each state against the host's window (exactly inside it for LISTEN when no port
    was cut off: every LISTEN socket is on a listening port)."""
    for state in before:
        total = sum(entry['states'][state] for entry in entries)
        low, high = window(state, before, after, own, tolerance)
        if total > high:
            return ('at most {0} {1} sockets over all listed ports (the host has {2} before and {3} after); the '
                    'ports hold {4}'.format(high, state, before[state], after[state], total))
        if state == 'LISTEN' and exact_listen and total < low:
            return ('every LISTEN socket on a listed port: {0} to {1} over the ports (the host has {2} before and {3} '
                    'after, and no port was cut off); the ports hold {4}'.format(
                        low, high, before[state], after[state], total))
    return ''


def _ports_problem(answer, before, after, own, tolerance):
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    fields = ['listen_drops', 'listen_overflows', 'ports', 'remote', 'truncated']
    if not isinstance(data, dict) or sorted(data) != fields:
        return 'a JSON object with exactly {0}'.format(', '.join(fields))
    for field in ('truncated', 'listen_overflows', 'listen_drops'):
        if not _is_count(data[field]):
            return 'a non-negative integer for {0}; it is {1}'.format(field, json.dumps(data[field]))
    if data['listen_drops'] < data['listen_overflows']:
        return 'listen_drops at least listen_overflows (the kernel counts every overflow as a drop too)'
    if data['remote'] != []:
        return 'no remote ports (none were asked for)'
    ports = data['ports']
    if not isinstance(ports, list) or len(ports) > MAX_PORTS_DEFAULT:
        return 'a list of at most {0} ports'.format(MAX_PORTS_DEFAULT)
    if data['truncated'] and len(ports) < MAX_PORTS_DEFAULT and len(answer) < PORTS_JSON_FULL:
        return 'no port cut off while the answer holds {0} ports in {1} bytes; truncated is {2}'.format(
            len(ports), len(answer), data['truncated'])
    seen = set()
    order = []
    for entry in ports:
        if not isinstance(entry, dict) or sorted(entry) != ['backlog', 'port', 'queue', 'service', 'states']:
            return 'every port with exactly port, service, queue, backlog, states; one is {0}'.format(
                json.dumps(entry)[:200])
        port = entry['port']
        if not _is_count(port) or port > 65535 or port in seen:
            return 'each port a distinct number from 0 to 65535; one is {0}'.format(json.dumps(port))
        seen.add(port)
        where = 'port {0}'.format(port)
        if not isinstance(entry['service'], str):
            return '{0}: a service name (a string)'.format(where)
        problem = _states_problem(where, entry['states'], before)
        if problem:
            return problem
        if entry['states']['LISTEN'] < 1:
            return '{0}: at least one LISTEN socket (only listening ports are listed)'.format(where)
        queue, backlog = entry['queue'], entry['backlog']
        if not _is_count(queue) or not (backlog is None or _is_count(backlog)):
            return '{0}: queue a non-negative integer and backlog one or null; they are {1} and {2}'.format(
                where, json.dumps(queue), json.dumps(backlog))
        if backlog is not None and queue > backlog + 1:
            return '{0}: an accept queue of at most its backlog + 1 (the kernel queues no more); {1} of {2}'.format(
                where, queue, backlog)
        order.append((entry['states']['LISTEN'] - sum(entry['states'].values()), -queue, port))
    if order != sorted(order):
        return 'the busiest ports first (most sockets besides the listeners, then the longest queue, then the port)'
    return _sum_problem(ports, before, after, own, tolerance, exact_listen=data['truncated'] == 0)


def _discovery_problem(answer, before, after, own, tolerance):
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if not isinstance(data, dict) or list(data) != ['data'] or not isinstance(data['data'], list):
        return 'a JSON object {"data": [...]} (the LLD format)'
    rows = data['data']
    if not rows or len(rows) > MAX_PORTS_DEFAULT:
        return 'from 1 to {0} listening ports (the agent itself listens); {1} found'.format(MAX_PORTS_DEFAULT,
                                                                                            len(rows))
    seen = set()
    for row in rows:
        if not isinstance(row, dict) or sorted(row) != ['{#PORT}', '{#SERVICE}', '{#SIDE}']:
            return 'every row with exactly {{#PORT}}, {{#SERVICE}}, {{#SIDE}}; one is {0}'.format(json.dumps(row)[:200])
        port = row['{#PORT}']
        if not (isinstance(port, str) and re.match(r'^(0|[1-9][0-9]{0,4})$', port) and int(port) <= 65535) \
                or port in seen:
            return 'each {{#PORT}} a distinct port number as a string; one is {0}'.format(json.dumps(port))
        seen.add(port)
        if row['{#SIDE}'] != 'local' or not isinstance(row['{#SERVICE}'], str):
            return '{{#SIDE}} local (no remote ports were asked for) and {{#SERVICE}} a string; row {0}'.format(
                json.dumps(row))
    low, high = window('LISTEN', before, after, own, tolerance)
    if len(rows) > high:
        return 'at most as many listening ports as LISTEN sockets ({0}); {1} listed'.format(high, len(rows))
    return ''


def answers_problems(answers, value_regex, before, after, own=None, tolerance=0):
    """{key: what was expected instead} for every answer of one attempt (tasks/ask.yml) that is wrong: a non-zero
    exit, or a value (group 1 of ``value_regex`` in the command's output: the item test frames its value) that
    answer_problem rejects; empty when every answer is right. ``answers`` are zabbix_tcp_status_ask's results,
    each with its check ({key, answer}) as ``item``."""
    problems = {}
    for answer in answers:
        found = re.search(value_regex, answer.get('stdout') or '', re.M)
        value = found.group(1) if found else ''
        check = answer['item']
        problem = answer_problem(value, check['key'], check['answer'], before, after, own, tolerance)
        if answer.get('rc') != 0 or problem:
            problems[check['key']] = problem or 'exit code 0'
    return problems


def checks(items):
    """Every key the item table asks after a change, with the answer it must give: [{key, answer}]."""
    return [{'key': key, 'answer': row['answer']} for row in items for key in row['checks']]


def parents(path):
    """A directory and each of its parents, deepest first: /etc/zabbix -> ['/etc/zabbix', '/etc', '/']."""
    parts = path.rstrip('/').split('/')
    return ['/'.join(parts[:index]) or '/' for index in range(len(parts), 0, -1)]


class FilterModule(object):
    def filters(self):
        return {'zabbix_tcp_status_answer_problem': answer_problem,
                'zabbix_tcp_status_answers_problems': answers_problems,
                'zabbix_tcp_status_checks': checks,
                'zabbix_tcp_status_parents': parents}
