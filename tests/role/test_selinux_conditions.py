"""SELinux is not available on this machine: test the role's decision to label the script, by kind of host."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_selinux_labelling_conditions():
    result = subprocess.run(['ansible-playbook', 'tests/role/selinux_conditions.yml'], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count('ok: [localhost] => (item=') == 7


def test_selinux_tasks_are_gated_by_that_decision():
    with open(os.path.join(ROOT, 'roles/zabbix_tcp_status/tasks/configure.yml')) as handle:
        text = handle.read()
    block = text[text.index('ansible.builtin.import_tasks: selinux.yml'):]
    assert block.splitlines()[1].strip() == 'when: _zabbix_tcp_status_selinux_wanted | bool'
