#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: zabbix_tcp_status_txn
short_description: Change a Zabbix agent's files as one transaction (lock, journal, backups, atomic writes, undo)
description:
  - The role C(zabbix_tcp_status) changes an agent's files only through this module, as dpkg and rpm do their own
    transactions, so that a killed run, two runs at once or a full disk never leave the agent worse than found.
  - O(action=begin) takes the host's lock (one run at a time; a live holder is waited for up to O(lock_timeout)
    seconds, a dead one's lock taken over) and undoes the journal a killed run left (every file restored from its
    backup, created files removed), reporting that the agent is owed a restart.
  - O(action=apply) reads the agent's configuration as the agent loads it and makes it define the role's keys
    exactly once, running O(script) - the UserParameter file where an C(Include=) loads it or a marked block in the
    main file, the old recipe's lines for the same keys commented out, C(AllowKey=) lines before the first
    C(DenyKey=) that would deny them (with O(allow_keys)), the script itself. Every changed file is backed up into
    O(backup_dir) and recorded in the journal before it changes, and written through a temporary file in a
    subdirectory that no C(Include=) loads, then renamed. A failed write puts back what the call had written.
  - O(action=commit) removes the journal after a passed verify and releases the lock; O(action=rollback) undoes the
    journal's changes (unless O(undo=false)), removes it and releases the lock; O(action=release) only releases it.
version_added: "1.2.0"
author:
  - zabbix-tcp-status contributors
options:
  action:
    description: What to do.
    type: str
    required: true
    choices: [begin, apply, commit, rollback, release]
  run:
    description:
      - This run's identity, recorded in the lock and the journal and shown to other runs. C(id) is required;
        C(controller) (host name), C(pid) (the controller's ansible-playbook process), C(boot_id) and C(pidns)
        (the controller's kernel boot id and PID namespace, so that a lock whose controller shares this host's
        PID numbers is known dead as soon as its process is gone) and C(user) are shown when given.
    type: dict
    required: true
  state_dir:
    description: The role's state directory on the host (the lock and the journal).
    type: path
    default: /var/lib/zabbix_tcp_status
  lock_timeout:
    description: Seconds O(action=begin) waits for another live run to finish before failing.
    type: int
    default: 300
  config:
    description: The agent's main configuration file (O(action=apply)).
    type: path
  flavour:
    description: The agent, C(agent) (zabbix_agentd) or C(agent2) (zabbix_agent2).
    type: str
    choices: [agent, agent2]
    default: agent
  keys:
    description: The names of the item keys the role defines (each as C(NAME[*])).
    type: list
    elements: str
    default: []
  script:
    description: The script's path on the host.
    type: path
  script_content:
    description: The script's content (root-owned, mode 0755).
    type: str
  userparameter_file:
    description: The file name of the role's UserParameter file in an include directory.
    type: str
    default: userparameter_tcp_status.conf
  userparameters:
    description: The UserParameter lines (the file's content, or the marked block's lines).
    type: str
  allow_keys:
    description: Add C(AllowKey=) lines for exactly O(keys) before the first C(DenyKey=) that would deny them.
    type: bool
    default: false
  backup_dir:
    description: Where backups go, outside every include directory of the agent.
    type: path
    default: /var/lib/zabbix_tcp_status/backup
  restart_reasons:
    description: Why the agent is owed a restart even when no file changes (a recovered journal); recorded in the
      journal.
    type: list
    elements: str
    default: []
  stale:
    description: Why the running agent has not loaded the files on disk (empty when it has); the agent is owed a
      restart, and the module warns with the reason.
    type: str
    default: ""
  undo:
    description: With O(action=rollback), put back the journal's changes; false keeps the changed files.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: O(action=apply) reports the changes and their diff and writes nothing; O(action=begin) takes the lock
      but leaves a killed run's journal for a real run to undo.
  diff_mode:
    support: full
  platform:
    platforms: posix
notes:
  - The lock is a lease renewed by every call of a run; a holder whose controller cannot be checked from the host
    counts as dead after 240 seconds without a call.
'''

EXAMPLES = r'''
- name: Take the host's lock, undoing what a killed run left
  zabbix_tcp_status_txn:
    action: begin
    run: {id: "{{ run_id }}"}
  register: txn

- name: Install the script and the UserParameters
  zabbix_tcp_status_txn:
    action: apply
    run: {id: "{{ run_id }}"}
    config: /etc/zabbix/zabbix_agentd.conf
    keys: [tcp.status]
    script: /etc/zabbix/tcp_status.py
    script_content: "{{ lookup('file', 'tcp_status.py') }}"
    userparameters: "UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py '$1'\n"
  notify: restart agent

- name: Clear the journal and release the lock after the verify
  zabbix_tcp_status_txn:
    action: commit
    run: {id: "{{ run_id }}"}
'''

RETURN = r'''
taken_over:
  description: The run whose lock was taken over because it was dead, and why (O(action=begin)).
  returned: when a dead run's lock was taken over
  type: dict
waited:
  description: Seconds O(action=begin) waited for another run.
  returned: with O(action=begin)
  type: float
recovered:
  description: What a killed run had left and O(action=begin) undid - its run, the files restored and removed.
  returned: when a killed run's journal was found
  type: dict
restart_reasons:
  description: Why the agent must be restarted (files changed, a recovered journal, an agent that had not loaded
    its files).
  returned: with O(action=begin) and O(action=apply)
  type: list
  elements: str
files_changed:
  description: Whether O(action=apply) changed (or, in check mode, would change) a file.
  returned: with O(action=apply)
  type: bool
changes:
  description: The undo plan - each changed file and its backup (null for a file the run created), latest last.
  returned: with O(action=apply) and O(action=rollback)
  type: list
  elements: dict
  sample: [{"path": "/etc/zabbix/zabbix_agentd.d/userparameter_tcp_status.conf", "backup": null}]
userparameter_path:
  description: Where the UserParameters went (the main file when no C(Include=) loads the role's file).
  returned: with O(action=apply)
  type: str
restored:
  description: Files put back from their backups (O(action=rollback), or O(action=begin) in RV(recovered)).
  returned: with O(action=rollback)
  type: list
  elements: str
removed:
  description: Files the run had created, removed again.
  returned: with O(action=rollback)
  type: list
  elements: str
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.module_utils.zabbix_agent_config import (
    ALLOWKEY_BLOCK, USERPARAMETER_BLOCK, AgentConfig, AgentConfigError, allow_lines, comment_out_foreign,
    first_denying_rule, plan, set_block)
from ansible.module_utils.zabbix_tcp_status_txn import (
    TMP_DIR_NAME, Journal, Lock, TxnError, apply_changes, backup_file, describe_run, read_bytes, undo)


def begin(module, lock, journal):
    result = lock.acquire(module.params['lock_timeout'])
    out = {'changed': False, 'waited': result['waited'], 'restart_reasons': []}
    if result.get('waited_for'):
        module.warn('Waited {0} s for {1} to finish.'.format(result['waited'], describe_run(result['waited_for'])))
    if result['taken_over']:
        out['taken_over'] = dict(result['taken_over'], reason=result['reason'])
        module.warn('Took over the lock of {0}: {1}.'.format(describe_run(result['taken_over']), result['reason']))
    left = journal.read()
    if left:
        if module.check_mode:
            module.warn('{0} left a journal ({1}) that a real run undoes first; check mode leaves it.'.format(
                describe_run(left.get('run')), journal.path))
            return out
        done = undo(left.get('changes', []))
        journal.clear()
        out['changed'] = bool(left.get('changes'))
        out['recovered'] = dict(done, run=left.get('run'))
        reason = ('{0} did not finish: its changes were undone ({1}) and the agent is restarted on the restored '
                  'files'.format(describe_run(left.get('run')),
                                 ', '.join(done['restored'] + done['removed']) or 'none were made'))
        out['restart_reasons'].append(reason)
        module.warn(reason + '.')
    return out


def text_of(path):
    data = read_bytes(path)
    return None if data is None else data.decode('utf-8', 'surrogateescape' if str is not bytes else 'replace')


def wanted_files(params, config):
    """[{'path', 'content', 'mode', 'uid', 'gid'}]: what the agent's files must be, and where the UserParameters
    go, from the configuration as the agent loads it."""
    keys, script = params['keys'], params['script']
    placed = plan(config, keys, script, params['userparameter_file'])
    target = placed['userparameter_path'] or config.path
    texts = {}

    def text(path):
        if path not in texts:
            texts[path] = text_of(path)
        return texts[path]

    endings = dict((entry['path'], entry['line_endings']) for entry in config.files)
    if params['allow_keys']:
        rule = first_denying_rule(config, keys)
        if rule:
            texts[rule['file']] = set_block(text(rule['file']), ALLOWKEY_BLOCK, allow_lines(keys), rule['line'],
                                            endings.get(rule['file']) == 'crlf')
    for path in placed['foreign_files']:
        texts[path] = comment_out_foreign(text(path), keys, script, target)
    userparameters = params['userparameters']
    if placed['userparameter_path']:
        texts[target] = userparameters
        modes = {target: (0o644, 0, 0)}
    else:
        body = [line for line in userparameters.rstrip('\n').split('\n')]
        texts[target] = set_block(text(target), USERPARAMETER_BLOCK, body, 0,
                                  endings.get(target) == 'crlf')
        modes = {}
    texts[script] = params['script_content']
    modes[script] = (0o755, 0, 0)
    wanted = []
    for path, content in texts.items():
        if content is None:
            continue
        tmp = os.path.join(os.path.dirname(path), TMP_DIR_NAME, os.path.basename(path))
        if config.loads(tmp):
            raise TxnError('the agent would load the temporary file {0}; refusing to write {1}'.format(tmp, path))
        mode, uid, gid = modes.get(path, (None, None, None))
        wanted.append({'path': path, 'content': to_bytes(content, errors='surrogate_or_strict'), 'mode': mode,
                       'uid': uid, 'gid': gid})
    return wanted, placed


def apply(module, lock, journal):
    params = module.params
    for name in ('config', 'script', 'script_content', 'userparameters'):
        if params[name] is None:
            module.fail_json(msg='action=apply needs {0}'.format(name))
    lock.renew()
    config = AgentConfig(params['config'], params['flavour'])
    wanted, placed = wanted_files(params, config)
    stamp = time.strftime('%Y-%m-%d@%H:%M:%S', time.gmtime()) + '.' + str(os.getpid())
    moved = []
    if not module.check_mode:
        # Backups an earlier version of the role left where the agent loads them: moved out, never put back.
        for stray in placed['stray_backups']:
            backup_file(stray, params['backup_dir'], stamp)
            try:
                os.unlink(stray)
            except OSError as exc:
                raise TxnError('cannot remove {0}: {1}'.format(stray, exc.strerror or exc))
            moved.append(stray)
    run = lock.run
    changes, diffs = apply_changes(wanted, params['backup_dir'], journal, run, stamp, module.check_mode)
    reasons = list(params['restart_reasons'])
    if params['stale']:
        module.warn('Restarting the agent: {0}.'.format(params['stale']))
        reasons.append(params['stale'])
    if diffs:
        reasons.insert(0, 'changed: ' + ', '.join(diff['after_header'] for diff in diffs))
    if moved:
        reasons.append('moved out the backups the agent loaded: ' + ', '.join(moved))
    if reasons and not changes and not module.check_mode:
        # Only a restart is owed: a run killed before its verify leaves that on record too.
        journal.write({'run': run, 'changes': [], 'restart_owed': True, 'written': time.time(),
                       'reasons': reasons})
    return {'changed': bool(reasons), 'files_changed': bool(diffs), 'changes': changes, 'diff': diffs,
            'restart_reasons': reasons, 'userparameter_path': placed['userparameter_path'] or config.path,
            'moved_backups': moved}


def finish(module, lock, journal, put_back):
    left = journal.read()
    out = {'changed': False, 'changes': [], 'restored': [], 'removed': []}
    if left and left.get('run', {}).get('id') == module.params['run']['id']:
        out['changes'] = left.get('changes', [])
        if put_back and not module.check_mode:
            out.update(undo(out['changes']))
            out['changed'] = bool(out['changes'])
        if not module.check_mode:
            journal.clear()
    out['released'] = lock.release()
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type='str', required=True, choices=['begin', 'apply', 'commit', 'rollback', 'release']),
            run=dict(type='dict', required=True),
            state_dir=dict(type='path', default='/var/lib/zabbix_tcp_status'),
            lock_timeout=dict(type='int', default=300),
            config=dict(type='path'),
            flavour=dict(type='str', choices=['agent', 'agent2'], default='agent'),
            keys=dict(type='list', elements='str', default=[], no_log=False),
            script=dict(type='path'),
            script_content=dict(type='str'),
            userparameter_file=dict(type='str', default='userparameter_tcp_status.conf'),
            userparameters=dict(type='str'),
            allow_keys=dict(type='bool', default=False),
            backup_dir=dict(type='path', default='/var/lib/zabbix_tcp_status/backup'),
            restart_reasons=dict(type='list', elements='str', default=[]),
            stale=dict(type='str', default=''),
            undo=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not params['run'].get('id'):
        module.fail_json(msg='run needs an id')
    run = dict(params['run'], started=params['run'].get('started') or time.time())
    lock = Lock(params['state_dir'], run)
    journal = Journal(params['state_dir'])
    action = params['action']
    try:
        if action == 'begin':
            result = begin(module, lock, journal)
        elif action == 'apply':
            result = apply(module, lock, journal)
        elif action == 'release':
            result = {'changed': False, 'released': lock.release()}
        else:
            result = finish(module, lock, journal, action == 'rollback' and params['undo'])
    except (TxnError, AgentConfigError) as exc:
        module.fail_json(msg=to_native(exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
