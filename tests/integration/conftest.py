# -*- coding: utf-8 -*-
"""Fixtures of the live tests: real loopback sockets closed after each test, and a cached ansible-core 2.16."""

import fcntl
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tcp_live import AC216_REQUIREMENTS, AC216_VENV, SocketFarm  # noqa: E402  (found through the line above)


@pytest.fixture
def farm():
    sockets = SocketFarm()
    try:
        yield sockets
    finally:
        sockets.close()


@pytest.fixture(scope='session')
def ansible_216():
    """bin dir of a venv with ansible-core 2.16 (created once, cached outside the repo)."""
    bin_dir = os.path.join(AC216_VENV, 'bin')
    marker = os.path.join(AC216_VENV, '.zts-requirements')
    with open(AC216_REQUIREMENTS) as handle:
        wanted = handle.read()
    os.makedirs(os.path.dirname(AC216_VENV), exist_ok=True)
    with open(AC216_VENV + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be creating it
        current = None
        if os.path.exists(marker):
            with open(marker) as handle:
                current = handle.read()
        if current != wanted:
            # Built in place (a venv's scripts name its path); the marker, written last, says it is complete.
            subprocess.run([sys.executable, '-m', 'venv', '--clear', AC216_VENV], check=True)
            subprocess.run([os.path.join(bin_dir, 'pip'), 'install', '-q', '--disable-pip-version-check',
                            '-r', AC216_REQUIREMENTS], check=True, capture_output=True, text=True)
            with open(marker, 'w') as handle:
                handle.write(wanted)
    version = subprocess.run([os.path.join(bin_dir, 'ansible'), '--version'], capture_output=True, text=True,
                             check=True).stdout
    assert 'core 2.16.' in version, version
    return bin_dir
