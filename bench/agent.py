"""A private zabbix_agentd for the benchmark: own config, own port, started and stopped by us.

It never touches the system agent (/etc/zabbix, port 10050). Timeout=30 so that
slow methods are measured rather than cut off at the default 3 s. It runs private
copies of the zabbix_agentd and zabbix_get binaries, so that other jobs removing or
reinstalling the packages meanwhile (the role's tests do) cannot break a run.
"""

from __future__ import print_function

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time

ZABBIX_AGENTD = '/usr/sbin/zabbix_agentd'
ZABBIX_GET = '/usr/bin/zabbix_get'
AGENT_TIMEOUT = 30

CONFIG = """\
# Private benchmark agent, written by bench/agent.py; removed when the benchmark ends.
ListenPort={port}
ListenIP=127.0.0.1
Server=127.0.0.1,::1
Hostname=zts-bench
StartAgents=3
Timeout={timeout}
AllowRoot=1
PidFile={tmp}/zabbix_agentd.pid
LogFile={tmp}/zabbix_agentd.log
LogFileSize=0
{userparameters}
{config_text}
"""


PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the agent's child before exec: get SIGTERM if the harness dies (even by SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class AgentError(Exception):
    """The private agent did not start or did not answer."""


class PrivateAgent(object):
    """``with PrivateAgent(10070, userparameters, config_text) as agent: agent.get('agent.ping')``.

    userparameters: "key[*],command" lines of the benchmark's own keys; config_text: configuration text added
    as it is (the role's own UserParameter file, rendered by zabbix/role_items.py).
    """

    def __init__(self, port, userparameters, config_text=''):
        self.port = int(port)
        self.userparameters = list(userparameters)
        self.config_text = config_text
        self.tmp = None
        self.process = None
        self.agentd = ZABBIX_AGENTD
        self.zabbix_get = ZABBIX_GET

    @property
    def config_path(self):
        return os.path.join(self.tmp, 'zabbix_agentd.conf')

    def start(self):
        self.tmp = tempfile.mkdtemp(prefix='zts-bench-agent-')
        for attribute, path, package in (('agentd', ZABBIX_AGENTD, 'zabbix-agent'),
                                         ('zabbix_get', ZABBIX_GET, 'zabbix-proxy-sqlite3 or zabbix-server-*')):
            if not os.access(path, os.X_OK):
                self.stop()
                raise AgentError('{0} is missing (it comes with the {1} package)'.format(path, package))
            copy = os.path.join(self.tmp, os.path.basename(path))
            shutil.copy2(path, copy)
            setattr(self, attribute, copy)
        with open(self.config_path, 'w') as handle:
            handle.write(CONFIG.format(
                port=self.port, tmp=self.tmp, timeout=AGENT_TIMEOUT,
                userparameters='\n'.join('UserParameter={0}'.format(line) for line in self.userparameters),
                config_text=self.config_text))
        try:
            self.process = subprocess.Popen([self.agentd, '-f', '-c', self.config_path],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
            deadline = time.time() + 15
            while True:
                if self.process.poll() is not None:
                    raise AgentError('zabbix_agentd exited with code {0} at start; its log: {1}'.format(
                        self.process.returncode, self.log_tail()))
                try:
                    if self.get('agent.ping', timeout=3) == '1':
                        break
                except AgentError:
                    pass
                if time.time() > deadline:
                    raise AgentError('zabbix_agentd on port {0} did not answer agent.ping within 15 s; '
                                     'its log: {1}'.format(self.port, self.log_tail()))
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines=5):
        try:
            with open(os.path.join(self.tmp, 'zabbix_agentd.log')) as handle:
                return ' | '.join(handle.read().strip().splitlines()[-lines:])
        except (IOError, OSError):
            return '(no log)'

    def get_argv(self, key):
        return [self.zabbix_get, '-s', '127.0.0.1', '-p', str(self.port), '-t', str(AGENT_TIMEOUT), '-k', key]

    def get(self, key, timeout=AGENT_TIMEOUT + 5):
        try:
            result = subprocess.run(self.get_argv(key), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AgentError('zabbix_get {0} gave no answer within {1} s'.format(key, timeout))
        text = result.stdout.decode('utf-8', 'replace').strip()
        if result.returncode != 0:
            raise AgentError('zabbix_get -k {0} failed ({1}): {2}'.format(key, result.returncode, text))
        return text

    def stop(self):
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()  # the main process ends its collector and listeners
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
