#!/usr/bin/env python3
"""Hold N real TCP sockets on loopback for the benchmark, then close them all.

The sockets are real kernel sockets, spread over several 127.0.0.x addresses
and ::1, in the states the counter reports:

* ESTABLISHED: connected pairs (both ends counted), some of them on ::1;
* LISTEN: listeners on several addresses (the pairs connect to them);
* CLOSE_WAIT and FIN_WAIT2: pairs whose client did ``shutdown(SHUT_WR)`` (the
  client end waits in FIN_WAIT2, the server end in CLOSE_WAIT, as long as the
  descriptors are held);
* TIME_WAIT: pairs closed client first (no descriptor held; the kernel keeps
  them for 60 s, also after the generator exits: they are the only leftover).

This VM caps open files at 20,000 per process, so the sockets are held by
several worker processes (this same file, run with ``--worker``). A worker
exits and closes every socket with SO_LINGER 0 (a reset, so nothing lingers)
when its stdin reaches EOF (the parent closed it, or died), on SIGTERM, or
when its hard timeout expires. Above ~20,000 client sockets the generator
widens ``net.ipv4.ip_local_port_range`` and restores it afterwards (also the
next time it runs, if a previous run was killed before it could).

Use it from Python::

    from loadgen import hold_sockets
    with hold_sockets(total=100000) as load:
        print(load.expected)        # {'ESTABLISHED': ..., 'LISTEN': ..., ...}

or from a shell: ``bench/loadgen.py 10000 --hold 60`` (holds until the time
is up or Ctrl-C).
"""

from __future__ import print_function

import argparse
import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

PORT_RANGE_FILE = '/proc/sys/net/ipv4/ip_local_port_range'
# The widened range stays clear of the fixed ports the project's agents use (100xx).
WIDE_PORT_RANGE = (15000, 64999)
# Port range state, kept until restored, so that a killed run can be repaired by the next one.
PORT_STATE_FILE = '/tmp/zts-bench-loadgen-portrange.json'
LOCK_FILE = '/tmp/zts-bench-loadgen.lock'
# Client sockets one worker can open with the default port range before widening it.
WIDEN_ABOVE_CLIENTS = 20000
# Descriptors one worker may hold (the per-process cap here is 20,000).
FDS_PER_WORKER = 18000
DEFAULT_TIMEOUT = 900
START_TIMEOUT = 300
BATCH = 256
STATES = ('ESTABLISHED', 'TIME_WAIT', 'LISTEN', 'CLOSE_WAIT', 'FIN_WAIT2')


class LoadError(Exception):
    """The load generator could not build or hold its sockets."""


def plan_sockets(total, ipv6_share=0.05, time_wait_share=0.05, close_wait_share=0.05, listeners=None):
    """Split ``total`` sockets into the states to build.

    Returns a dict of counts: ``listen``, ``pairs_v4``, ``pairs_v6`` (ESTABLISHED
    pairs, two sockets each), ``close_wait`` (CLOSE_WAIT/FIN_WAIT2 pairs, two
    sockets each) and ``time_wait`` (one socket each).
    """
    total = int(total)
    if total < 40:
        raise LoadError('total must be at least 40 sockets, got {0}'.format(total))
    if listeners is None:
        listeners = 8 if total < 5000 else 64
    time_wait = int(total * time_wait_share)
    close_wait = int(total * close_wait_share) // 2
    rest = total - listeners - time_wait - 2 * close_wait
    pairs = rest // 2
    pairs_v6 = int(pairs * ipv6_share)
    plan = {
        'listen': listeners,
        'pairs_v4': pairs - pairs_v6,
        'pairs_v6': pairs_v6,
        'close_wait': close_wait,
        'time_wait': time_wait + rest % 2,  # absorb the odd one
    }
    return plan


def expected_counts(plan):
    """The socket count per state that a plan builds."""
    pairs = plan['pairs_v4'] + plan['pairs_v6']
    return {
        'ESTABLISHED': 2 * pairs,
        'LISTEN': plan['listen'],
        'CLOSE_WAIT': plan['close_wait'],
        'FIN_WAIT2': plan['close_wait'],
        'TIME_WAIT': plan['time_wait'],
    }


def split_plan(plan, fds_per_worker=FDS_PER_WORKER):
    """Split a plan over as many workers as the per-process descriptor cap needs."""
    fds = plan['listen'] + 2 * (plan['pairs_v4'] + plan['pairs_v6'] + plan['close_wait'])
    workers = max(1, -(-fds // fds_per_worker))
    parts = []
    for index in range(workers):
        part = {}
        for key, value in plan.items():
            part[key] = value // workers + (1 if index < value % workers else 0)
        part['listen'] = max(part['listen'], 2)  # every worker needs an IPv4 and an IPv6 listener
        parts.append(part)
    return parts


# ---------------------------------------------------------------- worker side

def _linger_close(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


TCP_FIN_WAIT2 = 5


def _wait_for_state(socks, state, timeout=10.0):
    """Wait until every socket is in ``state`` (kernel code, from TCP_INFO's first byte).

    Needed for the half-closed pairs: the peer delays its ACK of our FIN (delayed-ACK
    "pingpong" mode), so clients sit in FIN_WAIT1 for up to ~200 ms after shutdown().
    """
    deadline = time.time() + timeout
    pending = list(socks)
    while pending:
        pending = [sock for sock in pending
                   if bytearray(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0] != state]
        if not pending:
            return
        if time.time() > deadline:
            raise LoadError('{0} sockets did not reach TCP state {1} within {2:g} s'.format(
                len(pending), state, timeout))
        time.sleep(0.01)


def _connect_batch(listener, family, count, held, mode):
    """Connect ``count`` clients to ``listener`` in batches, accept them, put them in ``mode``."""
    address = listener.getsockname()[:2]
    done = 0
    while done < count:
        batch = min(BATCH, count - done)
        clients, servers = [], []
        try:
            for _ in range(batch):
                client = socket.socket(family, socket.SOCK_STREAM)
                clients.append(client)
                client.connect(address)
            for _ in range(batch):
                server, _peer = listener.accept()
                servers.append(server)
        except BaseException:
            for sock in clients + servers:
                _linger_close(sock)
            raise
        if mode == 'time_wait':
            for client in clients:
                client.close()  # active close first: the client end goes to TIME_WAIT
            for server in servers:
                server.close()
        else:
            held.extend(clients)
            held.extend(servers)
            if mode == 'close_wait':
                for client in clients:
                    client.shutdown(socket.SHUT_WR)  # client -> FIN_WAIT2, server -> CLOSE_WAIT
                _wait_for_state(clients, TCP_FIN_WAIT2)
        done += batch


def _listeners(part, index, held):
    """The worker's listeners: IPv4 ones on several 127.0.0.x addresses, one or more on ::1."""
    v6_count = max(1, part['listen'] // 8)
    v4_count = part['listen'] - v6_count
    v4, v6 = [], []
    for number in range(v4_count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.append(sock)
        sock.bind(('127.0.0.{0}'.format(2 + (index * 7 + number) % 250), 0))
        sock.listen(4096)
        v4.append(sock)
    for _ in range(v6_count):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        held.append(sock)
        sock.bind(('::1', 0))
        sock.listen(4096)
        v6.append(sock)
    return v4, v6


def _spread(total, slots):
    return [total // slots + (1 if i < total % slots else 0) for i in range(slots)]


def run_guard():
    """Wait for EOF on stdin (the generator stopped, or died), then restore the port range if needed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only EOF ends the guard: it must outlive its parent
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    repair_port_range()
    return 0


def run_worker(part, index, timeout):
    """Build the sockets of ``part``, report READY on stdout, hold until stdin EOF or timeout."""
    held = []

    def bail(signum, _frame):
        for sock in held:
            _linger_close(sock)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGALRM, bail)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes our stdin
    signal.alarm(int(timeout))
    try:
        v4, v6 = _listeners(part, index, held)
        for listener, count in zip(v4, _spread(part['pairs_v4'], len(v4))):
            _connect_batch(listener, socket.AF_INET, count, held, 'established')
        for listener, count in zip(v6, _spread(part['pairs_v6'], len(v6))):
            _connect_batch(listener, socket.AF_INET6, count, held, 'established')
        for listener, count in zip(v4, _spread(part['close_wait'], len(v4))):
            _connect_batch(listener, socket.AF_INET, count, held, 'close_wait')
        # TIME_WAIT last, so that no later connect() of ours recycles them (tcp_tw_reuse).
        for listener, count in zip(v4, _spread(part['time_wait'], len(v4))):
            _connect_batch(listener, socket.AF_INET, count, held, 'time_wait')
    except (OSError, socket.error, LoadError) as exc:
        sys.stdout.write('FAILED worker {0}: {1} (holding {2} sockets)\n'.format(index, exc, len(held)))
        sys.stdout.flush()
        for sock in held:
            _linger_close(sock)
        return 1
    sys.stdout.write('READY {0}\n'.format(json.dumps({'worker': index, 'fds': len(held)})))
    sys.stdout.flush()
    try:
        while os.read(0, 4096):  # EOF: the parent is done (or gone)
            pass
    except OSError:
        pass
    for sock in held:
        _linger_close(sock)
    return 0


# ---------------------------------------------------------------- parent side

def read_port_range():
    with open(PORT_RANGE_FILE) as handle:
        low, high = handle.read().split()
    return int(low), int(high)


def write_port_range(low, high):
    with open(PORT_RANGE_FILE, 'w') as handle:
        handle.write('{0} {1}\n'.format(low, high))


def repair_port_range():
    """Restore the port range a killed earlier run left widened (call with the lock held)."""
    try:
        with open(PORT_STATE_FILE) as handle:
            state = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    original = tuple(state['original'])
    if read_port_range() != original:
        write_port_range(*original)
    os.unlink(PORT_STATE_FILE)
    return original


class LoadGenerator(object):
    """N sockets held by worker processes; use ``hold_sockets()`` rather than this directly."""

    def __init__(self, total, timeout=DEFAULT_TIMEOUT, **plan_options):
        self.total = int(total)
        self.timeout = timeout
        self.plan = plan_sockets(self.total, **plan_options)
        self.expected = expected_counts(self.plan)
        self.parts = split_plan(self.plan)
        # The per-worker listener minimum can add a few listeners to the plan.
        self.expected['LISTEN'] = sum(part['listen'] for part in self.parts)
        self.workers = []
        self.guard = None
        self.lock = None
        self.original_range = None
        self.build_seconds = None

    @property
    def pids(self):
        return [worker.pid for worker in self.workers]

    def _needs_wide_range(self):
        low, high = read_port_range()
        clients = self.plan['pairs_v4'] + self.plan['pairs_v6'] + self.plan['close_wait'] + self.plan['time_wait']
        return clients > WIDEN_ABOVE_CLIENTS and (low > WIDE_PORT_RANGE[0] or high < WIDE_PORT_RANGE[1])

    def _widen_ports(self):
        self.lock = open(LOCK_FILE, 'a')
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (IOError, OSError) as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            self.lock.close()
            self.lock = None
            raise LoadError('another load generator holds {0} (it is widening the port range); '
                            'run one large load at a time'.format(LOCK_FILE))
        repair_port_range()
        self.original_range = read_port_range()
        with open(PORT_STATE_FILE, 'w') as handle:
            json.dump({'original': self.original_range, 'pid': os.getpid()}, handle)
        # The guard restores the range when our end of its stdin closes, even if we die by SIGKILL;
        # it inherits the lock, so no other run can widen the range before it is restored.
        self.guard = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--guard'], stdin=subprocess.PIPE,
            pass_fds=(self.lock.fileno(),), close_fds=True)
        write_port_range(min(self.original_range[0], WIDE_PORT_RANGE[0]),
                         max(self.original_range[1], WIDE_PORT_RANGE[1]))

    def _restore_ports(self):
        if self.original_range is not None:
            write_port_range(*self.original_range)
            try:
                os.unlink(PORT_STATE_FILE)
            except OSError:
                pass
            self.original_range = None
        if self.guard is not None:
            self.guard.stdin.close()  # nothing left to restore: it exits at once
            self.guard.wait()
            self.guard = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def _repair_stale_range(self):
        """A run killed with SIGKILL left the range widened: put it back if nobody holds the lock."""
        if not os.path.exists(PORT_STATE_FILE):
            return
        with open(LOCK_FILE, 'a') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (IOError, OSError):
                return  # a live run owns it and will restore it
            repair_port_range()

    def start(self):
        started = time.time()
        try:
            self._repair_stale_range()
            if self._needs_wide_range():
                self._widen_ports()
            for index, part in enumerate(self.parts):
                worker = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(part),
                     '--index', str(index), '--timeout', str(self.timeout)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
                self.workers.append(worker)
            self._wait_ready(started + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.build_seconds = time.time() - started
        return self

    def _wait_ready(self, deadline):
        waiting = dict((worker.stdout.fileno(), worker) for worker in self.workers)
        while waiting:
            left = deadline - time.time()
            if left <= 0:
                raise LoadError('{0} load worker(s) not ready after {1} s'.format(len(waiting), START_TIMEOUT))
            readable, _w, _x = select.select(list(waiting), [], [], left)
            for fd in readable:
                worker = waiting.pop(fd)
                line = worker.stdout.readline().decode('utf-8', 'replace').strip()
                if not line.startswith('READY '):
                    raise LoadError('load worker pid {0} failed: {1}'.format(
                        worker.pid, line or 'exited with code {0}'.format(worker.poll())))

    def stop(self):
        """Close every socket (workers reset them), end the workers, restore the port range."""
        try:
            for worker in self.workers:
                try:
                    worker.stdin.close()
                except (IOError, OSError):
                    pass
            deadline = time.time() + 20
            for worker in self.workers:
                try:
                    worker.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                worker.stdout.close()
            self.workers = []
        finally:
            self._restore_ports()


@contextlib.contextmanager
def hold_sockets(total, timeout=DEFAULT_TIMEOUT, **plan_options):
    """Context manager: hold ``total`` sockets (see module doc) for the body, then close them all.

    ``timeout`` is the workers' hard limit in seconds: past it they reset their
    sockets and exit even if the body is still running.
    """
    load = LoadGenerator(total, timeout=timeout, **plan_options)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)  # so that the finally below runs

    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        load.start()
        yield load
    finally:
        load.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('total', nargs='?', type=int, help='sockets to hold')
    parser.add_argument('--hold', type=float, default=60, help='seconds to hold them (default 60)')
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT, help='workers\' hard timeout')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--index', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--guard', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guard:
        return run_guard()
    if args.worker:
        return run_worker(json.loads(args.worker), args.index, args.timeout)
    if not args.total:
        parser.error('give the number of sockets to hold')
    try:
        return _hold(args)
    except LoadError as exc:
        sys.stderr.write('loadgen: {0}\n'.format(exc))
        return 1


def _hold(args):
    with hold_sockets(args.total, timeout=max(args.timeout, args.hold + 60)) as load:
        print('holding {0} sockets in {1} workers (pids {2}), built in {3:.1f} s: {4}'.format(
            args.total, len(load.pids), ' '.join(map(str, load.pids)), load.build_seconds,
            json.dumps(load.expected, sort_keys=True)))
        sys.stdout.flush()
        try:
            time.sleep(args.hold)
        except KeyboardInterrupt:
            pass
    print('closed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
