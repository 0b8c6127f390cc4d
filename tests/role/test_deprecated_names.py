"""Renamed role variables keep working under their old names, with a warning (issue 12, item 4).

zabbix_tcp_status_verify_retries was always a number of seconds: it is now zabbix_tcp_status_verify_timeout. The
role's own expression decides which wins; this test runs it in a real play with the role's defaults and vars files,
and runs the role's preflight for the warning.
"""
import re
import subprocess

import pytest

from zabbix import role_items

PLAY = """- name: The role's verify timeout as the role computes it
  hosts: localhost
  gather_facts: false
  vars_files: ["{role}/defaults/main.yml", "{role}/vars/main.yml"]
  tasks:
    - name: Show it
      ansible.builtin.debug:
        msg: "TIMEOUT={{{{ _zabbix_tcp_status_verify_timeout }}}}"
"""


def timeout(tmp_path, *extra):
    play = tmp_path / 'play.yml'
    play.write_text(PLAY.format(role=role_items.ROLE))
    proc = subprocess.run(['ansible-playbook', str(play)] + list(extra), cwd=role_items.REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return int(re.search(r'TIMEOUT=(\d+)', proc.stdout).group(1))


@pytest.mark.parametrize('extra, expected', [
    ([], 15),
    (['-e', 'zabbix_tcp_status_verify_timeout=40'], 40),
    (['-e', 'zabbix_tcp_status_verify_retries=7'], 7),
    (['-e', 'zabbix_tcp_status_verify_retries=7', '-e', 'zabbix_tcp_status_verify_timeout=40'], 7),
])
def test_the_old_name_is_honoured(tmp_path, extra, expected):
    assert timeout(tmp_path, *extra) == expected


def test_the_old_name_warns_in_a_run():
    proc = subprocess.run(['ansible-playbook', 'playbook.yml', '--check', '--tags', 'never',
                           '-e', 'zabbix_tcp_status_verify_retries=7'],
                          cwd=role_items.REPO, capture_output=True, text=True, timeout=300)
    out = ' '.join(proc.stdout.split())
    assert proc.returncode == 0, out[-2000:]
    assert '[DEPRECATED] zabbix_tcp_status_verify_retries is now zabbix_tcp_status_verify_timeout' in out, out[-2000:]
