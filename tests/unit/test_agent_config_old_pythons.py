# -*- coding: utf-8 -*-
"""test_agent_config.py (plain unittest) under the targets' own interpreters: CentOS 7's Python 2.7 and 3.6."""
import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'roles', 'zabbix_tcp_status', 'module_utils')
OLD_PYTHONS = {'2.7': '/root/.pyenv/versions/2.7.18/bin/python', '3.6': '/root/.pyenv/versions/3.6.15/bin/python'}


@pytest.mark.parametrize('version', sorted(OLD_PYTHONS))
def test_agent_config_reader_under_old_python(version):
    python = OLD_PYTHONS[version]
    if not os.path.exists(python):
        pytest.skip('no Python {0} at {1}'.format(version, python))
    proc = subprocess.run([python, '-B', '-m', 'unittest', '-v', 'test_agent_config'], cwd=HERE,
                          env=dict(os.environ, PYTHONPATH=MODULE_UTILS), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith('OK'), proc.stderr[-3000:]
    assert ' ... ok' in proc.stderr and ' ... FAIL' not in proc.stderr
