# -*- coding: utf-8 -*-
"""The script's own directory is not an import path (issue 9 item 4).

The agent runs ``python -S /etc/zabbix/tcp_status.py STATE``; Python puts the script's directory first on
sys.path, so a ``socket.py`` written beside the script would run as the agent's user (as root for the local
fact) on every call. Here the counter is copied into a directory that also holds such modules, each of which
only leaves a marker file when imported, and is run exactly as the agent runs it, under CentOS 7's Python 2.7
and 3.6, this machine's /usr/bin/python3 and Python 3.13.
"""

import os
import re
import shutil
import subprocess

import pytest

from tcp_live import COUNTER

# Everything the counter imports, and __future__ (a "from __future__ import" is an import like any other).
PLANTED = ('__future__', 'socket', 'struct', 'errno', 'os', 'time', 'psutil')


@pytest.fixture
def planted(tmp_path):
    """(script path, marker directory): the counter as tcp_status.py beside modules that leave markers."""
    scripts = tmp_path / 'zabbix'
    markers = tmp_path / 'markers'
    scripts.mkdir()
    markers.mkdir()
    script = scripts / 'tcp_status.py'
    shutil.copy(COUNTER, str(script))
    for name in PLANTED:
        (scripts / (name + '.py')).write_text(
            'open({0!r}, "w").close()\n'.format(str(markers / name)))
    return str(script), markers


@pytest.mark.parametrize('interpreter', ['2.7', '3.6', 'agent', '3.13'], indirect=True)
@pytest.mark.parametrize('args', [['LISTEN'], ['all', '', '', 'ipv4']], ids=['LISTEN', 'all'])
def test_modules_beside_the_script_are_not_imported(planted, interpreter, args):
    script, markers = planted
    proc = subprocess.run([interpreter, '-S', script] + args, capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(script))
    imported = sorted(os.listdir(str(markers)))
    assert imported == [], '{0} imported {1} from the script directory'.format(interpreter, imported)
    assert proc.returncode == 0 and proc.stderr == '', (proc.returncode, proc.stderr)
    assert re.match(r'^(0|[1-9][0-9]*|\{.*\})\n$', proc.stdout), proc.stdout


@pytest.mark.parametrize('flag', ['-I', '-P'])
@pytest.mark.parametrize('interpreter', ['agent', '3.13'], indirect=True)
def test_import_path_left_alone_when_python_already_dropped_the_script_directory(interpreter, flag):
    """Under -I or -P (Python 3.11+) sys.path[0] is a standard library path: the counter must not remove it."""
    driver = ('import runpy, sys\n'
              'before = list(sys.path)\n'
              'sys.argv = [{0!r}, "LISTEN"]\n'
              'try:\n'
              '    runpy.run_path({0!r}, run_name="__main__")\n'
              'except SystemExit as exc:\n'
              '    assert exc.code == 0, exc.code\n'
              'print("PATH " + repr(sys.path == before))\n').format(COUNTER)
    proc = subprocess.run([interpreter, flag, '-S', '-c', driver], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == 'PATH True', proc.stdout
