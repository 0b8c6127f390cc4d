# -*- coding: utf-8 -*-
"""The verify's judgement of one zabbix_get answer (roles/zabbix_tcp_status/filter_plugins/tcp_status_verify.py).

The role's real runs against wrong agents are in tests/role; here the window itself, case by case.
"""
import importlib.util
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
