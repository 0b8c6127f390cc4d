# -*- coding: utf-8 -*-
"""The same parsing cases under the targets' old interpreters (no pytest there): one result per case."""

import os
import re
import subprocess

import pytest

import parsing_cases

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'parsing_cases.py')
OLD_PYTHONS = {'2.7': '/root/.pyenv/versions/2.7.18/bin/python', '3.6': '/root/.pyenv/versions/3.6.15/bin/python'}
_RESULTS = {}


def results(version):
    """{case: 'ok' or the failure} from one run of the stdlib runner under that interpreter."""
    if version not in _RESULTS:
        proc = subprocess.run([OLD_PYTHONS[version], '-B', RUNNER], capture_output=True, text=True, timeout=120)
        found = dict(re.findall(r'^(?:ok|FAIL) (\w+)(?::? ?)(.*)$', proc.stdout, re.M))
        if not found:
            pytest.fail('runner gave no results under {0}: rc={1}\n{2}{3}'.format(
                version, proc.returncode, proc.stdout, proc.stderr))
        ok = set(re.findall(r'^ok (\w+)$', proc.stdout, re.M))
        _RESULTS[version] = dict((name, 'ok' if name in ok else found[name]) for name in found)
        assert proc.stdout.strip().splitlines()[-1].startswith('python ' + version)
    return _RESULTS[version]


@pytest.mark.parametrize('version', sorted(OLD_PYTHONS))
@pytest.mark.parametrize('name', [name for name, _function in parsing_cases.CASES])
def test_case_on_old_python(version, name):
    outcome = results(version).get(name)
    assert outcome is not None, 'case {0} did not run under python {1}'.format(name, version)
    assert outcome == 'ok', 'python {0}: {1}'.format(version, outcome)
