# -*- coding: utf-8 -*-
"""tests/interpreters.py: which interpreter a name means (the fixture 'interpreter' and find_interpreters())."""

import os
import stat

from interpreters import AGENT_PYTHON, find_interpreters, interpreter_path, pyenv_interpreter


def make_pyenv(root, versions, executable=True):
    for version in versions:
        bindir = root / 'versions' / version / 'bin'
        bindir.mkdir(parents=True)
        python = bindir / 'python'
        python.write_text('#!/bin/sh\n')
        python.chmod(stat.S_IRWXU if executable else stat.S_IRUSR)
    return str(root)


def test_newest_release_of_the_prefix_by_number_not_by_text(tmp_path):
    root = make_pyenv(tmp_path, ['3.6.9', '3.6.15', '3.6.15-dev', '3.60.1', '2.7.18', '3.13.0', '3.13.10'])
    assert pyenv_interpreter('3.6', root) == os.path.join(root, 'versions', '3.6.15', 'bin', 'python')
    assert pyenv_interpreter('3.13', root) == os.path.join(root, 'versions', '3.13.10', 'bin', 'python')
    assert pyenv_interpreter('2.7.18', root) == os.path.join(root, 'versions', '2.7.18', 'bin', 'python')
    assert pyenv_interpreter('3.7', root) is None


def test_a_version_without_a_runnable_python_is_missing(tmp_path):
    root = make_pyenv(tmp_path, ['3.6.15'], executable=False)
    assert pyenv_interpreter('3.6', root) is None
    assert pyenv_interpreter('3.6', str(tmp_path / 'no-such-root')) is None


def test_pyenv_root_from_the_environment(tmp_path, monkeypatch):
    root = make_pyenv(tmp_path, ['2.7.18'])
    monkeypatch.setenv('PYENV_ROOT', root)
    assert interpreter_path('2.7') == os.path.join(root, 'versions', '2.7.18', 'bin', 'python')
    assert find_interpreters(['2.7', '3.6']) == {'2.7': os.path.join(root, 'versions', '2.7.18', 'bin', 'python')}


def test_agent_is_the_system_python3():
    assert interpreter_path('agent') == (AGENT_PYTHON if os.access(AGENT_PYTHON, os.X_OK) else None)
