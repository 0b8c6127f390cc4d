# -*- coding: utf-8 -*-
"""Fixtures of the live tests: a cached ansible-core 2.16 (the real loopback sockets, farm, are in tests/conftest.py)."""

import os
import subprocess
import sys

import pytest

from tcp_live import ANSIBLE_CORE_216_VENV


@pytest.fixture(scope='session')
def ansible_216():
    """bin dir of a venv with ansible-core 2.16, made (once, cached outside the repo) by the fleet's own script."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fleet',
                          'venv-ansible-core-2.16.sh')
    env = dict(os.environ, ZTS_ANSIBLE_CORE_216_VENV=ANSIBLE_CORE_216_VENV, ZTS_ANSIBLE_CORE_216_PYTHON=sys.executable)
    result = subprocess.run([script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return os.path.join(result.stdout.strip(), 'bin')
