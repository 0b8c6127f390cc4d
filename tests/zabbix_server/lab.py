"""A throwaway Zabbix server on this machine, for the end-to-end test.

Everything comes from Debian's packages and runs from one temporary directory on loopback ports:
a private PostgreSQL cluster (port 5432), zabbix_server (10051, unpacked from zabbix-server-pgsql's .deb: that
package conflicts with the one the role installs for zabbix_get), the frontend's API served by PHP's built-in web
server (127.0.0.1:8085, from a copy of /usr/share/zabbix whose config path points into the temporary directory)
and private zabbix_agentd instances (10060-10069). Nothing under /etc is touched. Lab.stop() stops every process
it started and removes the directory; it is safe to call after a partial start.

Also usable by hand:  python3 tests/zabbix_server/lab.py up   (starts, prints the API URL, waits for Ctrl-C)
"""

import gzip
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from urllib.request import Request, urlopen

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COUNTER = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils', 'tcp_status_counter.py')

PG_PORT = 5432
SERVER_PORT = 10051
API_PORT = 8085
AGENT_PORTS = range(10060, 10070)

# Installed with apt: nothing here conflicts with the agent side. zabbix-server-pgsql itself is NOT installed:
# Debian declares it in conflict with zabbix-proxy-sqlite3, the package that ships zabbix_get for the role
# (installing one removes the other). The lab unpacks the server's .deb into its own directory instead and
# installs only the libraries it links against. Private agents run a copy of zabbix_agentd made at start, so
# the role's tests may remove or reinstall the agent packages meanwhile.
APT_PACKAGES = ['postgresql', 'zabbix-frontend-php', 'php-pgsql', 'php-cli',
                # zabbix-server-pgsql's Depends (Debian 12), without the package itself
                'libcurl3-gnutls', 'libevent-2.1-7', 'libldap-2.5-0', 'libodbc2', 'libopenipmi0', 'libpcre2-8-0',
                'libpq5', 'libsnmp40', 'libssh2-1', 'libxml2', 'fping']
UNPACKED = ['zabbix-server-pgsql', 'zabbix-agent']
FRONTEND = '/usr/share/zabbix'
DB_PASSWORD = 'zts-e2e-only'


class LabError(Exception):
    pass


def _pg_bin():
    base = '/usr/lib/postgresql'
    if os.path.isdir(base):
        for version in sorted(os.listdir(base), key=lambda v: int(v) if v.isdigit() else 0, reverse=True):
            path = os.path.join(base, version, 'bin')
            if os.path.exists(os.path.join(path, 'initdb')):
                return path
    return None


def missing_packages():
    """The Debian packages this lab needs that are not installed."""
    proc = subprocess.run(['dpkg-query', '-W', '-f', '${Package} ${db:Status-Status}\\n'] + APT_PACKAGES,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    installed = set(line.split()[0] for line in proc.stdout.splitlines() if line.endswith(' installed'))
    return [name for name in APT_PACKAGES if name not in installed]


def install_packages():
    """apt-get install what is missing (root only). Debian's policy-rc.d keeps apt from starting services."""
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0:
        raise LabError('missing Debian packages {0}; install them as root: apt-get install '
                       '--no-install-recommends {1}'.format(missing, ' '.join(missing)))
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    proc = subprocess.run(['apt-get', 'install', '-y', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=120']
                          + missing, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    if proc.returncode != 0:
        raise LabError('apt-get install {0} failed:\n{1}'.format(' '.join(missing), proc.stdout[-3000:]))
    return missing


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


def wait_port(port, timeout, proc=None, what='', log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not port_free(port):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = ''
    if log and os.path.exists(log):
        with open(log, errors='replace') as handle:
            tail = ''.join(handle.readlines()[-20:])
    raise LabError('{0} did not listen on 127.0.0.1:{1} within {2}s{3}\n{4}'.format(
        what, port, timeout, '' if proc is None or proc.poll() is None else ' (exited %s)' % proc.returncode,
        tail))


class Api(object):
    """A minimal JSON-RPC client for the test's own assertions (registration goes through community.zabbix)."""

    def __init__(self, url):
        self.url = url
        self.auth = None
        self._id = 0

    def call(self, method, params=None, auth=True):
        self._id += 1
        body = {'jsonrpc': '2.0', 'method': method, 'params': params if params is not None else {}, 'id': self._id}
        if auth and self.auth:
            body['auth'] = self.auth
        req = Request(self.url, data=json.dumps(body).encode('utf-8'),
                      headers={'Content-Type': 'application/json-rpc'})
        with urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read().decode('utf-8'))
        if 'error' in answer:
            raise LabError('API {0} failed: {1}'.format(method, answer['error']))
        return answer['result']

    def login(self, user='Admin', password='zabbix'):
        self.auth = self.call('user.login', {'username': user, 'password': password}, auth=False)
        return self.auth


class Lab(object):
    def __init__(self, keep=False):
        self.keep = keep
        self.dir = None
        self.procs = {}
        self.pg_bin = None
        self.pg_started = False
        self.api = None
        self.timings = {}
        self.installed = []
        self.agent_bin = None
        self.server_bin = None
        self.schema_dir = None
        self.debs = []

    # -- helpers ------------------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def _as_postgres(self, argv, **kwargs):
        return subprocess.run(['runuser', '-u', 'postgres', '--'] + argv, check=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, **kwargs)

    def _popen(self, name, argv, log):
        handle = open(log, 'ab')
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
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
        for port in (PG_PORT, SERVER_PORT, API_PORT):
            if not port_free(port):
                raise LabError('port 127.0.0.1:{0} is already in use: another lab still running?'.format(port))
        self.dir = tempfile.mkdtemp(prefix='zts-zabbix-lab-')
        os.chmod(self.dir, 0o755)
        self.installed = self._timed('packages', install_packages)
        self._timed('unpack', self._unpack)
        self._timed('postgresql', self._start_postgres)
        self._timed('schema', self._load_schema)
        self._timed('server', self._start_server)
        self._timed('frontend', self._start_frontend)
        return self

    def _unpack(self):
        root = self.path('root')
        self.debs = [unpack_deb(package, root) for package in UNPACKED]
        self.server_bin = os.path.join(root, 'usr', 'sbin', 'zabbix_server')
        self.schema_dir = os.path.join(root, 'usr', 'share', 'zabbix-server-pgsql')
        self.agent_bin = os.path.join(root, 'usr', 'sbin', 'zabbix_agentd')
        proc = subprocess.run(['ldd', self.server_bin, self.agent_bin], stdout=subprocess.PIPE,
                              universal_newlines=True)
        if 'not found' in proc.stdout:
            raise LabError('the unpacked Zabbix binaries miss libraries:\n' + proc.stdout)

    def _start_postgres(self):
        self.pg_bin = _pg_bin()
        data = self.path('pg')
        os.mkdir(data)
        pw = pwd.getpwnam('postgres')
        os.chown(data, pw.pw_uid, pw.pw_gid)
        self._as_postgres([os.path.join(self.pg_bin, 'initdb'), '-D', data, '-U', 'postgres', '-A', 'trust',
                           '-E', 'UTF8', '--locale=C', '--no-sync'])
        # A throwaway cluster: durability off makes loading the schema several times faster.
        opts = ('-p {0} -k {1} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off '
                '-c full_page_writes=off'.format(PG_PORT, data))
        self._as_postgres([os.path.join(self.pg_bin, 'pg_ctl'), '-D', data, '-o', opts, '-l',
                           self.path('pg', 'postgresql.log'), '-w', '-t', '60', 'start'])
        self.pg_started = True
        self._psql('postgres', "CREATE ROLE zabbix LOGIN PASSWORD '{0}'".format(DB_PASSWORD))
        self._psql('postgres', 'CREATE DATABASE zabbix OWNER zabbix')

    def _psql(self, db, sql=None, user='postgres', stdin=None):
        argv = [os.path.join(self.pg_bin, 'psql'), '-h', '127.0.0.1', '-p', str(PG_PORT), '-U', user, '-d', db,
                '-q', '-v', 'ON_ERROR_STOP=1']
        if sql is not None:
            argv += ['-c', sql]
        proc = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise LabError('psql failed: {0}'.format(proc.stderr.decode('utf-8', 'replace')[-2000:]))

    def _load_schema(self):
        sql = b''
        for name in ('schema', 'images', 'data'):
            with gzip.open(os.path.join(self.schema_dir, name + '.sql.gz')) as handle:
                sql += handle.read() + b'\n'
        self._psql('zabbix', user='zabbix', stdin=b'BEGIN;\n' + sql + b'\nCOMMIT;\n')

    def _start_server(self):
        conf = self.path('zabbix_server.conf')
        with open(conf, 'w') as handle:
            handle.write('\n'.join([
                'LogFile=' + self.path('zabbix_server.log'),
                'PidFile=' + self.path('zabbix_server.pid'),
                'SocketDir=' + self.dir,
                'DBHost=127.0.0.1', 'DBPort={0}'.format(PG_PORT), 'DBName=zabbix', 'DBUser=zabbix',
                'DBPassword=' + DB_PASSWORD,
                'ListenIP=127.0.0.1', 'ListenPort={0}'.format(SERVER_PORT),
                'AllowRoot=1',
                # Pick up hosts, items and macros created through the API within seconds (default 60 s).
                'CacheUpdateFrequency=2',
                'HousekeepingFrequency=0',
                'Timeout=10',
                # Small: this machine has two cores shared with other work.
                'StartPollers=2', 'StartPollersUnreachable=1', 'StartTrappers=2', 'StartPingers=0',
                'StartDiscoverers=0', 'StartHTTPPollers=0', 'StartPreprocessors=1', 'StartLLDProcessors=1',
                'StartAlerters=1', 'StartEscalators=1', 'StartTimers=1', 'StartReportWriters=0',
                'CacheSize=32M', 'HistoryCacheSize=16M', 'TrendCacheSize=4M', 'ValueCacheSize=16M',
                '']))
        proc = self._popen('server', [self.server_bin, '-f', '-c', conf], self.path('server.stdout'))
        wait_port(SERVER_PORT, 60, proc, 'zabbix_server', self.path('zabbix_server.log'))

    def _start_frontend(self):
        web = self.path('frontend')
        shutil.copytree(FRONTEND, web, symlinks=True)
        conf_php = self.path('zabbix.conf.php')
        # Debian's frontend reads /etc/zabbix/zabbix.conf.php (a constant); the copy reads the lab's own file.
        core = os.path.join(web, 'include', 'classes', 'core', 'CConfigFile.php')
        with open(core) as handle:
            text = handle.read()
        if "'/etc/zabbix/zabbix.conf.php'" not in text:
            raise LabError('CConfigFile.php does not name /etc/zabbix/zabbix.conf.php: frontend layout changed')
        with open(core, 'w') as handle:
            handle.write(text.replace("'/etc/zabbix/zabbix.conf.php'", repr(conf_php)))
        with open(conf_php, 'w') as handle:
            handle.write('\n'.join([
                '<?php',
                'global $DB;',
                "$DB['TYPE'] = 'POSTGRESQL';",
                "$DB['SERVER'] = '127.0.0.1';",
                "$DB['PORT'] = '{0}';".format(PG_PORT),
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
                "$ZBX_SERVER_PORT = '{0}';".format(SERVER_PORT),
                "$ZBX_SERVER_NAME = 'zts-e2e';",
                '$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;',
                '']))
        proc = self._popen('php', ['php', '-d', 'memory_limit=512M', '-d', 'max_execution_time=300',
                                   '-d', 'post_max_size=32M', '-S', '127.0.0.1:{0}'.format(API_PORT), '-t', web],
                           self.path('php.log'))
        wait_port(API_PORT, 30, proc, 'php -S', self.path('php.log'))
        self.api = Api('http://127.0.0.1:{0}/api_jsonrpc.php'.format(API_PORT))
        self.api_version = self.api.call('apiinfo.version', auth=False)
        self.api.login()

    # -- agents ------------------------------------------------------------------------------------------
    def start_agent(self, name, port, json_params='"$1" "$2" "$3"', python=None):
        """A private zabbix_agentd with the UserParameter lines the role writes, running the repo's counter."""
        if port not in AGENT_PORTS:
            raise LabError('agent port {0} is outside this lab\'s range {1}'.format(port, AGENT_PORTS))
        if not port_free(port):
            raise LabError('port 127.0.0.1:{0} is already in use'.format(port))
        python = python or sys.executable
        conf = self.path('agent-{0}.conf'.format(name))
        script = '{0} {1}'.format(python, COUNTER)
        with open(conf, 'w') as handle:
            handle.write('\n'.join([
                'PidFile=' + self.path('agent-{0}.pid'.format(name)),
                'LogFile=' + self.path('agent-{0}.log'.format(name)),
                'ListenIP=127.0.0.1', 'ListenPort={0}'.format(port),
                'Server=127.0.0.1,::1', 'Hostname=' + name, 'AllowRoot=1', 'Timeout=10', 'StartAgents=3',
                'UserParameter=tcp.status[*],{0} "$1" "$2" "$3" "$4"'.format(script),
                'UserParameter=tcp.status.json[*],{0} all {1}'.format(script, json_params),
                '']))
        proc = self._popen('agent-' + name, [self.agent_bin, '-f', '-c', conf],
                           self.path('agent-{0}.stdout'.format(name)))
        wait_port(port, 20, proc, 'zabbix_agentd ' + name, self.path('agent-{0}.log'.format(name)))
        return conf

    # -- stop --------------------------------------------------------------------------------------------
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
            # zabbix_server and zabbix_agentd fork workers into the session we gave them: make sure none stays.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        if self.pg_started:
            try:
                self._as_postgres([os.path.join(self.pg_bin, 'pg_ctl'), '-D', self.path('pg'), '-m', 'fast',
                                   '-w', '-t', '60', 'stop'])
                self.pg_started = False
            except subprocess.CalledProcessError as exc:
                errors.append('pg_ctl stop failed: {0}'.format(exc.stdout))
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


def main(argv):
    if argv[1:] != ['up']:
        print(__doc__)
        return 2

    def interrupt(signum, frame):
        raise KeyboardInterrupt()
    # Background jobs ignore SIGINT: SIGTERM stops the lab cleanly as well.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    with Lab() as lab:
        print('Zabbix {0} API at {1} (Admin/zabbix), dir {2}, timings {3}'.format(
            lab.api_version, lab.api.url, lab.dir, lab.timings))
        lab.start_agent('zts-lab-agent', 10060)
        print('agent on 127.0.0.1:10060; Ctrl-C or SIGTERM stops everything')
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
