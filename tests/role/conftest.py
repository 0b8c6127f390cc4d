# -*- coding: utf-8 -*-
"""Fixtures of the role tests that drive this machine's agents (helpers in role_run.py). A test module that runs
the role against the agents says so with ``pytestmark = pytest.mark.usefixtures('system_agent')``."""
import fcntl
import os
import shutil
import tempfile

import pytest

from role_run import LOCK, agent_running, prepare, recipe_answers, remove_fakes, snapshot, stop_agents

_RECIPE = {}


@pytest.fixture(scope='module')
def system_agent():
    """Hold the machine's agents for the module (the lock every test driving them takes); leave them stopped
    and the fake interpreters removed afterwards."""
    with open(LOCK, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            stop_agents()
            remove_fakes()
            _RECIPE.clear()


@pytest.fixture
def recipe_host(system_agent):
    """The recipe's host (classic agent), running; returns its snapshot. A test that ends by asserting that its
    rollback left the host exactly so lets the next test start from there (saves a prepare run); otherwise
    prepare.yml runs again."""
    known = _RECIPE.get('snapshot')
    if not (known and snapshot() == known and agent_running('agent') and recipe_answers()):
        prepare('agent')
        _RECIPE['snapshot'] = snapshot()
    return _RECIPE['snapshot']


@pytest.fixture
def zabbix_tmp():
    """A directory in /tmp that the agent's user can reach (pytest's tmp_path is root's alone)."""
    path = tempfile.mkdtemp(prefix='zts-role-', dir='/tmp')
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)
