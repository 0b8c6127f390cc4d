"""SELinux is not available on this machine: the role's decision to run its SELinux tasks, by kind of host.

tests/role/selinux_conditions.yml evaluates the decision (_zabbix_tcp_status_selinux_wanted) for the facts of
seven kinds of host, then runs the role's own configure.yml on one inventory host of each kind, in check mode
and with an interpreter that cannot run anything (/bin/false), so that only the conditions act: the SELinux
tasks must be skipped where the decision is false and started where it is true. Removing or changing the gate
in configure.yml fails the second play."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join('tests', 'role', 'selinux_conditions.yml')
KINDS = {'el7-enforcing': True, 'el9-permissive': True, 'el8-selinux-disabled': False, 'el-without-the-fact': False,
         'debian': False, 'debian-with-selinux': False, 'el7-enforcing-turned-off': False}


def run_playbook():
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), PLAYBOOK,
                           '--tags', 'selinux'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_selinux_decision_and_gate():
    result = run_playbook()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    out = result.stdout
    assert out.count('ok: [localhost] => (item=') == len(KINDS), out[-3000:]
    final = out[out.index('TASK [The SELinux tasks ran exactly where the decision says]'):]
    assert sorted(re.findall(r'^ok: \[([^\]]+)\]', final, re.M)) == sorted(KINDS), final
    recap = dict(re.findall(r'^(\S+)\s+: (ok=.*)$', out, re.M))
    for host, want in KINDS.items():
        counts = dict((key, int(value)) for key, value in re.findall(r'(\w+)=(\d+)', recap[host]))
        assert counts['failed'] == 0 and counts['unreachable'] == 0, (host, recap[host])
        # Started SELinux tasks fail here (nothing can run) and are ignored; gated ones are skipped.
        assert (counts['ignored'] > 0) == want and (counts['skipped'] > 0) != want, (host, recap[host])
