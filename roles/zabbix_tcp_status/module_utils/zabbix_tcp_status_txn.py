# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's changes to a host as one transaction, as dpkg and rpm keep theirs: the one place that takes the
host's lock, keeps the journal, backs files up, writes them and undoes them.

* **One run at a time.** ``STATE_DIR/lock`` holds the owning run as JSON (id, controller, PID, start, last sign of
  life); every read and write of it happens under ``flock``. A run owns the lock from before it reads the agent's
  configuration to the end of its verify or rollback, across many module calls, so the lock is a lease: each call
  of the role's transaction module renews it. A holder is dead when its controller process is gone (known when the
  controller shares this host's kernel and PID namespace: localhost, chroots) or when it has shown no sign of life
  for ``LEASE`` seconds; a dead holder's lock is taken over, and the result says so. A live holder is waited for
  up to a bounded time, then the run fails before any change, naming the holder.
* **A journal.** Before the first file changes, ``STATE_DIR/journal.json`` records every file about to change, its
  backup (or that the file is new) and that a restart of the agent is owed. It is removed only after the verify
  passed (commit) or the rollback finished. A run that finds the journal of a dead run undoes it first (every file
  restored from its backup, created files removed) and owes the agent a restart, then proceeds.
* **Backups before changes**, into the backup directory, outside every include directory of the agent.
* **Atomic writes never where the agent loads**: the new content goes to ``DIR/.zabbix_tcp_status.tmp/NAME`` (a
  subdirectory: the agent loads regular files only, of a directory include or a pattern, never a subdirectory),
  is flushed, then renamed over ``DIR/NAME`` (the same file system; checked). A failed write (ENOSPC, EROFS,
  EACCES) removes its temporary file and directory, undoes the files already written in the same call, and says
  what failed.

Standard library only; Python 2.7 and 3.6+ (the targets' interpreters). Unit-tested in tests/unit/test_txn.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import json
import os
import socket
import stat
import time

# Seconds without a sign of life after which a lock whose controller cannot be checked counts as dead. The longest
# gap between two calls of a run is its item test, restart and verify (about a minute on a slow host).
LEASE = 240
TMP_DIR_NAME = '.zabbix_tcp_status.tmp'
LOCK_NAME = 'lock'
JOURNAL_NAME = 'journal.json'


class TxnError(Exception):
    """A failure with a message for the user; ``changed`` says whether anything stayed changed."""


def _strerror(exc):
    return exc.strerror or str(exc)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rmdir_quiet(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


def _clear_tmp_dir(tmp_dir):
    """Remove what a killed run left in a temporary directory (never loaded by the agent, but untidy)."""
    try:
        names = os.listdir(tmp_dir)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(tmp_dir, name))
        except OSError:
            pass


def atomic_write(path, data, mode=None, uid=None, gid=None):
    """Write ``data`` (bytes) to ``path`` through a temporary file in ``DIR/.zabbix_tcp_status.tmp/`` renamed over
    it. ``mode``/``uid``/``gid`` default to the existing file's, else 0644 root. Raises TxnError and leaves nothing
    behind on failure."""
    directory = os.path.dirname(path) or '/'
    tmp_dir = os.path.join(directory, TMP_DIR_NAME)
    tmp = os.path.join(tmp_dir, os.path.basename(path))
    try:
        old = os.lstat(path)
    except OSError:
        old = None
    if mode is None:
        mode = stat.S_IMODE(old.st_mode) if old else 0o644
    if uid is None:
        uid = old.st_uid if old else 0
    if gid is None:
        gid = old.st_gid if old else 0
    made_dir = False
    try:
        try:
            os.mkdir(tmp_dir, 0o700)
            made_dir = True
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            _clear_tmp_dir(tmp_dir)
            made_dir = True
        if os.stat(tmp_dir).st_dev != os.stat(directory).st_dev:
            raise TxnError('cannot write {0}: {1} is another file system, so a rename would not be atomic'.format(
                path, tmp_dir))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, 'O_NOFOLLOW', 0), 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        _fsync_dir(directory)
    except (OSError, IOError) as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise TxnError('cannot write {0}: {1}'.format(path, _strerror(exc)))
    finally:
        if made_dir:
            _rmdir_quiet(tmp_dir)


def read_bytes(path):
    """The file's content, or None when it does not exist."""
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise TxnError('cannot read {0}: {1}'.format(path, _strerror(exc)))


def ensure_dir(path, mode=0o700):
    """Make ``path`` (and parents) root-owned with ``mode`` if missing."""
    if os.path.isdir(path):
        return
    try:
        os.makedirs(path, mode)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise TxnError('cannot make {0}: {1}'.format(path, _strerror(exc)))
    os.chmod(path, mode)


# -- the lock ----------------------------------------------------------------------------------------------------
def _local_ids():
    """(boot id, PID namespace) of this host: a controller with the same pair shares its PID numbers."""
    try:
        with open('/proc/sys/kernel/random/boot_id') as handle:
            boot_id = handle.read().strip()
    except (IOError, OSError):
        boot_id = ''
    try:
        pidns = os.readlink('/proc/self/ns/pid')
    except OSError:
        pidns = ''
    return boot_id, pidns


def process_start(pid):
    """The start of process ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is
    gone."""
    try:
        with open('/proc/{0}/stat'.format(int(pid))) as handle:
            return int(handle.read().rsplit(')', 1)[1].split()[19])
    except (IOError, OSError, ValueError, IndexError):
        return None


class Lock(object):
    """The host's lock file under ``state_dir``; ``run`` is the run's identity ({'id', 'controller', 'pid',
    'boot_id', 'pidns', 'user', 'started'}; only ``id`` is required)."""

    def __init__(self, state_dir, run, now=time.time, sleep=time.sleep, lease=LEASE):
        self.path = os.path.join(state_dir, LOCK_NAME)
        self.state_dir = state_dir
        self.run = dict(run)
        self.now = now
        self.sleep = sleep
        self.lease = lease

    def _locked(self, action):
        ensure_dir(self.state_dir)
        handle = open(self.path, 'a+')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read()
            try:
                holder = json.loads(text) if text.strip() else None
            except ValueError:
                holder = None
            new = action(holder)
            if new is not False:
                handle.seek(0)
                handle.truncate()
                if new:
                    handle.write(json.dumps(new, sort_keys=True))
                handle.flush()
                os.fsync(handle.fileno())
            return holder
        finally:
            handle.close()

    def _mine(self):
        mine = dict(self.run)
        mine['renewed'] = self.now()
        boot_id, pidns = _local_ids()
        mine['same_pid_space'] = bool(mine.get('boot_id')) and (mine.get('boot_id'), mine.get('pidns')) == (
            boot_id, pidns)
        if mine['same_pid_space'] and mine.get('pid'):
            mine['pid_start'] = process_start(mine['pid'])
        mine.setdefault('host', socket.gethostname())
        return mine

    def dead(self, holder):
        """Why ``holder`` is dead, or '' while it may be alive."""
        if holder.get('same_pid_space') and holder.get('pid'):
            boot_id, pidns = _local_ids()
            if (holder.get('boot_id'), holder.get('pidns')) == (boot_id, pidns):
                start = process_start(holder['pid'])
                if start is None or (holder.get('pid_start') is not None and start != holder['pid_start']):
                    return 'its controller process {0} is gone'.format(holder['pid'])
                return ''
        idle = self.now() - float(holder.get('renewed') or 0)
        if idle > self.lease:
            return 'it has shown no sign of life for {0:.0f} s (more than {1} s)'.format(idle, self.lease)
        return ''

    def acquire(self, timeout):
        """Take the lock, waiting up to ``timeout`` seconds for a live holder. Returns {'waited': s,
        'taken_over': holder or None, 'reason': why it was dead, 'waited_for': the live holder waited for}."""
        started = self.now()
        result = {'waited': 0, 'taken_over': None, 'reason': ''}

        def take(holder):
            if holder and holder.get('id') != self.run['id']:
                reason = self.dead(holder)
                if not reason:
                    result['busy'] = result['waited_for'] = holder
                    return False
                result['taken_over'], result['reason'] = holder, reason
            result.pop('busy', None)
            return self._mine()

        while True:
            self._locked(take)
            if 'busy' not in result:
                result['waited'] = round(self.now() - started, 1)
                return result
            if self.now() - started >= timeout:
                raise TxnError('another run of the role holds this host: {0}; waited {1} s '
                               '(zabbix_tcp_status_lock_timeout). Nothing was changed.'.format(
                                   describe_run(result['busy']), timeout))
            self.sleep(1)

    def renew(self):
        """Renew the lease; fail if another run has taken the lock over meanwhile."""
        lost = {}

        def renew(holder):
            if not holder or holder.get('id') != self.run['id']:
                lost['holder'] = holder
                return False
            holder['renewed'] = self.now()
            return holder
        self._locked(renew)
        if lost:
            raise TxnError('this run no longer holds the host\'s lock ({0}): stopping before any further '
                           'change'.format('now held by ' + describe_run(lost['holder']) if lost['holder']
                                           else 'released'))

    def release(self):
        """Release the lock if this run holds it; returns whether it did."""
        done = {}

        def release(holder):
            if holder and holder.get('id') == self.run['id']:
                done['released'] = True
                return {}
            return False
        self._locked(release)
        return bool(done)


def describe_run(holder):
    """A run in words: the controller, its PID and user, when it started."""
    if not holder:
        return 'none'
    started = holder.get('started')
    when = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(started))) if started else '?'
    return 'run {0} from controller {1} (PID {2}, user {3}), started {4}'.format(
        holder.get('id', '?'), holder.get('controller') or '?', holder.get('pid') or '?', holder.get('user') or '?',
        when)


# -- the journal and the changes ---------------------------------------------------------------------------------
class Journal(object):
    """``STATE_DIR/journal.json``: {'run': {...}, 'changes': [{'path', 'backup' (or null: created)}],
    'restart_owed': bool}. Written atomically; absent when no change is pending."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, JOURNAL_NAME)

    def read(self):
        data = read_bytes(self.path)
        if data is None:
            return None
        try:
            return json.loads(data.decode('utf-8'))
        except ValueError:
            raise TxnError('{0} is not a journal the role wrote; look at it and remove it'.format(self.path))

    def write(self, record):
        ensure_dir(self.state_dir)
        atomic_write(self.path, json.dumps(record, sort_keys=True, indent=1).encode('utf-8'), 0o600, 0, 0)

    def clear(self):
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise TxnError('cannot remove {0}: {1}'.format(self.path, _strerror(exc)))
        _fsync_dir(self.state_dir)


def backup_file(path, backup_dir, stamp):
    """Copy ``path`` (content, mode, owner) into ``backup_dir`` as NAME.STAMP~; returns the backup's path."""
    ensure_dir(backup_dir)
    info = os.lstat(path)
    target = os.path.join(backup_dir, '{0}.{1}~'.format(os.path.basename(path), stamp))
    atomic_write(target, read_bytes(path), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return target


def undo(changes):
    """Put back every change, latest first: a backed-up file from its backup (content, mode, owner), a created file
    removed. Returns {'restored': [...], 'removed': [...]}; raises TxnError naming what could not be put back."""
    restored, removed, failed = [], [], []
    for change in reversed(changes):
        path = change['path']
        try:
            if change.get('backup'):
                data = read_bytes(change['backup'])
                if data is None:
                    raise TxnError('its backup {0} is missing'.format(change['backup']))
                info = os.lstat(change['backup'])
                if read_bytes(path) != data or _meta(path) != _meta_of(info):
                    atomic_write(path, data, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
                restored.append(path)
            else:
                try:
                    os.unlink(path)
                    _fsync_dir(os.path.dirname(path))
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise TxnError('cannot remove {0}: {1}'.format(path, _strerror(exc)))
                removed.append(path)
        except TxnError as exc:
            failed.append('{0} ({1})'.format(path, exc))
    if failed:
        raise TxnError('could not put back: ' + '; '.join(failed))
    return {'restored': restored, 'removed': removed}


def _meta_of(info):
    return (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


def _meta(path):
    try:
        return _meta_of(os.lstat(path))
    except OSError:
        return None


def apply_changes(wanted, backup_dir, journal, run, stamp, check_mode=False):
    """Make every file of ``wanted`` ([{'path', 'content' (bytes), 'mode', 'uid', 'gid'}], a None mode/owner
    keeps the file's) as asked, as one transaction: backups first, then the journal, then each write. Returns the
    changes made ([{'path', 'backup'}], the undo plan) and the diffs. On a failed write the files already written
    are put back, the journal removed, and TxnError says what failed."""
    todo = []
    diffs = []
    for item in wanted:
        old = read_bytes(item['path'])
        meta = _meta(item['path'])
        want_meta = None if old is None else tuple(
            meta[index] if item.get(name) is None else item[name]
            for index, name in enumerate(('mode', 'uid', 'gid')))
        if old == item['content'] and meta == want_meta:
            continue
        todo.append(item)
        diffs.append({'before_header': item['path'], 'after_header': item['path'],
                      'before': (old or b'').decode('utf-8', 'replace'),
                      'after': item['content'].decode('utf-8', 'replace')})
    if check_mode or not todo:
        return [], diffs
    changes = []
    for item in todo:
        exists = os.path.lexists(item['path'])
        changes.append({'path': item['path'], 'backup': backup_file(item['path'], backup_dir, stamp)
                        if exists else None})
    journal.write({'run': run, 'changes': changes, 'restart_owed': True, 'written': time.time()})
    done = []
    try:
        for item, change in zip(todo, changes):
            # A new file is root's, 0644 unless asked otherwise; an existing one keeps what is not asked for.
            atomic_write(item['path'], item['content'], item.get('mode'), item.get('uid'), item.get('gid'))
            done.append(change)
    except TxnError as exc:
        try:
            undo(done)
        except TxnError as undo_exc:
            raise TxnError('{0}; and then {1}. The journal {2} stays: the next run puts these files back'.format(
                exc, undo_exc, journal.path))
        journal.clear()
        detail = ' ({0} restored from its backup)'.format(', '.join(c['path'] for c in done)) if done else ''
        raise TxnError('{0}. Nothing was changed{1}.'.format(exc, detail))
    return changes, diffs
