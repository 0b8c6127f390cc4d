# -*- coding: utf-8 -*-
"""The Python interpreters the tests run the counter and the module under, found once (issue 12).

CentOS 7 ships Python 2.7 and 3.6; pyenv builds them here. A name is a version prefix ('2.7' is the newest
installed 2.7.x under pyenv), or 'agent': /usr/bin/python3, the interpreter the role installs the script for on
this machine. The pyenv root is $PYENV_ROOT, else what `pyenv root` says, else ~/.pyenv.

Tests take them through the ``interpreter`` fixture of tests/conftest.py:

    @pytest.mark.parametrize('interpreter', ['2.7', '3.6', 'agent', '3.13'], indirect=True)
    def test_x(interpreter): ...      # the path; the test is skipped when that interpreter is missing

Code that needs all of them at once (an inventory, a table) calls ``find_interpreters()``.
"""

import os
import re
import subprocess

AGENT_PYTHON = '/usr/bin/python3'
# The versions the project promises to run the counter under (README: 2.7, 3.6 and 3.8-3.13).
WANTED = ('2.7', '3.6', 'agent', '3.13')


def pyenv_root():
    root = os.environ.get('PYENV_ROOT')
    if root:
        return root
    try:
        out = subprocess.run(['pyenv', 'root'], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return os.path.expanduser('~/.pyenv')


def _version_key(name):
    return tuple(int(part) for part in re.findall(r'\d+', name))


def pyenv_interpreter(prefix, root=None):
    """Path of the newest pyenv CPython whose version is ``prefix`` or ``prefix``.N (a final release), or None."""
    versions = os.path.join(root or pyenv_root(), 'versions')
    try:
        names = os.listdir(versions)
    except OSError:
        return None
    pattern = re.compile(r'^{0}(\.\d+)*$'.format(re.escape(prefix)))
    for name in sorted((n for n in names if pattern.match(n)), key=_version_key, reverse=True):
        path = os.path.join(versions, name, 'bin', 'python')
        if os.access(path, os.X_OK):
            return path
    return None


def interpreter_path(name, root=None):
    """Path of the interpreter called ``name`` ('agent' or a version prefix), or None when it is not here."""
    if name == 'agent':
        return AGENT_PYTHON if os.access(AGENT_PYTHON, os.X_OK) else None
    return pyenv_interpreter(name, root)


def find_interpreters(names=WANTED):
    """{name: path} of those of ``names`` found on this machine (missing ones are left out)."""
    root = pyenv_root()
    found = {}
    for name in names:
        path = interpreter_path(name, root)
        if path:
            found[name] = path
    return found
