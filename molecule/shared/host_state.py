#!/usr/bin/env python3
"""What molecule's check step must not change on the host, as one JSON object on stdout.

Run on the host by molecule/shared/snapshot_before_check.yml (the side_effect step, just before `check`) and by
molecule/shared/tests/test_role.py (the verify step, just after it); the test compares the two.

- files: every file under the agent's directory (/etc/zabbix: configs, include directories, the script) and the
  local facts (/etc/ansible/facts.d), and the role's own backup directory: sha256, mode, owner (symlinks: target);
- agents: for each agent pid file, the pid and its process start time (a restart changes both, even if a pid is
  reused);
- boot: the agents' SysV boot links (/etc/rc?.d/*zabbix*) and systemd units (/etc/systemd/system/**/*zabbix*).
"""
import glob
import hashlib
import json
import os
import stat

TREES = ['/etc/zabbix', '/etc/ansible/facts.d', '/var/lib/zabbix_tcp_status']
PID_FILES = ['/run/zabbix/zabbix_agentd.pid', '/run/zabbix/zabbix_agent2.pid']
BOOT = ['/etc/rc?.d/*zabbix*', '/etc/systemd/system/**/*zabbix*']


def describe(path):
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return ['link', os.readlink(path)]
    if stat.S_ISDIR(info.st_mode):
        return ['dir', stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid]
    with open(path, 'rb') as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return [digest, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid]


def agent(pid_file):
    try:
        with open(pid_file) as handle:
            pid = handle.read().strip()
        with open('/proc/%s/stat' % pid) as handle:
            started = handle.read().rpartition(')')[2].split()[19]
    except (IOError, OSError):
        return None
    return [pid, started]


def state():
    files = {}
    for top in TREES:
        for folder, dirs, names in os.walk(top):
            for name in dirs + names:
                path = os.path.join(folder, name)
                files[path] = describe(path)
    boot = {}
    for pattern in BOOT:
        for path in glob.glob(pattern, recursive=True):
            boot[path] = describe(path)
    return {'files': files, 'agents': dict((p, agent(p)) for p in PID_FILES), 'boot': boot}


if __name__ == '__main__':
    print(json.dumps(state(), sort_keys=True))
