# -*- coding: utf-8 -*-
"""Lists every task boundary of the change path and of the rollback path, with the state the host is in there, as
the table of docs/FAULTS.md (printed; the tests read the table back for ZTS_FAULTS_ALL=1).

Runs the role twice on this machine's agent with the zts_kill_at callback recording each task start: a change (a
new JSON key), and a change whose verify fails (the running agent's script answers 0). Hold the agents' lock:
    flock /tmp/zts-system-agent.lock .venv/bin/python tests/role/record_boundaries.py
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from role_run import fake_python, playbook  # noqa: E402

KILLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'callback_plugins')
FIRST = 'Install the counter script'
LAST = "Clear the host's journal and release its lock"


def record(*extra):
    path = tempfile.mktemp(prefix='zts-boundaries-')
    env = dict(os.environ, ANSIBLE_CALLBACK_PLUGINS=KILLER, ANSIBLE_CALLBACKS_ENABLED='zts_kill_at', ZTS_RECORD=path)
    playbook(*extra, env=env)
    with open(path) as handle:
        names = [line.rstrip('\n').split(' : ', 1)[-1] for line in handle]
    os.remove(path)
    return names


def states(names, failing):
    """(name, nth, state) of every task start from the change to the commit (or to the failure's end)."""
    rows, seen, state = [], {}, None
    started = False
    for name in names:
        if name.startswith(FIRST):
            started, state = True, 'before the change: lock held, nothing written'
        if not started:
            continue
        if name.startswith('Note that the role restarts the agent'):
            state = 'the restart owed and about to happen'
        elif name.startswith('Make sure the agent runs and starts at boot'):
            state = 'agent restarted on the new files, not verified'
        elif name.startswith(LAST):
            state = 'verified, journal not yet cleared'
        elif name.startswith('Put back every file this run changed'):
            state = 'verify failed, nothing put back yet'
        elif name.startswith('Note whether this run touched'):
            state = 'files put back, agent still on the failed files'
        elif state == 'files put back, agent still on the failed files' and name.startswith('Keep the agent from'):
            state = 'agent restarted on the put-back files'
        seen[name] = seen.get(name, 0) + 1
        rows.append((name, seen[name], state))
        if name.startswith(FIRST):
            state = 'files written and journaled, agent not restarted'
        if name.startswith(LAST if not failing else 'Fail the host with what went wrong'):
            break
    return rows


def main():
    assert playbook().rc == 0
    change = states(record('-e', 'zabbix_tcp_status_json_key=tcp.status.rec'), False)
    lying = fake_python('all_zero', only_running_agent=True)
    failing = states(record('-e', 'zabbix_tcp_status_python=' + lying), True)
    failing = failing[[row[2] for row in failing].index('verify failed, nothing put back yet'):]
    print('| run | nth | task about to start | state of the host |')
    print('|---|---|---|---|')
    for kind, rows in (('change', change), ('failing', failing)):
        for name, nth, state in rows:
            print('| {0} | {1} | `{2}` | {3} |'.format(kind, nth, name.replace('|', '/'), state))
    assert playbook().rc == 0


if __name__ == '__main__':
    main()
