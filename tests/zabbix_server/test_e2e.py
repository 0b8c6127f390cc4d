"""End to end over the server matrix: real Zabbix servers 5.0, 6.0 and 7.0 receive every TCP state from a real agent
running the repo's counter.

Each server comes from its Debian suite's packages in its own root filesystem (bullseye 5.0.8, bookworm 6.0.14,
trixie 7.0.22; tests/zabbix_server/lab.py and server_images.py), with its own PostgreSQL and frontend API. The
three start at once; the tests then run server after server against one agent setup. The role
zabbix_tcp_status_api imports the template and registers the hosts (community.zabbix on 6.0 and later, the role's
own JSON-RPC tasks before 6.0); the assertions read each server's API:

- the server imports the template format the role picks for it (5.0: the 3.4 XML; 6.0: the 6.0 YAML; 7.0: the
  7.0 YAML), and on 6.0 and 7.0 the 3.4 XML imports too, with the same items, triggers and graph as the YAML;
- a host that already has the recipe's item tcp.status[TIME_WAIT] keeps it (same item, so its history) when
  the template is linked; a second role run changes nothing (with an API token where the server has them, 5.4+;
  on 5.0 a token is refused by the role with a message before any change);
- every state item gets values, all from one agent call, that match `ss` counted at the same time (tolerance
  for churn);
- triggers fire when crossed on purpose: CLOSE_WAIT sockets held open against a lowered macro, and a LISTEN
  minimum set one above the host's real listener count (as ss counts it);
- triggers resolve when the condition is cleared: the CLOSE_WAIT sockets closed, and the LISTEN minimum set to
  the real listener count (a LISTEN value too high never fires, one too low never resolves);
- an agent whose UserParameter names a missing interpreter makes the master item unsupported with the shell's
  message, and the "no data" trigger fires (on 5.0 too);
- per-port monitoring (issue 10): the discovery creates one whole set of items for every port that listens all
  along (on 5.0 the 3.4 XML's agent discovery, and per port an agent item the others depend on); a
  never-accepting listener (backlog 2, six clients) has the accept queue and backlog ss shows (3 of 2), state
  counts equal to `ss ... '( sport = :P )'`, and its clients' remote port (set as {$TCP.PORT.REMOTE}) the
  ESTABLISHED count of `dport = :P`; its accept-queue trigger fires and resolves once the listener accepts, and
  the items of one port share one clock (one agent call); the held CLOSE_WAIT sockets fire the per-port
  CLOSE_WAIT trigger prototype on their port (5.0 too); when the listener closes, its items go at the next
  discovery (lifetime 0 through the host macro {$TCP.PORT.LIFETIME});
- on 7.0 (lab.PICTURES_VERSION), after about three minutes of a load that moves the lines, the frontend draws the
  state graph and the host's template dashboard as PNGs (ZTS_E2E_PICTURES=docs/pictures copies them there).

The agent under test is this machine's system agent on 10050, configured once by `ansible-playbook playbook.yml`
while holding /tmp/zts-system-agent.lock for the whole matrix. When the role cannot run (the playbook fails
--syntax-check, or the run fails), the test FAILS: it never falls back to anything else. The broken agent is a
private zabbix_agentd (127.0.0.1:10061) with the role's own UserParameter file (zabbix/role_items.py) pointing
at a missing interpreter.

ZTS_E2E_AGENT=private is an explicit opt-in for working on the lab itself, NOT a test of the role: a private
zabbix_agentd on 127.0.0.1:10060 with the role's UserParameter file running the counter from the repository.
ZTS_E2E_VERSIONS=6.0,7.0 runs part of the matrix; ZTS_E2E_KEEP=1 keeps the servers' logs.

Needs root (debootstrap, namespaces, mounts). About 7 minutes warm (2 min 50 s more cold: the three images
build in parallel).
"""

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import yaml

import lab as lablib
from ss_oracle import ss_state_counts
from zabbix import build_templates, role_items

REPO = lablib.REPO
TEMPLATE = 'TCP connection states'
STATES = role_items.states()
MASTER_KEY = role_items.item('states')['key']
GOOD_HOST = 'zts-e2e-agent'
BROKEN_HOST = 'zts-e2e-broken'
PRIVATE_PORT = 10060
BROKEN_PORT = 10061
SYSTEM_PORT = 10050
LOCK = '/tmp/zts-system-agent.lock'
BIN = os.path.dirname(sys.executable)
MATRIX = [v for v in os.environ.get('ZTS_E2E_VERSIONS', ','.join(sorted(lablib.VERSIONS))).split(',') if v]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the Zabbix labs need root (debootstrap, namespaces)')


def log(msg):
    sys.stderr.write('[e2e {0}] {1}\n'.format(time.strftime('%H:%M:%S'), msg))


def at_least(lab, version):
    return lablib.version_tuple(lab.api_version) >= lablib.version_tuple(version)


def role_ready():
    """The lead's role can configure the system agent: tasks exist and the playbook passes --syntax-check."""
    if not os.path.exists(os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'tasks', 'main.yml')):
        return False, 'roles/zabbix_tcp_status/tasks/main.yml does not exist'
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), 'playbook.yml', '--syntax-check'], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        return False, 'ansible-playbook playbook.yml --syntax-check failed: ' + proc.stdout[-500:]
    return True, 'ready'


def agent_mode():
    """'system' (the default: the role configures the system agent), or 'private' only when asked for by name.
    Fails when the role cannot run: there is no fallback."""
    wanted = os.environ.get('ZTS_E2E_AGENT', 'system')
    if wanted not in ('system', 'private'):
        pytest.fail('ZTS_E2E_AGENT must be system (the default) or private (the lab alone, NOT a test of the '
                    'role), not {0!r}'.format(wanted))
    if wanted == 'private':
        log('WARNING: ZTS_E2E_AGENT=private: a lab agent, not configured by the role; the role is NOT tested')
        return 'private', 'ZTS_E2E_AGENT=private (the role is NOT tested)'
    ready, why = role_ready()
    if not ready:
        pytest.fail('the role cannot run, so the end-to-end test fails: ' + why)
    return 'system', why


def run_playbook(args, inventory=None, cwd=REPO, check=True):
    argv = [os.path.join(BIN, 'ansible-playbook')] + (['-i', inventory] if inventory else []) + args
    start = time.time()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=dict(os.environ, ANSIBLE_FORCE_COLOR='0', ANSIBLE_NOCOLOR='1'))
    took = time.time() - start
    log('ansible-playbook {0}: rc={1} in {2:.1f}s'.format(' '.join(args), proc.returncode, took))
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:]
    recap = dict((m.group(1), dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', m.group(2))))
                 for m in re.finditer(r'^(\S+)\s+:\s+(ok=.*)$', proc.stdout, re.M))
    return proc.stdout, recap, proc.returncode


def changed_tasks(out):
    """The tasks of an ansible-playbook output that reported a change, with the hosts."""
    found, task = [], None
    for line in out.splitlines():
        match = re.match(r'^TASK \[(.*)\]', line)
        if match:
            task = match.group(1)
        elif line.startswith('changed: '):
            found.append((task, line.split(']')[0] + ']'))
    return found


class SsSampler(threading.Thread):
    """Counts `ss -Htan` states once a second, with timestamps, while the test reads values from Zabbix."""

    def __init__(self):
        threading.Thread.__init__(self, daemon=True)
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            counts = Counter(ss_state_counts())
            self.samples.append((time.time(), counts))
            self.halt.wait(1)

    def around(self, clock, slack=2.0):
        return [c for t, c in self.samples if clock - slack <= t <= clock + slack]


def wait_for(what, func, timeout, step=2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = func()
        if last:
            return last
        time.sleep(step)
    pytest.fail('timed out after {0}s waiting for {1}; last answer: {2!r}'.format(timeout, what, last))


# ------------------------------------------------------------------------------------------------------------
# Fixtures: the lab, the agents, the registration


@pytest.fixture(scope='module')
def mode():
    """Decided before the labs start, so that a role that cannot run fails the test at once."""
    return agent_mode()


@pytest.fixture(scope='module')
def servers(mode):
    """Every server of the matrix, started at once (image builds and schema loads overlap)."""
    start = time.time()
    # ZTS_E2E_KEEP=1 keeps each lab's directory (server, PHP, PostgreSQL and boot logs) after it stops.
    labs, errors = lablib.start_all(MATRIX, keep=os.environ.get('ZTS_E2E_KEEP') == '1')
    for version, one in sorted(labs.items()):
        log('Zabbix {0} up: image {1} (built in {2:.0f}s this run), boot {3}'.format(
            one.api_version, one.image['versions'], one.timings['image_build'], one.boot_steps()))
    for version, error in sorted(errors.items()):
        log('Zabbix {0} did not start: {1}'.format(version, error))
    log('matrix up in {0:.0f}s'.format(time.time() - start))
    yield labs, errors
    for one in labs.values():
        problems = one.stop()
        assert not problems, problems
    log('servers stopped' + (' (logs kept)' if os.environ.get('ZTS_E2E_KEEP') == '1' else ''))


@pytest.fixture(scope='module')
def agents(servers, mode):
    """The port of the agent under test, configured once for every server; holds the system agent's lock."""
    mode, why = mode
    log('agent under test: {0} ({1})'.format(mode, why))
    lock = None
    was_running = None
    private = lablib.Agents(keep=os.environ.get('ZTS_E2E_KEEP') == '1')
    try:
        if mode == 'system':
            lock = open(LOCK, 'a')
            fcntl.flock(lock, fcntl.LOCK_EX)
            was_running = not lablib.port_free(SYSTEM_PORT)
            run_playbook(['playbook.yml'])
            port = SYSTEM_PORT
        else:
            private.start_agent(GOOD_HOST, PRIVATE_PORT, role_items.userparameter_conf(
                '{0} {1}'.format(sys.executable, lablib.COUNTER)).splitlines())
            port = PRIVATE_PORT
        # The role's own UserParameter file on an agent whose interpreter is missing: the agent answers the
        # shell's error line instead of JSON.
        private.start_agent(BROKEN_HOST, BROKEN_PORT, role_items.userparameter_conf(
            '{0} {1}'.format(private.path('missing', 'python3'), lablib.COUNTER)).splitlines())
        yield {'mode': mode, 'port': port}
    finally:
        errors = private.stop()
        if lock is not None:
            if not was_running and not lablib.port_free(SYSTEM_PORT):
                # The role started the system agent for this test: stop it again (init script, no systemd here).
                subprocess.run(['/etc/init.d/zabbix-agent', 'stop'], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
        assert not errors, errors


@pytest.fixture(scope='module', params=MATRIX, ids=['zabbix-' + v for v in MATRIX])
def lab(request, servers, agents):
    labs, errors = servers
    if request.param not in labs:
        pytest.fail('Zabbix {0} did not start: {1}'.format(request.param, errors.get(request.param)))
    return labs[request.param]


@pytest.fixture(scope='module')
def inventory(lab, agents):
    api = {
        'zabbix_tcp_status_api_server': '127.0.0.1',
        'zabbix_tcp_status_api_port': lab.api_port,
        'zabbix_tcp_status_api_use_ssl': False,
        'zabbix_tcp_status_api_url_path': '',
        'zabbix_tcp_status_api_user': 'Admin',
        'zabbix_tcp_status_api_password': 'zabbix',
    }
    host = {'ansible_connection': 'local', 'ansible_python_interpreter': '{{ ansible_playbook_python }}',
            'zabbix_tcp_status_api_interface_ip': '127.0.0.1'}
    data = {'zabbix_agents': {'vars': api, 'hosts': {
        GOOD_HOST: dict(host, zabbix_tcp_status_api_interface_port=agents['port'], zabbix_tcp_status_api_host_macros=[
            {'macro': '{$TCP.STATUS.INTERVAL}', 'value': '10s'}] + PORT_MACROS),
        BROKEN_HOST: dict(host, zabbix_tcp_status_api_interface_port=BROKEN_PORT, zabbix_tcp_status_api_host_macros=[
            {'macro': '{$TCP.STATUS.INTERVAL}', 'value': '10s'},
            {'macro': '{$TCP.STATUS.NODATA}', 'value': '30s'}]),
    }}}
    path = lab.share('inventory.yml')
    with open(path, 'w') as handle:
        yaml.safe_dump(data, handle)
    return path


# The per-port part on the lab's time scale: counted every 10 s, a port's items removed at the first discovery that
# misses it (lifetime 0), the accept-queue trigger judging 20 s.
PORT_MACROS = [{'macro': '{$TCP.PORT.INTERVAL}', 'value': '10s'}, {'macro': '{$TCP.PORT.LIFETIME}', 'value': '0'},
               {'macro': '{$TCP.PORT.QUEUE.PERIOD}', 'value': '20s'}]
# The template's own items (the discovered ones come on top, per port).
TEMPLATE_ITEMS = 1 + len(STATES) + 1 + 3


def template_shape(api):
    """Items, triggers and graph of the template as the server holds them (comparable across imports)."""
    tpl = api.call('template.get', {'filter': {'host': TEMPLATE}, 'output': ['templateid']})
    assert len(tpl) == 1, tpl
    tid = tpl[0]['templateid']
    items = api.call('item.get', {'templateids': tid, 'output': ['key_', 'type', 'value_type', 'delay',
                                                                 'master_itemid', 'itemid'],
                                  'selectPreprocessing': ['type', 'params']})
    keys = dict((i['itemid'], i['key_']) for i in items)
    shape_items = sorted((i['key_'], i['type'], i['value_type'], keys.get(i['master_itemid'], ''),
                          tuple(p['params'] for p in i['preprocessing'] if p['type'] == '12'))
                         for i in items)
    master_steps = [[p['type'] for p in i['preprocessing']] for i in items if i['key_'] == MASTER_KEY]
    triggers = sorted((t['description'], t['expression'], t['priority']) for t in api.call(
        'trigger.get', {'templateids': tid, 'output': ['description', 'expression', 'priority'],
                        'expandExpression': True}))
    graphs = api.call('graph.get', {'templateids': tid, 'output': ['name', 'graphtype'],
                                    'selectGraphItems': ['itemid']})
    macros = sorted(m['macro'] for m in api.call('usermacro.get', {'hostids': tid, 'output': ['macro']}))
    rules = dict((r['key_'], r['type']) for r in api.call('discoveryrule.get', {'templateids': tid,
                                                                                 'output': ['key_', 'type']}))
    return {'templateid': tid, 'items': shape_items, 'triggers': triggers, 'macros': macros, 'rules': rules,
            'master_steps': master_steps[0] if master_steps else None,
            'graphs': [(g['name'], g['graphtype'], len(g['gitems'])) for g in graphs]}


@pytest.fixture(scope='module')
def registered(lab, agents, inventory):
    api = lab.api
    found = {'version': lab.api_version}
    if at_least(lab, '6.0'):
        # 1. The 3.4 XML through the role (format xml, template only), kept for comparison, then removed.
        run_playbook(['playbook-register.yml', '-e', 'zabbix_tcp_status_api_template_format=xml',
                      '-e', 'zabbix_tcp_status_api_register_host=false'], inventory)
        found['xml'] = template_shape(api)
        api.call('template.delete', [found['xml']['templateid']])
    # 2. A host set up the recipe's way: an agent item tcp.status[TIME_WAIT] clicked together in the web UI.
    group = api.call('hostgroup.get', {'filter': {'name': 'Linux servers'}, 'output': ['groupid']})[0]['groupid']
    hostid = api.call('host.create', {
        'host': GOOD_HOST, 'groups': [{'groupid': group}],
        'interfaces': [{'type': 1, 'main': 1, 'useip': 1, 'ip': '127.0.0.1', 'dns': '',
                        'port': str(agents['port'])}]})['hostids'][0]
    iface = api.call('hostinterface.get', {'hostids': hostid, 'output': ['interfaceid']})[0]['interfaceid']
    found['seed_itemid'] = api.call('item.create', {
        'hostid': hostid, 'name': 'TIME_WAIT', 'key_': 'tcp.status[TIME_WAIT]', 'type': 0, 'value_type': 3,
        'delay': '1m', 'interfaceid': iface})['itemids'][0]
    # 3. The real registration: the format the role picks for this server, both hosts, host macros, password.
    found['out'], found['recap'], _ = run_playbook(['playbook-register.yml'], inventory)
    found['shape'] = template_shape(api)
    secrets = lab.share('secrets.yml')
    if at_least(lab, '5.4'):
        # 4. Again with an API token instead of the password (given as extra vars, the way a vault file would):
        #    nothing may change, and the token must not show in the output.
        tokenid = api.call('token.create', {'name': 'zts-e2e', 'userid': '1'})['tokenids'][0]
        found['token'] = api.call('token.generate', [tokenid])[0]['token']
        with open(secrets, 'w') as handle:
            yaml.safe_dump({'zabbix_tcp_status_api_token': found['token'], 'zabbix_tcp_status_api_user': '',
                            'zabbix_tcp_status_api_password': ''}, handle)
        found['out2'], found['recap2'], _ = run_playbook(['playbook-register.yml', '-e', '@' + secrets, '-v'],
                                                         inventory)
    else:
        # 4. A server without API tokens: a token is refused before anything is asked of the server, and
        #    the password run again changes nothing.
        found['token'] = '0123456789abcdef' * 4
        with open(secrets, 'w') as handle:
            yaml.safe_dump({'zabbix_tcp_status_api_token': found['token'], 'zabbix_tcp_status_api_user': '',
                            'zabbix_tcp_status_api_password': ''}, handle)
        found['refused'] = run_playbook(['playbook-register.yml', '-e', '@' + secrets], inventory, check=False)
        found['out2'], found['recap2'], _ = run_playbook(['playbook-register.yml', '-v'], inventory)
    return found


def _close_wait_sockets(count):
    """count server-side sockets in CLOSE_WAIT: accepted, the client closes, the server never does."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(('127.0.0.1', 0))
    listener.listen(count + 8)
    clients = []
    for _ in range(count):
        client = socket.create_connection(listener.getsockname(), timeout=5)
        clients.append(client)
    accepted = [listener.accept()[0] for _ in range(count)]
    for client in clients:
        client.close()
    return listener, accepted


@pytest.fixture(scope='module')
def held_sockets(lab):
    """Sockets in states other than ESTABLISHED/TIME_WAIT/LISTEN while values are compared with ss: 40 server
    sides in CLOSE_WAIT and their 40 orphaned client sides in FIN_WAIT2 (until tcp_fin_timeout)."""
    listener, accepted = _close_wait_sockets(40)
    yield
    for sock in accepted:
        sock.close()
    listener.close()


def host_items(api, host):
    return dict((i['key_'], i) for i in api.call('item.get', {
        'host': host, 'output': ['itemid', 'key_', 'lastvalue', 'lastclock', 'state', 'error', 'templateid',
                                 'type', 'value_type']}))


# ------------------------------------------------------------------------------------------------------------
# Tests


def test_template_imports_in_the_format_the_role_picks(lab, registered):
    shape = registered['shape']
    assert len(shape['items']) == TEMPLATE_ITEMS and len(shape['triggers']) == 6
    assert shape['graphs'] == [(TEMPLATE, '1', 11)]
    assert sorted(shape['rules']) == sorted(build_templates.PORT_SIDES_BY_NAME[side]['rule_key']
                                            for side in ('local', 'remote'))
    # The master's first step tells the file: 18 "check for error using regular expression" (the YAML),
    # 5 "regular expression" (the 3.4 XML, which has no validation steps).
    assert shape['master_steps'] == (['18'] if at_least(lab, '6.0') else ['5'])
    if 'xml' not in registered:
        return
    xml = registered['xml']
    # Same keys, types, value types, masters and JSONPaths; the master's check step differs by design (3.4 has
    # no validation steps), so only JSONPath steps are compared.
    assert xml['items'] == shape['items']
    # The 3.4 expressions, converted by the server, are the YAML's expressions, but for the "no data" trigger:
    # the YAML's master keeps no history, so its nodata() reads a state item.
    nodata = build_templates.NODATA_STATE
    assert sorted(t[1].replace('/{0}/{1},'.format(TEMPLATE, MASTER_KEY),
                               '/{0}/tcp.status[{1}],'.format(TEMPLATE, nodata)) for t in xml['triggers']) == \
        sorted(t[1] for t in shape['triggers'])
    assert xml['macros'] == shape['macros'] and xml['graphs'] == shape['graphs']
    # The same discovery rules: agent rules on the discovery key there (3.4 has no dependent discovery).
    assert sorted(xml['rules']) == sorted(shape['rules']) and set(xml['rules'].values()) == {'0'}
    assert set(shape['rules'].values()) == {'18'}


def test_registration_links_both_hosts_and_is_idempotent(lab, registered):
    for host in (GOOD_HOST, BROKEN_HOST):
        found = lab.api.call('host.get', {'filter': {'host': host}, 'selectParentTemplates': ['host'],
                                          'output': ['hostid']})
        assert len(found) == 1 and [t['host'] for t in found[0]['parentTemplates']] == [TEMPLATE], found
        assert set(item[0] for item in registered['shape']['items']) <= set(host_items(lab.api, host))
        macros = lab.api.call('usermacro.get', {'hostids': found[0]['hostid'], 'output': ['macro', 'value']})
        assert {'macro': '{$TCP.STATUS.INTERVAL}', 'value': '10s'} in [
            dict(macro=m['macro'], value=m['value']) for m in macros], macros
    for host, counts in registered['recap2'].items():
        assert counts['changed'] == 0 and counts['failed'] == 0, (host, changed_tasks(registered['out2']),
                                                                  registered['out2'][-3000:])
    assert registered['recap'][GOOD_HOST]['changed'] > 0
    # The second run, at -v: every API task under no_log.
    assert 'the output has been hidden' in registered['out2']
    if 'refused' in registered:
        out, recap, code = registered['refused']
        assert code != 0 and 'API tokens need Zabbix 5.4 or later' in out, out[-3000:]
        assert registered['token'] not in out
        assert all(counts['changed'] == 0 for counts in recap.values()), recap
    else:
        # user and password emptied: the token did the work, and never shows.
        assert registered['token'] not in registered['out2']


def test_recipe_item_is_kept_when_the_template_is_linked(lab, registered):
    item = host_items(lab.api, GOOD_HOST)['tcp.status[TIME_WAIT]']
    assert item['itemid'] == registered['seed_itemid'], 'the recipe\'s item was replaced: its history is lost'
    assert item['templateid'] != '0' and item['type'] == '18'


def test_every_state_arrives_and_matches_ss(lab, registered, held_sockets):
    sampler = SsSampler()
    sampler.start()
    started = time.time()
    try:
        state_keys = ['tcp.status[{0}]'.format(state) for state in STATES]

        def fresh():
            items = host_items(lab.api, GOOD_HOST)
            new = [k for k in state_keys if int(items[k]['lastclock'] or 0) >= started + 1]
            return items if len(new) == len(state_keys) else None
        items = wait_for('values newer than the sampler start for all {0} state items'.format(len(STATES)),
                         fresh, 150)
        took = time.time() - started
        log('all {0} state items fresh {1:.0f}s after the host macros were applied'.format(len(STATES), took))
        # One agent call feeds them all: the latest values of the eleven items share one clock (the master's).
        clocks = set(items[k]['lastclock'] for k in state_keys)
        assert len(clocks) == 1, dict((k, items[k]['lastclock']) for k in state_keys)
        master = items[MASTER_KEY]
        if master['lastvalue']:
            # The 3.4 XML keeps the master's value for an hour (the YAML keeps none: the guidelines).
            assert sorted(json.loads(master['lastvalue'])) == sorted(STATES)
        else:
            assert at_least(lab, '6.0'), 'the master item of the 3.4 XML keeps history: where is its value?'
        mismatches = []
        for state in STATES:
            item = items['tcp.status[{0}]'.format(state)]
            assert item['state'] == '0', (state, item['error'])
            value, clock = int(item['lastvalue']), int(item['lastclock'])
            around = [s[state] for s in sampler.around(clock)]
            assert around, 'no ss sample around {0}'.format(clock)
            low, high = min(around), max(around)
            tolerance = max(5, int(0.1 * high))
            if not (low - tolerance <= value <= high + tolerance):
                mismatches.append((state, value, low, high, tolerance))
        log('ss comparison: {0}'.format(dict((s, items['tcp.status[{0}]'.format(s)]['lastvalue'])
                                              for s in STATES)))
        assert not mismatches, 'state, Zabbix value, ss min, ss max, tolerance: {0}'.format(mismatches)
        assert int(items['tcp.status[CLOSE_WAIT]']['lastvalue']) >= 40
    finally:
        sampler.halt.set()
        sampler.join(5)


def trigger_name(lab, trigger_id, port=None):
    """A trigger's name as the file the role imported on this server writes it: the 3.4 XML keeps the first
    published names (its importer matches triggers by name) and names the per-port trigger prototypes by their
    event names (3.4 has none); a per-port trigger's with ``port`` for {#PORT} (user macros left as written)."""
    if port is None:
        trigger = build_templates.TRIGGERS_BY_ID[trigger_id]
        return trigger['name'] if at_least(lab, '6.0') else trigger['name_34']
    trigger = build_templates.PORT_TRIGGERS_BY_ID[trigger_id]
    return trigger['name' if at_least(lab, '6.0') else 'event_name'].replace('{#PORT}', str(port))


def _problems(api, host):
    # Names as written in the template (macros unexpanded: do not pass expandDescription, even as false).
    return dict((t['description'], t) for t in api.call('trigger.get', {
        'host': host, 'filter': {'value': 1}, 'output': ['description', 'value', 'lastchange']}))


def _set_host_macros(api, host, macros):
    hostid = api.call('host.get', {'filter': {'host': host}, 'output': ['hostid']})[0]['hostid']
    existing = dict((m['macro'], m['hostmacroid']) for m in api.call(
        'usermacro.get', {'hostids': hostid, 'output': ['macro', 'hostmacroid']}))
    for macro, value in macros.items():
        if macro in existing:
            api.call('usermacro.update', {'hostmacroid': existing[macro], 'value': value})
        else:
            api.call('usermacro.create', {'hostid': hostid, 'macro': macro, 'value': value})


def test_triggers_fire_when_crossed_and_resolve_when_cleared(lab, registered, held_sockets):
    api = lab.api
    held = 60
    base = int(host_items(api, GOOD_HOST)['tcp.status[CLOSE_WAIT]']['lastvalue'])
    # The host's real listeners, as ss counts them. The LISTEN trigger fires when every value of the period is
    # below {$TCP.LISTEN.MIN}: set one above the real count it must fire, set to the real count it must resolve.
    # A value too high never fires, a value too low never resolves.
    close_wait, few_listen = trigger_name(lab, 'close_wait'), trigger_name(lab, 'listen')
    listener, accepted = _close_wait_sockets(held)
    try:
        listen = ss_state_counts().get('LISTEN', 0)
        log('ss counts {0} listening sockets, Zabbix last said {1}'.format(
            listen, host_items(api, GOOD_HOST)['tcp.status[LISTEN]']['lastvalue']))
        _set_host_macros(api, GOOD_HOST, {
            '{$TCP.CLOSE_WAIT.MAX}': str(base + held // 2), '{$TCP.CLOSE_WAIT.PERIOD}': '25s',
            '{$TCP.LISTEN.MIN}': str(listen + 1), '{$TCP.LISTEN.PERIOD}': '25s'})
        start = time.time()

        # The held sockets' port crosses the per-port CLOSE_WAIT threshold too (50; the trigger prototype, on its
        # discovered port).
        port_close_wait = trigger_name(lab, 'port_close_wait', listener.getsockname()[1])

        def fired():
            names = list(_problems(api, GOOD_HOST))
            return names if all(any(n.startswith(w) for n in names)
                                for w in (close_wait, few_listen, port_close_wait)) else None
        names = wait_for('CLOSE_WAIT (host and port) and LISTEN triggers in problem state', fired, 150, step=3)
        log('triggers fired {0:.0f}s after crossing: {1}'.format(time.time() - start, names))
        # The other thresholds were not crossed.
        assert not any(n.startswith(trigger_name(lab, 'time_wait')) or n.startswith(trigger_name(lab, 'syn_recv'))
                       for n in names)
    finally:
        for sock in accepted:
            sock.close()
        listener.close()
    # Cleared: the CLOSE_WAIT sockets are gone (their listener too), and the minimum is the real listener count.
    listen = ss_state_counts().get('LISTEN', 0)
    _set_host_macros(api, GOOD_HOST, {'{$TCP.LISTEN.MIN}': str(listen)})
    start = time.time()

    def resolved():
        names = list(_problems(api, GOOD_HOST))
        return ['resolved'] if not any(n.startswith(w) for n in names
                                       for w in (close_wait, few_listen, port_close_wait)) else None
    wait_for('CLOSE_WAIT and LISTEN triggers to resolve (LISTEN minimum {0})'.format(listen), resolved, 150, step=3)
    log('triggers resolved {0:.0f}s after clearing'.format(time.time() - start))


def test_script_error_makes_master_unsupported_and_nodata_fires(lab, registered):
    api = lab.api

    def unsupported():
        items = host_items(api, BROKEN_HOST)
        master = items[MASTER_KEY]
        return items if master['state'] == '1' and master['error'] else None
    items = wait_for('the broken host\'s master item to turn unsupported', unsupported, 120)
    error = items[MASTER_KEY]['error']
    log('master item error on {0}: {1}'.format(lab.api_version, error))
    # The agent answers the shell's line for the missing interpreter ("sh: 1: .../missing/python3: not found").
    assert 'missing/python3' in error and 'not found' in error, error
    if at_least(lab, '6.0'):
        # The YAML's check: Preprocessing failed for: <value>\n1. Failed: <the check's output>
        assert '1. Failed: tcp_status script did not return JSON: sh: ' in error, error
    else:
        # The 3.4 XML's regular expression only matches a JSON object.
        assert 'pattern does not match' in error, error
    # The error text never reaches the JSONPath steps: the state items simply get no values.
    assert all(items['tcp.status[{0}]'.format(s)]['lastclock'] == '0' for s in STATES)
    start = time.time()

    def fired():
        names = list(_problems(api, BROKEN_HOST))
        return names if trigger_name(lab, 'nodata') in names else None
    names = wait_for('the no-data trigger on the broken host', fired, 150, step=3)
    log('no-data trigger fired {0:.0f}s after the item turned unsupported: {1}'.format(time.time() - start, names))


# ------------------------------------------------------------------------------------------------------------
# Per-port monitoring (issue 10): discovery, values against ss per port, the accept-queue trigger, the lifetime

COUNT_KEY = role_items.item('count')['key']
PORT_ITEM_RE = re.compile(r'^' + re.escape(COUNT_KEY) + r'(?:\[([A-Z_0-9]+),(\d+)\]|\.(queue|backlog)\[(\d+)\])$')


def ss_port(state, port, side='sport'):
    """Sockets in state on a local (sport) or remote (dport) port, as `ss -Htan state X '( sport = :P )'` counts
    them (ss names SYN_RECV syn-recv and so on)."""
    out = subprocess.run(['ss', '-Htan', 'state', state.lower().replace('_', '-'),
                          '( {0} = :{1} )'.format(side, port)], stdout=subprocess.PIPE, universal_newlines=True,
                         check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def ss_listen_queue(port):
    """(Recv-Q, Send-Q) of the listener on port, from `ss -Hltn`: its accept queue and backlog."""
    out = subprocess.run(['ss', '-Hltn', '( sport = :{0} )'.format(port)], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout.split()
    return int(out[1]), int(out[2])


def ss_listening_ports():
    out = subprocess.run(['ss', '-Hltn'], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    return set(int(line.split()[3].rsplit(':', 1)[1]) for line in out.splitlines() if line.strip())


def port_items(items):
    """{port: {key: item}} of the host's discovered local-port items."""
    found = {}
    for key, item in items.items():
        match = PORT_ITEM_RE.match(key)
        if match:
            found.setdefault(int(match.group(2) or match.group(4)), {})[key] = item
    return found


class FullQueue(object):
    """A listener with a backlog of 2 whose application never calls accept(): 3 connections fill its accept queue
    (Linux queues backlog + 1), the next ones wait in SYN_SENT (their SYNs are dropped and retried). accept_all()
    turns it into a listener that accepts everything, as a recovered application would."""

    def __init__(self, clients=6):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(2)
        self.port = self.listener.getsockname()[1]
        self.clients = []
        self.accepted = []
        self.halt = threading.Event()
        self.thread = None
        for _ in range(clients):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            client.connect_ex(('127.0.0.1', self.port))
            self.clients.append(client)

    def accept_all(self):
        self.listener.settimeout(0.2)

        def run():
            while not self.halt.is_set():
                try:
                    self.accepted.append(self.listener.accept()[0])
                except (socket.timeout, OSError):
                    pass
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self):
        self.halt.set()
        if self.thread:
            self.thread.join(5)
        for sock in self.clients + self.accepted + [self.listener]:
            sock.close()


def test_ports_discovered_values_match_ss_queue_trigger_and_lifetime(lab, registered, held_sockets):
    """Discovery creates one set of items per listening port; the values of a never-accepting listener's port
    (and of its clients' remote port) match ss; its accept-queue trigger fires and resolves when it accepts; when
    it stops listening its items go at the next discovery (lifetime 0)."""
    api = lab.api
    before = ss_listening_ports()
    full = FullQueue()
    start = time.time()
    try:
        # Its clients' side: the remote port list of the remote discovery.
        _set_host_macros(api, GOOD_HOST, {'{$TCP.PORT.REMOTE}': str(full.port)})
        wanted = COUNT_KEY + '.queue[{0}]'.format(full.port)
        remote_key = '{0}[ESTABLISHED,,{1}]'.format(COUNT_KEY, full.port)

        def discovered():
            items = host_items(api, GOOD_HOST)
            ready = all(int(items.get(k, {}).get('lastclock') or 0) > start for k in (wanted, remote_key))
            return items if ready else None
        items = wait_for('the discovered items of port {0} with values'.format(full.port), discovered, 120)
        log('port {0} discovered with values {1:.0f}s after it started listening'.format(full.port,
                                                                                          time.time() - start))
        # Every port that listened all along has its items (the discovery that saw the new port may be older than
        # a port that started just before the test: wait for the next one), and every discovered port has one
        # whole set.
        steady = before & ss_listening_ports()

        def all_steady():
            found = host_items(api, GOOD_HOST)
            return found if steady <= set(port_items(found)) else None
        items = wait_for('items for every port listening all along: {0}'.format(sorted(steady)), all_steady, 30)
        ports = port_items(items)
        prototypes = [row[0] for row in build_templates.port_item_prototypes('local')]
        for port, found in ports.items():
            assert sorted(found) == sorted(k.replace('{#PORT}', str(port)) for k in prototypes), port
        log('{0} listening ports discovered, {1} items each'.format(len(ports), len(prototypes)))
        # The full queue, as ss sees it, and as Zabbix got it (the items of a port read one agent answer).
        queue, backlog = ss_listen_queue(full.port)
        assert (queue, backlog) == (3, 2), (queue, backlog)
        mine = ports[full.port]
        assert int(mine[COUNT_KEY + '.queue[{0}]'.format(full.port)]['lastvalue']) == queue
        assert int(mine[COUNT_KEY + '.backlog[{0}]'.format(full.port)]['lastvalue']) == backlog
        # One agent answer feeds them (the backlog keeps only changes, with a heartbeat: its clock is older), on 5.0
        # the 3.4 XML's per-port master item.
        assert len(set(item['lastclock'] for key, item in mine.items() if '.backlog[' not in key)) == 1
        for key, item in mine.items():
            match = PORT_ITEM_RE.match(key)
            if match.group(1):
                assert item['state'] == '0', (key, item['error'])
                assert int(item['lastvalue']) == ss_port(match.group(1), full.port), (key, item['lastvalue'])
        assert int(mine['{0}[ESTABLISHED,{1}]'.format(COUNT_KEY, full.port)]['lastvalue']) == 3
        assert int(items[remote_key]['lastvalue']) == ss_port('ESTABLISHED', full.port, 'dport') == 3
        # The 40 held CLOSE_WAIT sockets: on their listener's port.
        held = [p for p, found in ports.items()
                if int(found.get('{0}[CLOSE_WAIT,{1}]'.format(COUNT_KEY, p), {}).get('lastvalue') or 0) >= 40]
        assert held and all(ss_port('CLOSE_WAIT', p) >= 40 for p in held), held
        for key in (COUNT_KEY + '.listen_overflows', COUNT_KEY + '.listen_drops'):
            assert items[key]['state'] == '0' and float(items[key]['lastvalue'] or 0) >= 0, items[key]
        name = trigger_name(lab, 'port_queue', full.port)
        fired = wait_for('the accept-queue trigger of port {0}'.format(full.port),
                         lambda: [n for n in _problems(api, GOOD_HOST) if n == name], 90, step=3)
        log('accept-queue trigger fired {0:.0f}s after the queue filled: {1}'.format(time.time() - start, fired))
        drops = host_items(api, GOOD_HOST)[COUNT_KEY + '.listen_overflows']
        log('ListenOverflows per second while the queue is full: {0}'.format(drops['lastvalue']))
        full.accept_all()
        cleared = time.time()
        wait_for('the accept-queue trigger of port {0} to resolve'.format(full.port),
                 lambda: ['resolved'] if name not in _problems(api, GOOD_HOST) else None, 90, step=3)
        log('accept-queue trigger resolved {0:.0f}s after the listener accepted (queue {1})'.format(
            time.time() - cleared, ss_listen_queue(full.port)[0]))
    finally:
        full.stop()
    gone = time.time()

    def removed():
        return ['gone'] if full.port not in port_items(host_items(api, GOOD_HOST)) else None
    wait_for('the items of port {0} to go (lifetime 0) after it stopped listening'.format(full.port), removed, 90,
             step=3)
    log('port {0}: items removed {1:.0f}s after it stopped listening'.format(full.port, time.time() - gone))


# ------------------------------------------------------------------------------------------------------------
# Pictures: the frontend of the real server draws what a user gets, after a few minutes of real values


PICTURES = {'graph': 'tcp-connection-states-graph.png', 'dashboard': 'tcp-connection-states-dashboard.png'}
# ZTS_E2E_PICTURES=docs/pictures copies the rendered PNGs there (to refresh the committed set); by default they
# stay in the lab's directory and are only checked.
PICTURES_DIR = os.environ.get('ZTS_E2E_PICTURES', '')


LOAD_PORT = 1500


class Load(object):
    """Moves the lines: connections opened and held (ESTABLISHED), closed by this side first (TIME_WAIT), and a
    leak that accepts connections the peer closes and never closes them (CLOSE_WAIT, growing)."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # A port whose graph comes first in the dashboard's per-port widget (graphs in natural name order).
            self.listener.bind(('127.0.0.1', LOAD_PORT))
        except OSError:
            self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(512)
        self.address = self.listener.getsockname()
        self.held = []
        self.leaked = []

    def _pair(self):
        client = socket.create_connection(self.address, timeout=5)
        server = self.listener.accept()[0]
        return client, server

    def open(self, count):
        for _ in range(count):
            self.held.append(self._pair())

    def close_held(self, count):
        """This side closes first: the client ends in TIME_WAIT for 60 s, the server side is gone."""
        for _ in range(min(count, len(self.held))):
            client, server = self.held.pop()
            client.close()
            time.sleep(0.001)
            server.close()

    def churn(self, count):
        """Short connections, each closed by the client first: TIME_WAIT."""
        for _ in range(count):
            client, server = self._pair()
            client.close()
            server.close()

    def leak(self, count):
        """The peer closes, the application never does: CLOSE_WAIT (and the peer's FIN_WAIT2 for a minute)."""
        for _ in range(count):
            client, server = self._pair()
            client.close()
            self.leaked.append(server)

    def stop(self):
        for client, server in self.held:
            client.close()
            server.close()
        for server in self.leaked:
            server.close()
        self.listener.close()


def png_size(path):
    """(width, height) from a PNG's IHDR; fails on anything that is not a PNG."""
    with open(path, 'rb') as handle:
        head = handle.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR', '{0} is not a PNG'.format(path)
    return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')


def test_pictures_of_graph_and_dashboard(lab, registered):
    """After about three minutes of real values under a load that moves the lines (and fires the CLOSE_WAIT
    trigger), the frontend draws the state graph (chart2.php, as a logged-in user) and the host's template
    dashboard (Debian's headless chromium, signed in as well)."""
    if lab.version != lablib.PICTURES_VERSION:
        pytest.skip('the pictures are taken on Zabbix {0} (the image with chromium)'.format(lablib.PICTURES_VERSION))
    api = lab.api
    hostid = api.call('host.get', {'filter': {'host': GOOD_HOST}, 'output': ['hostid']})[0]['hostid']
    base = int(host_items(api, GOOD_HOST)['tcp.status[CLOSE_WAIT]']['lastvalue'] or 0)
    _set_host_macros(api, GOOD_HOST, {'{$TCP.CLOSE_WAIT.MAX}': str(base + 40), '{$TCP.CLOSE_WAIT.PERIOD}': '30s',
                                      '{$TCP.LISTEN.MIN}': '1'})
    load = Load()
    start = time.time()
    try:
        # 0-50 s: 80 connections opened and held; 50-100 s: closed 16 at a time, with churn (TIME_WAIT);
        # 100-170 s: a leak of 12 connections every 5 s (CLOSE_WAIT grows past the lowered threshold).
        for step in range(34):
            if step < 10:
                load.open(8)
            elif step < 20:
                load.close_held(8)
                load.churn(15)
            else:
                load.leak(12)
            time.sleep(max(0, start + 5 * (step + 1) - time.time()))
        problems = list(_problems(api, GOOD_HOST))
        log('load ran {0:.0f}s; problems on {1}: {2}'.format(time.time() - start, GOOD_HOST, problems))
        assert trigger_name(lab, 'close_wait') in problems
        graphid = api.call('graph.get', {'hostids': hostid, 'filter': {'name': build_templates.GRAPH_NAME},
                                         'output': ['graphid']})[0]['graphid']
        opener = lab.frontend_opener()
        url = lab.url + 'chart2.php?' + '&'.join(['graphid=' + graphid, 'from=now-4m', 'to=now', 'width=900',
                                                 'height=260', 'profileIdx=web.charts.filter'])
        graph = lab.share(PICTURES['graph'])
        with opener.open(url, timeout=60) as resp, open(graph, 'wb') as handle:
            assert resp.headers.get('Content-Type', '').startswith('image/png'), resp.headers
            handle.write(resp.read())
        # Kiosk mode: the dashboard without the frontend's menu and header.
        dashboard = lab.screenshot('zabbix.php?action=host.dashboard.view&hostid={0}&from=now-4m&to=now&kiosk=1'
                                   .format(hostid), PICTURES['dashboard'], width=1400, height=1450)
    finally:
        load.stop()
    for path in (graph, dashboard):
        width, height = png_size(path)
        size = os.path.getsize(path)
        log('{0}: {1}x{2}, {3} bytes'.format(os.path.basename(path), width, height, size))
        # Drawn, not an error page or an empty frame: a real chart is wide, tall and far from blank.
        assert width >= 900 and height >= 250 and 8000 < size < 400000, (path, width, height, size)
    if PICTURES_DIR:
        target = os.path.join(REPO, PICTURES_DIR)
        os.makedirs(target, exist_ok=True)
        for path in (graph, dashboard):
            shutil.copy(path, os.path.join(target, os.path.basename(path)))
        log('pictures copied to {0}'.format(target))
