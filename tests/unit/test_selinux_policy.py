# -*- coding: utf-8 -*-
"""The role's SELinux policy module (roles/zabbix_tcp_status/files/zabbix_tcp_status.te) builds with the same
commands tasks/selinux.yml runs on EL hosts, here with Debian's checkmodule (checkpolicy) and semodule_package
(semodule-utils), so that a syntax error cannot land; and it grants exactly the rule docs/SELINUX.md explains.
Loading it (semodule -i) needs an SELinux kernel and policy store, which this machine does not have."""

import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'files', 'zabbix_tcp_status.te')
NAME = 'zabbix_tcp_status'
# The one rule, as checkmodule writes the compiled module back out in CIL.
EXPECTED_CIL = [
    '(typeattributeset cil_gen_require zabbix_agent_t)',
    '(allow zabbix_agent_t self (netlink_tcpdiag_socket (create nlmsg_read read write)))',
]


def run(argv, cwd):
    if shutil.which(argv[0]) is None:
        pytest.fail('{0} is missing: run tests/setup-host.sh (Debian packages checkpolicy, semodule-utils)'.format(
            argv[0]))
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)


def build(directory, text):
    """The role's build steps in directory on a source text; (checkmodule, semodule_package) processes."""
    with open(os.path.join(directory, NAME + '.te'), 'w') as handle:
        handle.write(text)
    checked = run(['checkmodule', '-M', '-m', '-o', NAME + '.mod', NAME + '.te'], directory)
    if checked.returncode != 0:
        return checked, None
    return checked, run(['semodule_package', '-o', NAME + '.pp', '-m', NAME + '.mod'], directory)


def source():
    with open(SOURCE) as handle:
        return handle.read()


def test_policy_module_builds(tmp_path):
    checked, packaged = build(str(tmp_path), source())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    assert (tmp_path / (NAME + '.pp')).stat().st_size > 0


def test_policy_module_grants_exactly_the_counters_socket(tmp_path):
    checked, _packaged = build(str(tmp_path), source())
    assert checked.returncode == 0, checked.stderr
    proc = run(['checkmodule', '-M', '-b', '-C', '-o', 'rules.cil', NAME + '.mod'], str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rules = [line.strip() for line in (tmp_path / 'rules.cil').read_text().splitlines() if line.strip()]
    assert rules == EXPECTED_CIL


def test_policy_module_name_and_version():
    """semodule -l lists the module by this name (tasks/selinux.yml looks for it); one version line."""
    found = re.findall(r'^module\s+(\S+)\s+([0-9]+(?:\.[0-9]+)*)\s*;', source(), re.M)
    assert len(found) == 1 and found[0][0] == NAME, found


def test_a_syntax_error_fails_the_build(tmp_path):
    """The check can fail: the same source with one semicolon missing does not build."""
    broken = source().replace('allow zabbix_agent_t self:netlink_tcpdiag_socket { create nlmsg_read read write };',
                              'allow zabbix_agent_t self:netlink_tcpdiag_socket { create nlmsg_read read write }')
    assert broken != source()
    checked, packaged = build(str(tmp_path), broken)
    assert checked.returncode != 0 and packaged is None, checked.stdout
    assert 'syntax error' in checked.stderr + checked.stdout
