# -*- coding: utf-8 -*-
"""The plain-unittest modules of tests/unit under the targets' own interpreters, where pytest is not installed:
CentOS 7's Python 2.7 and 3.6, and the newest Python the project supports (3.13). Each runs the standard library's
``python -m unittest`` on the unchanged file; every test the module holds must have run and passed there."""

import os
import re
import subprocess
import unittest

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'roles', 'zabbix_tcp_status', 'module_utils')
# The counter's parsers, the agent-configuration reader and the transaction: the module_utils that run on the targets.
MODULES = ('test_parsing', 'test_agent_config', 'test_txn')


@pytest.mark.parametrize('module', MODULES)
@pytest.mark.parametrize('interpreter', ['2.7', '3.6', '3.13'], indirect=True)
def test_unittest_module_under_target_python(interpreter, module):
    want = unittest.defaultTestLoader.loadTestsFromName(module).countTestCases()
    assert want > 0
    proc = subprocess.run([interpreter, '-B', '-m', 'unittest', '-v', module], cwd=HERE,
                          env=dict(os.environ, PYTHONPATH=MODULE_UTILS), capture_output=True, text=True, timeout=120)
    report = proc.stderr[-6000:]
    assert proc.returncode == 0, report
    # The standard runner's own summary: all of the module's tests ran (none lost to an import-time skip).
    assert re.search(r'^Ran {0} tests? in '.format(want), proc.stderr, re.M), report
    assert proc.stderr.rstrip().endswith('OK'), report
