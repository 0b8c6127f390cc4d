"""Throwaway Zabbix servers for the end-to-end test: the matrix 5.0 (bullseye), 6.0 (bookworm), 7.0 (trixie).

Each server runs from its Debian suite's own packages in its own root filesystem (server_images.py builds and
caches one image per suite with debootstrap): an overlay over the image, private mount and PID namespaces
(server-boot.sh is PID 1), this machine's network on loopback ports of its own. Inside: the suite's PostgreSQL
with the schema its zabbix-server-pgsql ships, zabbix_server, and the frontend (its API, api_jsonrpc.php, and its
charts) served by the suite's PHP built-in web server. The servers poll agents on this machine's loopback (the
system agent on 10050, the lab's private agents on 10060-10069). Nothing under /etc of this machine is touched.
Lab.stop() kills the server's PID 1 (everything inside dies with it) and removes its directory; it is safe to
call after a partial start.

Private agents (start_agent) run a copy of this machine's zabbix_agentd (unpacked from Debian's zabbix-agent
.deb, so that the role's tests may remove or reinstall the agent packages meanwhile) with the role's own
UserParameter lines.

Also usable by hand:  python3 tests/zabbix_server/lab.py up [5.0|6.0|7.0]   (prints the URL, waits for Ctrl-C)
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from http.cookiejar import CookieJar
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, Request, build_opener, urlopen

import server_images

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
COUNTER = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils', 'tcp_status_counter.py')
BOOT = os.path.join(HERE, 'server-boot.sh')

# version -> the suite that carries it and the loopback ports of its server (PostgreSQL, trapper, frontend).
VERSIONS = {
    '5.0': {'suite': 'bullseye', 'pg_port': 5450, 'server_port': 10150, 'api_port': 8150},
    '6.0': {'suite': 'bookworm', 'pg_port': 5460, 'server_port': 10160, 'api_port': 8160},
    '7.0': {'suite': 'trixie', 'pg_port': 5470, 'server_port': 10170, 'api_port': 8170},
}
AGENT_PORTS = range(10060, 10070)
# The server whose frontend renders the pictures (its image has Debian's chromium: server_images.EXTRA_PACKAGES).
PICTURES_VERSION = '7.0'
DB_PASSWORD = 'zts-e2e-only'


class LabError(Exception):
    pass


def version_tuple(text):
    return tuple(int(part) for part in text.split('.')[:2])


def unpack_deb(package, dest):
    """Unpack a package's .deb (from apt's cache, else `apt-get download`) into dest, without installing it."""
    cache = '/var/cache/apt/archives'
    debs = sorted(name for name in os.listdir(cache) if name.startswith(package + '_') and name.endswith('.deb'))
    if debs:
        deb = os.path.join(cache, debs[-1])
    else:
        download = os.path.join(dest, 'download')
        os.makedirs(download)
        proc = subprocess.run(['apt-get', 'download', package], cwd=download, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0:
            raise LabError('apt-get download {0} failed:\n{1}'.format(package, proc.stdout[-2000:]))
        deb = os.path.join(download, [n for n in os.listdir(download) if n.endswith('.deb')][0])
    subprocess.run(['dpkg-deb', '-x', deb, dest], check=True)
    return os.path.basename(deb)


def port_free(port, host='127.0.0.1'):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        return sock.connect_ex((host, port)) != 0
    finally:
        sock.close()


def _tail(path, lines=20):
    if not path or not os.path.exists(path):
        return ''
    with open(path, errors='replace') as handle:
        return ''.join(handle.readlines()[-lines:])


def wait_port(port, timeout, proc=None, what='', logs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not port_free(port):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise LabError('{0} did not listen on 127.0.0.1:{1} within {2}s{3}\n{4}'.format(
        what, port, timeout, '' if proc is None or proc.poll() is None else ' (exited %s)' % proc.returncode,
        '\n'.join('--- {0}\n{1}'.format(log, _tail(log)) for log in logs)))


class Api(object):
    """A minimal JSON-RPC client for the test's own assertions (registration goes through the role).
    It speaks each version's dialect: user.login takes `user` before 5.4 and `username` from 5.4 (the old name
    is gone in 6.4); the session goes in the request's `auth` member before 6.4, in an Authorization header
    from 6.4 (where `auth` is deprecated)."""

    def __init__(self, url):
        self.url = url
        self.auth = None
        self._id = 0
        self.version = self.call('apiinfo.version', auth=False)

    def call(self, method, params=None, auth=True):
        self._id += 1
        body = {'jsonrpc': '2.0', 'method': method, 'params': params if params is not None else {}, 'id': self._id}
        headers = {'Content-Type': 'application/json-rpc'}
        if auth and self.auth:
            if version_tuple(self.version) >= (6, 4):
                headers['Authorization'] = 'Bearer ' + self.auth
            else:
                body['auth'] = self.auth
        req = Request(self.url, data=json.dumps(body).encode('utf-8'), headers=headers)
        with urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read().decode('utf-8'))
        if 'error' in answer:
            raise LabError('API {0} failed: {1}'.format(method, answer['error']))
        return answer['result']

    def login(self, user='Admin', password='zabbix'):
        name = 'username' if version_tuple(self.version) >= (5, 4) else 'user'
        self.auth = self.call('user.login', {name: user, 'password': password}, auth=False)
        return self.auth


class Lab(object):
    """One server of the matrix. Lab('7.0').start() ... .stop(); or `with Lab('7.0') as lab:`."""

    def __init__(self, version, keep=False):
        if version not in VERSIONS:
            raise LabError('unknown Zabbix version {0!r}; the matrix: {1}'.format(version, ', '.join(VERSIONS)))
        self.version = version
        self.suite = VERSIONS[version]['suite']
        self.pg_port = VERSIONS[version]['pg_port']
        self.server_port = VERSIONS[version]['server_port']
        self.api_port = VERSIONS[version]['api_port']
        self.keep = keep
        self.dir = None
        self.procs = {}
        self.api = None
        self.api_version = None
        self.image = None
        self.timings = {}

    # -- helpers ------------------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def share(self, *parts):
        return self.path('share', *parts)

    @property
    def url(self):
        return 'http://127.0.0.1:{0}/'.format(self.api_port)

    def _popen(self, name, argv, log, env=None):
        handle = open(log, 'ab')
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        handle.close()
        self.procs[name] = proc
        return proc

    def _timed(self, name, func, *args):
        start = time.time()
        result = func(*args)
        self.timings[name] = round(time.time() - start, 1)
        return result

    # -- start -------------------------------------------------------------------------------------------
    def start(self):
        for port in (self.pg_port, self.server_port, self.api_port):
            if not port_free(port):
                raise LabError('port 127.0.0.1:{0} is already in use: another {1} lab still running?'.format(
                    port, self.version))
        self.dir = tempfile.mkdtemp(prefix='zts-zabbix-{0}-'.format(self.version))
        os.chmod(self.dir, 0o755)
        for sub in ('upper', 'work', 'root', 'share'):
            os.mkdir(self.path(sub))
        os.chmod(self.share(), 0o777)
        self.image, self.timings['image_build'] = server_images.build(self.suite)
        self._write_configs()
        self._timed('boot', self._boot)
        self.api = Api(self.url + 'api_jsonrpc.php')
        self.api_version = self.api.version
        if not self.api_version.startswith(self.version + '.'):
            raise LabError('the {0} lab answers API version {1}'.format(self.version, self.api_version))
        self.api.login()
        # The schema's own host "Zabbix server" polls an agent on 127.0.0.1:10050, which is this machine's system
        # agent when it runs: its connections would show in the counts the tests compare. Disabled.
        own = self.api.call('host.get', {'filter': {'host': 'Zabbix server'}, 'output': ['hostid']})
        for host in own:
            self.api.call('host.update', {'hostid': host['hostid'], 'status': 1})
        return self

    def _write_configs(self):
        with open(self.share('zabbix_server.conf'), 'w') as handle:
            handle.write('\n'.join([
                'LogFile=/zts/zabbix_server.log',
                'PidFile=/run/zabbix/zabbix_server.pid',
                'SocketDir=/run/zabbix',
                'DBHost=127.0.0.1', 'DBPort={0}'.format(self.pg_port), 'DBName=zabbix', 'DBUser=zabbix',
                'DBPassword=' + DB_PASSWORD,
                'ListenIP=127.0.0.1', 'ListenPort={0}'.format(self.server_port),
                'AllowRoot=1',
                # Pick up hosts, items and macros created through the API within seconds (default 60 s).
                'CacheUpdateFrequency=2',
                'HousekeepingFrequency=0',
                'Timeout=10',
                # Small: this machine has two cores shared with other work, and up to three servers.
                'StartPollers=2', 'StartPollersUnreachable=1', 'StartTrappers=2', 'StartPingers=0',
                'StartDiscoverers=0', 'StartHTTPPollers=0', 'StartPreprocessors=1', 'StartLLDProcessors=1',
                'StartAlerters=1', 'StartEscalators=1', 'StartTimers=1',
                'CacheSize=32M', 'HistoryCacheSize=16M', 'TrendCacheSize=4M', 'ValueCacheSize=16M',
                ''] + (['StartReportWriters=0'] if self.version != '5.0' else [])))
        with open(self.share('zabbix.conf.php'), 'w') as handle:
            handle.write('\n'.join([
                '<?php',
                'global $DB;',
                "$DB['TYPE'] = 'POSTGRESQL';",
                "$DB['SERVER'] = '127.0.0.1';",
                "$DB['PORT'] = '{0}';".format(self.pg_port),
                "$DB['DATABASE'] = 'zabbix';",
                "$DB['USER'] = 'zabbix';",
                "$DB['PASSWORD'] = '{0}';".format(DB_PASSWORD),
                "$DB['SCHEMA'] = '';",
                "$DB['ENCRYPTION'] = false;",
                "$DB['KEY_FILE'] = '';", "$DB['CERT_FILE'] = '';", "$DB['CA_FILE'] = '';",
                "$DB['VERIFY_HOST'] = false;", "$DB['CIPHER_LIST'] = '';",
                "$DB['VAULT_URL'] = '';", "$DB['VAULT_DB_PATH'] = '';", "$DB['VAULT_TOKEN'] = '';",
                "$DB['DOUBLE_IEEE754'] = true;",
                "$ZBX_SERVER = '127.0.0.1';",
                "$ZBX_SERVER_PORT = '{0}';".format(self.server_port),
                "$ZBX_SERVER_NAME = 'zts-e2e {0}';".format(self.version),
                '$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;',
                '']))

    def _boot(self):
        env = dict(os.environ, ZTS_IMAGE=server_images.image_path(self.suite), ZTS_LAB=self.dir,
                   ZTS_PG_PORT=str(self.pg_port), ZTS_API_PORT=str(self.api_port))
        proc = self._popen('server', ['unshare', '--mount', '--pid', '--fork', '--kill-child', '--propagation',
                                      'private', 'sh', BOOT], self.share('boot.log'), env=env)
        logs = [self.share(name) for name in ('boot.log', 'postgresql.log', 'zabbix_server.log', 'php.log')]
        wait_port(self.api_port, 240, proc, 'Zabbix {0} frontend'.format(self.version), logs)
        wait_port(self.server_port, 30, proc, 'zabbix_server {0}'.format(self.version), logs)

    def boot_steps(self):
        """Seconds per step of server-boot.sh, from its log."""
        marks = []
        for line in _tail(self.share('boot.log'), 200).splitlines():
            parts = line.split(' ', 1)
            try:
                marks.append((float(parts[0]), parts[1]))
            except (ValueError, IndexError):
                continue
        return dict((name, round(marks[i + 1][0] - clock, 1)) for i, (clock, name) in enumerate(marks[:-1]))

    def server_log(self):
        return _tail(self.share('zabbix_server.log'), 100000)

    # -- the frontend as a user sees it -----------------------------------------------------------------
    def frontend_opener(self, user='Admin', password='zabbix'):
        """A urllib opener logged in to the frontend (the login form; its session cookie), for chart2.php."""
        jar = CookieJar()
        opener = build_opener(HTTPCookieProcessor(jar))
        form = urlencode({'name': user, 'password': password, 'autologin': '1', 'enter': 'Sign in'}).encode()
        with opener.open(self.url + 'index.php', data=form, timeout=60) as resp:
            landed = resp.geturl()
        # Signed in, the form sends the browser on to the dashboard; refused, it shows the form again.
        if 'dashboard' not in landed or not any(c.name.startswith('zbx_session') for c in jar):
            raise LabError('frontend login as {0} failed on {1} (landed on {2})'.format(user, self.version, landed))
        return opener

    def run_inside(self, argv, timeout=120):
        """Run a command in the server's root filesystem, mount and PID namespaces (e.g. its chromium)."""
        unshare = self.procs['server'].pid
        with open('/proc/{0}/task/{0}/children'.format(unshare)) as handle:
            pid1 = int(handle.read().split()[0])
        return subprocess.run(['nsenter', '--target', str(pid1), '--mount', '--pid', '--', 'chroot',
                               self.path('root'), '/usr/bin/env', '-i',
                               'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                               'HOME=/tmp', 'LANG=C.UTF-8'] + list(argv),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                              timeout=timeout)

    def screenshot(self, page, name, width=1400, height=900, wait_ms=15000, user='Admin', password='zabbix'):
        """A PNG of a frontend page (e.g. 'zabbix.php?action=...') as Debian's headless chromium renders it for a
        user; returns its path (in the lab's share directory). The browser signs in through the login form's
        own fields in the URL, which then sends it on to the page (index.php's `request`)."""
        url = self.url + 'index.php?' + urlencode({'enter': 'Sign in', 'name': user, 'password': password,
                                                   'request': page})
        proc = self.run_inside(['chromium', '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                                '--no-first-run', '--disable-dev-shm-usage',
                                '--window-size={0},{1}'.format(width, height),
                                '--virtual-time-budget={0}'.format(wait_ms),
                                '--screenshot=/zts/{0}'.format(name), url], timeout=180)
        path = self.share(name)
        if proc.returncode != 0 or not os.path.exists(path):
            raise LabError('chromium --screenshot {0} failed ({1}):\n{2}'.format(page, proc.returncode,
                                                                               proc.stdout[-3000:]))
        return path

    # -- stop --------------------------------------------------------------------------------------------
    def stop(self):
        """Kill the server's PID 1 (unshare ignores SIGTERM while it waits for its child; SIGKILL makes it kill
        that child, and every process of the namespace dies with it: a throwaway database needs no shutdown)."""
        errors = []
        proc = self.procs.pop('server', None)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            ports = (self.pg_port, self.server_port, self.api_port)
            deadline = time.time() + 30
            while time.time() < deadline and not all(port_free(p) for p in ports):
                time.sleep(0.2)
            if not all(port_free(p) for p in ports):
                errors.append('the {0} server still listens 30 s after its PID 1 was killed'.format(self.version))
        if self.dir and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return errors

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False


class Agents(object):
    """Private zabbix_agentd instances on 127.0.0.1:10060-10069, shared by every server of the matrix."""

    def __init__(self, keep=False):
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix='zts-zabbix-agents-')
        self.procs = {}
        self.agent_bin = None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def _popen(self, name, argv, log):
        handle = open(log, 'ab')
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        handle.close()
        self.procs[name] = proc
        return proc

    def _agent_binary(self):
        if self.agent_bin is None:
            root = self.path('agent')
            unpack_deb('zabbix-agent', root)
            self.agent_bin = os.path.join(root, 'usr', 'sbin', 'zabbix_agentd')
        return self.agent_bin

    def start_agent(self, name, port, user_parameters):
        """A private zabbix_agentd on 127.0.0.1:port answering the given UserParameter lines."""
        if port not in AGENT_PORTS:
            raise LabError('agent port {0} is outside this lab\'s range {1}'.format(port, AGENT_PORTS))
        if not port_free(port):
            raise LabError('port 127.0.0.1:{0} is already in use'.format(port))
        conf = self.path('agent-{0}.conf'.format(name))
        with open(conf, 'w') as handle:
            handle.write('\n'.join([
                'PidFile=' + self.path('agent-{0}.pid'.format(name)),
                'LogFile=' + self.path('agent-{0}.log'.format(name)),
                'ListenIP=127.0.0.1', 'ListenPort={0}'.format(port),
                'Server=127.0.0.1,::1', 'Hostname=' + name, 'AllowRoot=1', 'Timeout=10', 'StartAgents=3',
                ''] + list(user_parameters) + ['']))
        proc = self._popen('agent-' + name, [self._agent_binary(), '-f', '-c', conf],
                           self.path('agent-{0}.stdout'.format(name)))
        wait_port(port, 20, proc, 'zabbix_agentd ' + name, [self.path('agent-{0}.log'.format(name))])
        return conf

    def stop(self):
        errors = []
        for name in list(self.procs)[::-1]:
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    errors.append('{0} ignored SIGTERM for 30 s; killed'.format(name))
            # zabbix_agentd forks workers into the session we gave it: none may stay.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return errors

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def start_all(versions, keep=False):
    """Start several servers at once (threads: image builds and schema loads overlap). Returns
    ({version: Lab}, {version: error text}); every lab that failed is already stopped."""
    labs, errors = {}, {}

    def one(version):
        lab = Lab(version, keep=keep)
        try:
            lab.start()
            labs[version] = lab
        except Exception as exc:  # noqa: BLE001 (reported per version by the caller)
            errors[version] = '{0}: {1}'.format(type(exc).__name__, exc)
            lab.stop()
    threads = [threading.Thread(target=one, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return labs, errors


def main(argv):
    if len(argv) < 2 or argv[1] != 'up' or any(v not in VERSIONS for v in argv[2:]):
        print(__doc__)
        return 2

    def interrupt(signum, frame):
        raise KeyboardInterrupt()
    # Background jobs ignore SIGINT: SIGTERM stops the labs cleanly as well.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    labs, errors = start_all(argv[2:] or sorted(VERSIONS), keep=os.environ.get('ZTS_E2E_KEEP') == '1')
    try:
        for version, lab in sorted(labs.items()):
            print('Zabbix {0} at {1} (Admin/zabbix), dir {2}, boot {3}'.format(
                lab.api_version, lab.url, lab.dir, lab.boot_steps()))
        for version, error in sorted(errors.items()):
            print('Zabbix {0} did not start: {1}'.format(version, error))
        print('Ctrl-C or SIGTERM stops everything')
        sys.stdout.flush()
        while labs:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for lab in labs.values():
            lab.stop()
    return 0 if not errors else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv))
