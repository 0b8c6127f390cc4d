# -*- coding: utf-8 -*-
"""The role's transaction (module_utils/zabbix_tcp_status_txn.py) and the configuration edits it writes
(module_utils/zabbix_agent_config.py): lock, journal, backups, atomic writes, undo, AllowKey/DenyKey rules.

Real files in temporary directories, real processes for the lock's liveness check; a fake clock only where a lease
of minutes must run out. Plain unittest, so that it runs under the targets' Python 2.7 and 3.6 too
(test_old_pythons.py).
"""
from __future__ import absolute_import, division, print_function

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from zabbix_agent_config import (ALLOWKEY_BLOCK, AgentConfig, allow_conflicts, allow_lines, comment_out_foreign,
                                 denied_keys, first_denying_rule, set_block)
from zabbix_tcp_status_txn import (TMP_DIR_NAME, Journal, Lock, TxnError, apply_changes, atomic_write, read_bytes,
                                   undo)

KEYS = ['tcp.status', 'tcp.status.json']


class Clock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Dir(unittest.TestCase):
    def setUp(self):
        self.top = tempfile.mkdtemp(prefix='zts-txn-')
        self.addCleanup(shutil.rmtree, self.top)

    def path(self, *parts):
        return os.path.join(self.top, *parts)

    def write(self, name, text, mode=0o640):
        path = self.path(name)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path))
        with open(path, 'w') as handle:
            handle.write(text)
        os.chmod(path, mode)
        return path

    def listing(self):
        return sorted(os.path.relpath(os.path.join(folder, name), self.top)
                      for folder, dirs, names in os.walk(self.top) for name in names + dirs)


class AtomicWriteTest(Dir):
    def test_replaces_content_keeps_mode_and_leaves_no_temporary_file(self):
        path = self.write('etc/a.conf', 'old\n', 0o640)
        atomic_write(path, b'new\n')
        self.assertEqual(read_bytes(path), b'new\n')
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
        self.assertEqual(self.listing(), ['etc', 'etc/a.conf'])

    def test_a_new_file_is_0644_unless_asked(self):
        atomic_write(self.path('new.conf'), b'x')
        self.assertEqual(os.stat(self.path('new.conf')).st_mode & 0o777, 0o644)
        atomic_write(self.path('script.py'), b'x', 0o755)
        self.assertEqual(os.stat(self.path('script.py')).st_mode & 0o777, 0o755)

    def test_a_killed_writers_temporary_directory_is_cleared(self):
        path = self.write('etc/a.conf', 'old\n')
        self.write('etc/' + TMP_DIR_NAME + '/a.conf', 'half')
        atomic_write(path, b'new\n')
        self.assertEqual(self.listing(), ['etc', 'etc/a.conf'])

    def test_a_failed_write_says_what_failed_and_leaves_nothing(self):
        self.write('notadir', 'a file')
        with self.assertRaises(TxnError) as caught:
            atomic_write(self.path('notadir', 'x.conf'), b'x')
        self.assertIn('cannot write ' + self.path('notadir', 'x.conf'), str(caught.exception))
        self.assertIn('Not a directory', str(caught.exception))
        self.assertEqual(self.listing(), ['notadir'])


class TransactionTest(Dir):
    def test_backups_come_first_then_the_journal_then_the_writes_and_undo_puts_every_byte_back(self):
        conf = self.write('etc/zabbix_agentd.conf', 'Server=127.0.0.1\r\n', 0o640)
        journal = Journal(self.path('state'))
        wanted = [{'path': conf, 'content': b'Server=127.0.0.1\r\nX=1\r\n'},
                  {'path': self.path('etc/d/up.conf'), 'content': b'UserParameter=a[*],b\n', 'mode': 0o644}]
        os.makedirs(self.path('etc/d'))
        changes, diffs = apply_changes(wanted, self.path('backup'), journal, {'id': 'r1'}, 'STAMP')
        self.assertEqual([d['after_header'] for d in diffs], [conf, self.path('etc/d/up.conf')])
        self.assertEqual(changes[1]['backup'], None, 'the new file has no backup: undo removes it')
        self.assertEqual(read_bytes(changes[0]['backup']), b'Server=127.0.0.1\r\n')
        record = journal.read()
        self.assertEqual(record['changes'], changes)
        self.assertTrue(record['restart_owed'])
        self.assertEqual(undo(record['changes']), {'restored': [conf], 'removed': [self.path('etc/d/up.conf')]})
        self.assertEqual(read_bytes(conf), b'Server=127.0.0.1\r\n')
        self.assertEqual(os.stat(conf).st_mode & 0o777, 0o640)
        self.assertFalse(os.path.exists(self.path('etc/d/up.conf')))

    def test_nothing_to_change_writes_no_journal_and_check_mode_writes_nothing(self):
        conf = self.write('etc/a.conf', 'same\n', 0o644)
        journal = Journal(self.path('state'))
        self.assertEqual(apply_changes([{'path': conf, 'content': b'same\n'}], self.path('b'), journal, {'id': 'r'},
                                       'S'), ([], []))
        changes, diffs = apply_changes([{'path': conf, 'content': b'other\n'}], self.path('b'), journal, {'id': 'r'},
                                       'S', check_mode=True)
        self.assertEqual((changes, len(diffs)), ([], 1))
        self.assertEqual(read_bytes(conf), b'same\n')
        self.assertIsNone(journal.read())
        self.assertFalse(os.path.exists(self.path('b')))

    def test_a_mode_change_alone_is_a_change(self):
        script = self.write('etc/tcp_status.py', 'x', 0o644)
        changes, _diffs = apply_changes([{'path': script, 'content': b'x', 'mode': 0o755}], self.path('b'),
                                        Journal(self.path('s')), {'id': 'r'}, 'S')
        self.assertEqual(len(changes), 1)
        self.assertEqual(os.stat(script).st_mode & 0o777, 0o755)

    def test_a_failed_write_puts_back_what_was_written_and_clears_the_journal(self):
        conf = self.write('etc/a.conf', 'old\n')
        # The second file's temporary directory cannot be made (a file has its name): its write fails.
        self.write('etc/blocked/' + TMP_DIR_NAME, 'in the way')
        journal = Journal(self.path('state'))
        wanted = [{'path': conf, 'content': b'new\n'}, {'path': self.path('etc/blocked/up.conf'), 'content': b'x'}]
        with self.assertRaises(TxnError) as caught:
            apply_changes(wanted, self.path('backup'), journal, {'id': 'r'}, 'S')
        message = str(caught.exception)
        self.assertIn('cannot write ' + self.path('etc/blocked/up.conf'), message)
        self.assertIn('Nothing was changed ({0} restored from its backup)'.format(conf), message)
        self.assertEqual(read_bytes(conf), b'old\n')
        self.assertIsNone(journal.read())
        self.assertEqual([p for p in self.listing() if p.startswith('etc')],
                         ['etc', 'etc/a.conf', 'etc/blocked', 'etc/blocked/' + TMP_DIR_NAME])


class LockTest(Dir):
    def lock(self, run_id, clock, **run):
        run['id'] = run_id
        return Lock(self.path('state'), run, now=clock, sleep=clock.sleep)

    def test_one_run_at_a_time_the_second_waits_then_fails_naming_the_first(self):
        clock = Clock()
        first = self.lock('A', clock, controller='ctl1', pid=4242, user='ops')
        self.assertEqual(first.acquire(10)['taken_over'], None)
        second = self.lock('B', clock)
        with self.assertRaises(TxnError) as caught:
            second.acquire(5)
        self.assertIn('another run of the role holds this host: run A from controller ctl1 (PID 4242, user ops)',
                      str(caught.exception))
        self.assertIn('waited 5 s', str(caught.exception))
        self.assertTrue(first.release())
        self.assertEqual(second.acquire(5)['waited'], 0)
        self.assertFalse(first.release(), 'a run never releases a lock it does not hold')

    def test_a_lease_without_sign_of_life_is_taken_over_and_the_old_holder_stops(self):
        clock = Clock()
        first = self.lock('A', clock)
        first.acquire(0)
        clock.now += 100
        first.renew()
        clock.now += 239
        with self.assertRaises(TxnError):
            self.lock('B', clock).acquire(0)
        clock.now += 2
        second = self.lock('B', clock)
        result = second.acquire(0)
        self.assertEqual(result['taken_over']['id'], 'A')
        self.assertIn('no sign of life for 241 s', result['reason'])
        with self.assertRaises(TxnError) as caught:
            first.renew()
        self.assertIn('no longer holds', str(caught.exception))

    def test_a_holder_whose_controller_process_is_gone_is_dead_at_once(self):
        with open('/proc/sys/kernel/random/boot_id') as handle:
            boot_id = handle.read().strip()
        pidns = os.readlink('/proc/self/ns/pid')
        child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
        clock = Clock()
        try:
            holder = self.lock('A', clock, pid=child.pid, boot_id=boot_id, pidns=pidns)
            holder.acquire(0)
            with self.assertRaises(TxnError):
                self.lock('B', clock).acquire(0)
        finally:
            child.kill()
            child.wait()
        result = self.lock('B', clock).acquire(0)
        self.assertIn('its controller process {0} is gone'.format(child.pid), result['reason'])

    def test_a_controller_elsewhere_is_never_judged_by_this_hosts_pids(self):
        clock = Clock()
        self.lock('A', clock, pid=1, boot_id='another-kernel', pidns='pid:[1]').acquire(0)
        with open(self.path('state', 'lock')) as handle:
            self.assertFalse(json.load(handle)['same_pid_space'])
        with self.assertRaises(TxnError):
            self.lock('B', clock).acquire(0)


class KeyRulesTest(Dir):
    def config(self, text, **files):
        main = self.write('zabbix_agentd.conf', text)
        for name, content in files.items():
            self.write('d/' + name, content)
        return AgentConfig(main)

    def test_the_recommended_whitelist_denies_every_key_of_the_role(self):
        config = self.config('AllowKey=agent.*\nAllowKey=system.*\nDenyKey=*\n')
        denied = denied_keys(config, KEYS)
        self.assertEqual([d['key'] for d in denied], ['tcp.status', 'tcp.status[*]', 'tcp.status.json',
                                                      'tcp.status.json[*]'])
        self.assertEqual(denied[0]['text'], 'tcp.status is denied by DenyKey=* ({0}:3)'.format(
            self.path('zabbix_agentd.conf')))

    def test_an_included_files_rules_sit_where_its_include_line_is(self):
        config = self.config('AllowKey=agent.*\nInclude={0}/d/*.conf\nAllowKey=tcp.status[*]\n'.format(self.top),
                             **{'deny.conf': 'DenyKey=*\n'})
        denied = denied_keys(config, ['tcp.status'])
        self.assertEqual(denied[1]['place'], self.path('d/deny.conf') + ':1', 'the later AllowKey comes too late')
        self.assertEqual(first_denying_rule(config, ['tcp.status'])['file'], self.path('d/deny.conf'))

    def test_patterns_with_and_without_parameters(self):
        config = self.config('DenyKey=tcp.status[*]\n')
        self.assertEqual([d['key'] for d in denied_keys(config, KEYS)], ['tcp.status[*]'])
        config = self.config('DenyKey=tcp.*\n')
        self.assertEqual([d['key'] for d in denied_keys(config, KEYS)], ['tcp.status', 'tcp.status.json'])
        config = self.config('DenyKey=system.run[*]\nDenyKey=vfs.file.*[*]\n')
        self.assertEqual(denied_keys(config, KEYS), [])

    def test_an_allow_of_some_parameters_does_not_cover_a_later_deny(self):
        config = self.config('AllowKey=tcp.status[LISTEN]\nAllowKey=tcp.status\nDenyKey=*\n')
        self.assertEqual([d['key'] for d in denied_keys(config, ['tcp.status'])], ['tcp.status[*]'])

    def test_a_deny_of_exactly_our_pattern_cannot_be_allowed(self):
        config = self.config('DenyKey=tcp.status[*]\nDenyKey=tcp.*\n')
        self.assertEqual(allow_conflicts(config, KEYS), ['DenyKey=tcp.status[*] ({0}:1) names a key of the role '
                                                         'exactly'.format(self.path('zabbix_agentd.conf'))])
        self.assertEqual(allow_conflicts(self.config('DenyKey=*\n'), KEYS), [])

    def test_the_allow_block_goes_before_the_first_denying_rule_and_stays_there(self):
        text = 'Server=127.0.0.1\nAllowKey=agent.*\nDenyKey=*\nTimeout=3\n'
        config = self.config('Server=127.0.0.1\nAllowKey=agent.*\nDenyKey=*\n')
        rule = first_denying_rule(config, KEYS)
        once = set_block(text, ALLOWKEY_BLOCK, allow_lines(KEYS), rule['line'])
        self.assertEqual(once, 'Server=127.0.0.1\nAllowKey=agent.*\n# BEGIN zabbix_tcp_status AllowKey\n'
                               'AllowKey=tcp.status\nAllowKey=tcp.status[*]\nAllowKey=tcp.status.json\n'
                               'AllowKey=tcp.status.json[*]\n# END zabbix_tcp_status AllowKey\nDenyKey=*\nTimeout=3\n')
        again = self.config(once)
        self.assertEqual(denied_keys(again, KEYS), [])
        rule = first_denying_rule(again, KEYS)
        self.assertEqual(rule['line'], 9, 'the role\'s own block is not the rule to precede')
        self.assertEqual(set_block(once, ALLOWKEY_BLOCK, allow_lines(KEYS), rule['line']), once)
        moved = set_block(once, ALLOWKEY_BLOCK, allow_lines(['tcp.status']), rule['line'])
        self.assertEqual(moved.count('AllowKey=tcp.status'), 2)
        self.assertLess(moved.index('AllowKey=tcp.status[*]'), moved.index('DenyKey=*'))

    def test_a_block_keeps_crlf_and_appends_after_a_last_line_without_newline(self):
        self.assertEqual(set_block('a\r\nb', 'X', ['1'], crlf=True), 'a\r\nb\r\n# BEGIN X\r\n1\r\n# END X\r\n')
        self.assertEqual(set_block('a\n# BEGIN X\nold\n# END X\nb\n', 'X', ['new']), 'a\n# BEGIN X\nnew\n# END X\nb\n')
        self.assertEqual(set_block('a\n# BEGIN X\nold\n# END X\nb\n', 'X', []), 'a\nb\n')

    def test_foreign_lines_are_commented_out_and_ours_kept(self):
        text = ('UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2\r\n'
                "UserParameter=tcp.status.json[*],/etc/zabbix/tcp_status.py all '$1'\r\n")
        out = comment_out_foreign(text, KEYS, '/etc/zabbix/tcp_status.py', '/x/up.conf')
        self.assertEqual(out.splitlines(True), [
            '# UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2  # replaced by the zabbix_tcp_status '
            'role (/x/up.conf)\r\n', "UserParameter=tcp.status.json[*],/etc/zabbix/tcp_status.py all '$1'\r\n"])


if __name__ == '__main__':
    unittest.main()
