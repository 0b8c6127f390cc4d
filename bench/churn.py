#!/usr/bin/env python3
"""Connection churn for the benchmark: short connections opened and closed all the time, IPv4 and IPv6.

A busy host is never still while it is counted: connections come and go, TIME_WAIT renews. This process
opens RATE connections per second to its own listeners (on 127.0.0.1 and ::1, alternately), holds each open
for a few milliseconds, then closes it client first (the client end goes to TIME_WAIT, which the kernel keeps
60 s, so the TIME_WAIT count renews at RATE per second once it reaches steady state).

From Python::

    with Churn(rate=200) as churn:   # starts it; the process stops (and its sockets close) at the end
        churn.pause()                # SIGSTOP: no new connections (older TIME_WAIT still expires)
        churn.resume()               # SIGCONT

or from a shell: ``python3 bench/churn.py 200`` (until Ctrl-C).
"""

from __future__ import print_function

import os
import signal
import socket
import subprocess
import sys
import time

HOLD_SECONDS = 0.005  # how long each short connection stays ESTABLISHED


def run(rate):
    listeners = []
    for family, address in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((address, 0))
        sock.listen(512)
        listeners.append((family, sock.getsockname()[:2], sock))
    sys.stdout.write('READY\n')
    sys.stdout.flush()
    interval = 1.0 / rate
    due = time.time()
    number = 0
    while True:
        family, address, listener = listeners[number % 2]
        number += 1
        client = socket.socket(family, socket.SOCK_STREAM)
        try:
            client.connect(address)
            server, _peer = listener.accept()
            time.sleep(HOLD_SECONDS)
            client.close()  # active close first: the client end goes to TIME_WAIT
            server.close()
        except OSError:
            client.close()  # e.g. no free port for a moment: try again at the next tick
        due += interval
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:
            due = time.time()  # fell behind (paused, or a busy machine): do not burst to catch up


class Churn(object):
    """The churn process; a context manager. rate: connections per second."""

    def __init__(self, rate):
        self.rate = float(rate)
        self.process = None
        self.paused = False

    def start(self):
        from bench.agent import _die_with_parent  # the harness side only
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(self.rate)],
                                        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, close_fds=True,
                                        preexec_fn=_die_with_parent)
        line = self.process.stdout.readline().decode().strip()
        if line != 'READY':
            self.stop()
            raise RuntimeError('churn process did not start: {0!r}'.format(line))
        return self

    def pause(self):
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def stop(self):
        if self.process is not None:
            if self.paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        run(float(sys.argv[1]) if len(sys.argv) > 1 else 100.0)
    except KeyboardInterrupt:
        pass
