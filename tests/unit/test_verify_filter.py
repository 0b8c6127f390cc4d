# -*- coding: utf-8 -*-
"""The verify's judgement of one zabbix_get answer (roles/zabbix_tcp_status/filter_plugins/tcp_status_verify.py).

The role's real runs against wrong agents are in tests/role; here the window itself, case by case.
"""
import importlib.util
import json
import os

import pytest

from ss_oracle import STATES

PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      'roles', 'zabbix_tcp_status', 'filter_plugins', 'tcp_status_verify.py')
_spec = importlib.util.spec_from_file_location('tcp_status_verify', PLUGIN)
verify = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verify)

QUIET = dict((state, 0) for state in STATES)
QUIET.update(ESTABLISHED=2, LISTEN=3, TIME_WAIT=10)
OWN = {'ESTABLISHED': 2, 'TIME_WAIT': 5}


def problem(answer, key, before=QUIET, after=QUIET, own=OWN, tolerance=0):
    kind = 'states' if key == 'tcp.status.json' else 'count'
    return verify.answer_problem(answer, key, kind, before, after, own, tolerance)


def json_answer(**changes):
    counts = dict(QUIET, **changes)
    return '{' + ','.join('"{0}":{1}'.format(state, counts[state]) for state in STATES if state in counts) + '}'


@pytest.mark.parametrize('answer', ['3'])
def test_the_right_count_passes(answer):
    assert problem(answer, 'tcp.status[LISTEN]') == ''


@pytest.mark.parametrize('answer, key', [
    ('0', 'tcp.status[LISTEN]'),          # the example: 3 LISTEN, an agent answering 0
    ('23', 'tcp.status[LISTEN]'),         # ... or 23
    ('0', 'tcp.status[ESTABLISHED]'),
    ('oops', 'tcp.status[LISTEN]'),
    ('-3', 'tcp.status[LISTEN]'),
    ('3.0', 'tcp.status[LISTEN]'),
    ('', 'tcp.status[LISTEN]'),
    ('ZBX_NOTSUPPORTED: tcp_status: unknown TCP state', 'tcp.status[LISTEN]'),
])
def test_wrong_single_answers_fail(answer, key):
    assert problem(answer, key) != ''


def test_window_follows_the_churn_and_the_verify_own_sockets():
    # ESTABLISHED: the query's own connection adds up to 2 on this host.
    assert problem('4', 'tcp.status[ESTABLISHED]') == ''
    assert problem('5', 'tcp.status[ESTABLISHED]') != ''
    # TIME_WAIT: one per zabbix_get call, which also hide as many expired ones from the count after.
    assert problem('15', 'tcp.status[TIME_WAIT]') == ''
    assert problem('16', 'tcp.status[TIME_WAIT]') != ''
    assert problem('5', 'tcp.status[TIME_WAIT]') == ''
    assert problem('4', 'tcp.status[TIME_WAIT]') != ''
    assert problem('0', 'tcp.status[TIME_WAIT]') != ''
    # Churn seen between the module's two counts widens the window both ways by that much.
    after = dict(QUIET, LISTEN=5)
    assert problem('1', 'tcp.status[LISTEN]', after=after) == ''
    assert problem('0', 'tcp.status[LISTEN]', after=after) != ''
    assert problem('7', 'tcp.status[LISTEN]', after=after) == ''
    assert problem('8', 'tcp.status[LISTEN]', after=after) != ''
    # The user's tolerance on top.
    assert problem('5', 'tcp.status[LISTEN]', tolerance=2) == ''
    assert problem('6', 'tcp.status[LISTEN]', tolerance=2) != ''


def test_json_answer():
    assert problem(json_answer(), 'tcp.status.json') == ''
    for wrong in [
        json_answer(LISTEN=0),
        json_answer(ESTABLISHED='"oops"'),
        json_answer(LISTEN='null'),
        json_answer(LISTEN='3.0'),
        json_answer(LISTEN='true'),
        json_answer(CLOSING=-1),
        json_answer().replace(',"CLOSING":0', ''),
        json_answer().replace('}', ',"NEW_STATE":0}'),
        '[3]',
        '{oops}',
        '',
    ]:
        assert problem(wrong, 'tcp.status.json') != '', wrong


def test_messages_say_what_was_expected():
    assert problem('0', 'tcp.status[LISTEN]').startswith('exactly 3 for LISTEN (the module counted 3 before')
    assert 'missing: CLOSING' in problem(json_answer().replace(',"CLOSING":0', ''), 'tcp.status.json')
    assert 'ESTABLISHED is "oops"' in problem(json_answer(ESTABLISHED='"oops"'), 'tcp.status.json')


def test_a_count_key_names_its_state_first_and_empty_parameters_count_the_whole_host():
    assert problem('3', 'tcp.status[listen,,,]') == ''
    assert problem('0', 'tcp.status[LISTEN,]') != ''
    assert verify.answer_problem('10', 'tcp.status.extra[TIME_WAIT]', 'count', QUIET, QUIET, OWN) == ''
    assert verify.answer_problem(json_answer(), 'tcp.status.json[,,]', 'states', QUIET, QUIET, OWN) == ''


@pytest.mark.parametrize('key, kind', [('tcp.status[NOSTATE]', 'count'), ('tcp.status[]', 'count'),
                                       ('tcp.status[LISTEN]', 'number'), ('tcp.status[LISTEN,10050]', 'count'),
                                       ('tcp.status.json[,,ipv4]', 'states'), ('tcp.status.json[22]', 'states')])
def test_an_item_table_row_the_verify_cannot_judge_is_an_error_not_a_pass(key, kind):
    with pytest.raises(ValueError):
        verify.answer_problem('3', key, kind, QUIET, QUIET, OWN)


# ---- The per-port answers (tcp.status.ports and its discovery form), against QUIET: 3 LISTEN, 2 ESTABLISHED.

def port_entry(port, service='', queue=0, backlog=128, **states):
    counts = dict((state, 0) for state in STATES)
    counts.update(states)
    return {'port': port, 'service': service, 'queue': queue, 'backlog': backlog, 'states': counts}


def ports_answer(ports=None, **fields):
    data = {'ports': [port_entry(10050, 'zabbix-agent', ESTABLISHED=2, LISTEN=2), port_entry(22, 'ssh', LISTEN=1)]
            if ports is None else ports, 'remote': [], 'truncated': 0, 'listen_overflows': 4, 'listen_drops': 6}
    data.update(fields)
    return json.dumps(data)


def ports_problem(answer, before=QUIET, after=QUIET, own=OWN, tolerance=0, key='tcp.status.ports'):
    return verify.answer_problem(answer, key, 'ports', before, after, own, tolerance)


def changed(change):
    """A copy of the good answer's data with change(data) applied, as JSON."""
    data = json.loads(ports_answer())
    change(data)
    return json.dumps(data)


def test_a_right_ports_answer_passes():
    assert ports_problem(ports_answer()) == ''
    # /proc has no backlog: null is an answer; the query's own ESTABLISHED pair may be on the agent's port.
    assert ports_problem(changed(lambda d: d['ports'][0].update(backlog=None))) == ''
    assert ports_problem(changed(lambda d: d['ports'][0]['states'].update(ESTABLISHED=4))) == ''
    # The kernel queues backlog + 1 connections at most.
    assert ports_problem(changed(lambda d: d['ports'][1].update(queue=3, backlog=2))) == ''


def _set_state(index, state, value):
    return lambda d: d['ports'][index]['states'].update({state: value})


@pytest.mark.parametrize('answer', [
    '', 'oops', '[]', '{}',
    changed(lambda d: d.pop('truncated')),
    changed(lambda d: d.update(extra=1)),
    changed(lambda d: d.update(truncated=-1)),
    changed(lambda d: d.update(truncated=True)),
    changed(lambda d: d.update(truncated=1)),                     # cut off, yet 2 ports in a short answer
    changed(lambda d: d.update(listen_overflows='4')),
    changed(lambda d: d.update(listen_drops=1.5)),
    changed(lambda d: d.update(listen_drops=3)),                  # fewer drops than overflows
    changed(lambda d: d.update(remote=[{'port': 5432}])),         # no remote port was asked for
    changed(lambda d: d.update(ports={'22': {}})),
    changed(lambda d: d.update(ports=[port_entry(1000 + n, LISTEN=1) for n in range(101)])),
    changed(lambda d: d['ports'][1].pop('service')),
    changed(lambda d: d['ports'][1].update(service=None)),
    changed(lambda d: d['ports'][1].update(port=10050)),          # twice the same port
    changed(lambda d: d['ports'][1].update(port=70000)),
    changed(lambda d: d['ports'][1].update(port=True)),
    changed(lambda d: d['ports'][1].update(port='22')),
    changed(lambda d: d['ports'][1]['states'].pop('CLOSING')),
    changed(lambda d: d['ports'][1]['states'].update(NEW_STATE=0)),
    changed(_set_state(1, 'TIME_WAIT', -1)),
    changed(_set_state(1, 'TIME_WAIT', False)),
    changed(_set_state(1, 'TIME_WAIT', 0.5)),
    changed(_set_state(1, 'LISTEN', 0)),                          # a listed port has a listener
    changed(lambda d: d['ports'][1].update(queue=4, backlog=2)),  # beyond backlog + 1
    changed(lambda d: d['ports'][1].update(queue=None)),
    changed(lambda d: d['ports'][1].update(queue=True)),
    changed(lambda d: d['ports'][1].update(backlog='128')),
    changed(lambda d: d['ports'].reverse()),                       # not the busiest first
    changed(_set_state(0, 'ESTABLISHED', 5)),                      # more than the host has, own sockets included
    changed(_set_state(0, 'TIME_WAIT', 16)),                       # ... for TIME_WAIT too (10 + 5 own)
    changed(_set_state(0, 'LISTEN', 3)),                           # 4 LISTEN over the ports, the host has 3
    changed(lambda d: d['ports'].pop()),                           # 2 LISTEN: one listener is missing
    changed(lambda d: d.update(ports=[])),
])
def test_wrong_ports_answers_fail(answer):
    assert ports_problem(answer) != '', answer


def test_ports_answer_cut_off_by_the_bound():
    many = dict(QUIET, LISTEN=150)
    ports = [port_entry(1000 + n, LISTEN=1) for n in range(100)]
    assert ports_problem(ports_answer(ports, truncated=50), before=many, after=many) == ''
    # Not cut off, yet a third of the host's listeners are on no listed port.
    assert 'every LISTEN socket on a listed port' in ports_problem(ports_answer(ports), before=many, after=many)
    # The LISTEN window widens with the churn between the module's counts.
    assert ports_problem(ports_answer(ports), before=many, after=dict(QUIET, LISTEN=125)) == ''


def test_ports_messages_say_what_was_expected():
    assert ports_problem(changed(_set_state(0, 'ESTABLISHED', 5))).startswith(
        'at most 4 ESTABLISHED sockets over all listed ports')
    assert 'backlog + 1' in ports_problem(changed(lambda d: d['ports'][1].update(queue=4, backlog=2)))
    assert ports_problem(changed(lambda d: d['ports'].reverse())).startswith('the busiest ports first')


def discovery_answer(rows=None):
    return json.dumps({'data': [{'{#PORT}': '10050', '{#SERVICE}': 'zabbix-agent', '{#SIDE}': 'local'},
                                {'{#PORT}': '22', '{#SERVICE}': 'ssh', '{#SIDE}': 'local'}]
                       if rows is None else rows})


def discovery_problem(answer, before=QUIET):
    return verify.answer_problem(answer, 'tcp.status.ports.discovery', 'discovery', before, before, OWN, 0)


def test_discovery_answers():
    assert discovery_problem(discovery_answer()) == ''
    row = {'{#PORT}': '22', '{#SERVICE}': 'ssh', '{#SIDE}': 'local'}
    for wrong in [
        '', '[]', json.dumps([row]),                              # LLD rows without the data wrapper (3.4 needs it)
        json.dumps({'data': [row], 'extra': 1}),
        discovery_answer([]),                                     # the agent itself listens
        discovery_answer([dict(row, **{'{#PORT}': 22})]),         # macros are strings
        discovery_answer([dict(row, **{'{#PORT}': '022'})]),
        discovery_answer([dict(row, **{'{#PORT}': '70000'})]),
        discovery_answer([row, row]),
        discovery_answer([dict(row, **{'{#SIDE}': 'remote'})]),
        discovery_answer([dict(row, **{'{#SERVICE}': None})]),
        discovery_answer([{'{#PORT}': '22', '{#SERVICE}': 'ssh'}]),
        discovery_answer([dict(row, **{'{#PORT}': str(port)}) for port in range(1, 5)]),  # 4 ports, 3 LISTEN
    ]:
        assert discovery_problem(wrong) != '', wrong


@pytest.mark.parametrize('key, kind', [('tcp.status.ports[22]', 'ports'), ('tcp.status.ports[,,ipv4]', 'ports'),
                                       ('tcp.status.ports.discovery[,5432]', 'discovery'),
                                       ('tcp.status.ports', 'portz')])
def test_per_port_checks_ask_the_whole_host(key, kind):
    with pytest.raises(ValueError):
        verify.answer_problem(ports_answer(), key, kind, QUIET, QUIET, OWN)


def test_one_attempts_answers_are_judged_together():
    """tasks/ask.yml's judgement of an attempt: each answer's value taken out of its frame, a wrong value or a
    non-zero exit named by key, nothing when every answer is right."""
    frame = r'\[[a-z]\|(.*)\]\s*$'
    answers = [
        {'item': {'key': 'tcp.status[LISTEN]', 'answer': 'count'}, 'rc': 0, 'stdout': 'tcp.status[LISTEN]  [t|3]'},
        {'item': {'key': 'tcp.status.json', 'answer': 'states'}, 'rc': 0, 'stdout': 'tcp.status.json  [t|%s]' %
         json_answer()},
    ]
    assert verify.answers_problems(answers, frame, QUIET, QUIET, OWN) == {}
    wrong = [dict(answers[0], stdout='tcp.status[LISTEN]  [t|0]'), dict(answers[1], rc=1)]
    problems = verify.answers_problems(wrong, frame, QUIET, QUIET, OWN)
    assert sorted(problems) == ['tcp.status.json', 'tcp.status[LISTEN]']
    assert 'LISTEN' in problems['tcp.status[LISTEN]'] and problems['tcp.status.json'] == 'exit code 0'
    unframed = [dict(answers[0], stdout='ZBX_NOTSUPPORTED')]
    assert verify.answers_problems(unframed, frame, QUIET, QUIET, OWN)['tcp.status[LISTEN]']


def test_the_checks_and_the_script_parents():
    items = [{'key': 'a', 'answer': 'count', 'checks': ['a[X]', 'a[Y]']}, {'key': 'b', 'answer': 'states',
                                                                          'checks': ['b']}]
    assert verify.checks(items) == [{'key': 'a[X]', 'answer': 'count'}, {'key': 'a[Y]', 'answer': 'count'},
                                    {'key': 'b', 'answer': 'states'}]
    assert verify.parents('/etc/zabbix/') == ['/etc/zabbix', '/etc', '/']
    assert verify.parents('/') == ['/']
