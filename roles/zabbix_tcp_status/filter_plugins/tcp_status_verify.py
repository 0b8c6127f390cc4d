# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verify's judgement of one zabbix_get answer, on the controller (tasks/verify.yml).

An answer must be what the script prints (one non-negative integer, or a JSON object with every state as one) and
each count must lie in the window that the module's own counts, taken just before and just after the zabbix_get
calls, leave open: between them, widened only by what was seen to move between the two counts (the churn), the
query's own connection (an ESTABLISHED socket on each end when zabbix_get runs on the host itself, one otherwise)
and the user's tolerance.
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
    non-negative integer, the count of the state named by the key's first parameter) or ``states`` (a JSON object
    with every state's count).
    """
    answer = '' if answer is None else str(answer).strip()
    tolerance = int(tolerance)
    own = own or {}
    if kind not in ('count', 'states'):
        raise ValueError('unknown answer kind {0!r} for {1} in the item table: count or states'.format(kind, key))
    state = _host_wide(key, kind, before)
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


class FilterModule(object):
    def filters(self):
        return {'zabbix_tcp_status_answer_problem': answer_problem}
