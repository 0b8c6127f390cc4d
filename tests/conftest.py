# -*- coding: utf-8 -*-
"""Fixtures shared by every test directory. Import paths are set once, in pytest.ini (``pythonpath``)."""

import pytest

from interpreters import interpreter_path
from tcp_live import SocketFarm


@pytest.fixture
def interpreter(request):
    """Path of the interpreter named by indirect parametrization ('2.7', '3.6', '3.13', ... or 'agent' for
    /usr/bin/python3, the interpreter the agent runs the script with); the test is skipped when it is missing.

        @pytest.mark.parametrize('interpreter', ['2.7', '3.6', 'agent', '3.13'], indirect=True)
    """
    name = getattr(request, 'param', None)
    if name is None:
        raise pytest.UsageError("the interpreter fixture is parametrized indirectly: "
                                "@pytest.mark.parametrize('interpreter', ['2.7', ...], indirect=True)")
    path = interpreter_path(name)
    if path is None:
        pytest.skip('interpreter {0} is not installed here (pyenv versions, or /usr/bin/python3 for agent)'
                    .format(name))
    return path


@pytest.fixture
def farm():
    """Real TCP sockets on loopback in known states (tests/integration/tcp_live.py), closed after the test."""
    sockets = SocketFarm()
    try:
        yield sockets
    finally:
        sockets.close()
