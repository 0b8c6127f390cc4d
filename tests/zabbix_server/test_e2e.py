"""End to end: a real Zabbix server receives every TCP state from a real agent running the repo's counter.

The lab (lab.py) installs Debian's packages when missing and starts PostgreSQL, zabbix_server and the
frontend's API on loopback; the role zabbix_tcp_status_api (community.zabbix, httpapi) imports the template and
registers the hosts; the assertions read the API:

- the 3.4 XML imports into the real server and yields the same items, triggers and graph as the 6.0 YAML;
- a host that already has the recipe's item tcp.status[TIME_WAIT] keeps it (same item, so its history) when
  the template is linked; a second role run changes nothing;
- every state item gets values that match `ss` counted at the same time (tolerance for churn);
- triggers fire when crossed on purpose: CLOSE_WAIT sockets held open against a lowered macro, and a LISTEN
  minimum set one above the host's real listener count (as ss counts it);
- triggers resolve when the condition is cleared: the CLOSE_WAIT sockets closed, and the LISTEN minimum set to
  the real listener count (a LISTEN value too high never fires, one too low never resolves);
- an agent whose script answers an error line makes the master item unsupported with the script's message,
  and the "no data" trigger fires.

The agent under test is this machine's system agent on 10050, configured by `ansible-playbook playbook.yml`
while holding /tmp/zts-system-agent.lock. When the role cannot run (the playbook fails --syntax-check, or the
run fails), the test FAILS: it never falls back to anything else.

ZTS_E2E_AGENT=private is an explicit opt-in for working on the lab itself, NOT a test of the role: a private
zabbix_agentd on 127.0.0.1:10060 with hand-written UserParameter lines (AllowRoot=1, Timeout=10) that run the
counter from the repository. It prints a warning and is never the default.

Needs root (apt, runuser postgres). About 2-3 minutes (plus the role's run on the system agent).
ZTS_E2E_KEEP=1 keeps the lab's logs.
"""

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab as lablib  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ss_oracle import ss_state_counts  # noqa: E402

REPO = lablib.REPO
TEMPLATE = 'TCP connection states'
STATES = ['ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT',
          'LAST_ACK', 'LISTEN', 'CLOSING']
GOOD_HOST = 'zts-e2e-agent'
BROKEN_HOST = 'zts-e2e-broken'
PRIVATE_PORT = 10060
BROKEN_PORT = 10061
SYSTEM_PORT = 10050
LOCK = '/tmp/zts-system-agent.lock'
BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the Zabbix lab needs root (apt-get, runuser postgres)')


def log(msg):
    sys.stderr.write('[e2e {0}] {1}\n'.format(time.strftime('%H:%M:%S'), msg))


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
        log('WARNING: ZTS_E2E_AGENT=private: a lab agent with hand-written UserParameter lines; the role is NOT tested')
        return 'private', 'ZTS_E2E_AGENT=private (the role is NOT tested)'
    ready, why = role_ready()
    if not ready:
        pytest.fail('the role cannot run, so the end-to-end test fails: ' + why)
    return 'system', why


def run_playbook(args, inventory=None, cwd=REPO):
    argv = [os.path.join(BIN, 'ansible-playbook')] + (['-i', inventory] if inventory else []) + args
    start = time.time()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=dict(os.environ, ANSIBLE_FORCE_COLOR='0', ANSIBLE_NOCOLOR='1'))
    took = time.time() - start
    log('ansible-playbook {0}: rc={1} in {2:.1f}s'.format(' '.join(args), proc.returncode, took))
    assert proc.returncode == 0, proc.stdout[-6000:]
    recap = dict((m.group(1), dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', m.group(2))))
                 for m in re.finditer(r'^(\S+)\s+:\s+(ok=.*)$', proc.stdout, re.M))
    return proc.stdout, recap


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
    """Decided before the lab starts, so that a role that cannot run fails the test at once."""
    return agent_mode()


@pytest.fixture(scope='module')
def lab(mode):
    start = time.time()
    # ZTS_E2E_KEEP=1 keeps the lab's directory (server, agent, PHP and PostgreSQL logs) after the processes stop.
    with lablib.Lab(keep=os.environ.get('ZTS_E2E_KEEP') == '1') as the_lab:
        log('lab up in {0:.0f}s: Zabbix {1}, steps {2}, apt installed {3}'.format(
            time.time() - start, the_lab.api_version, the_lab.timings, the_lab.installed))
        yield the_lab
    log('lab stopped' + (', logs kept in ' + the_lab.dir if the_lab.keep else ''))


@pytest.fixture(scope='module')
def agents(lab, mode):
    """Returns the port of the agent under test; holds the system agent's lock while the test uses it."""
    mode, why = mode
    log('agent under test: {0} ({1})'.format(mode, why))
    lock = None
    was_running = None
    try:
        if mode == 'system':
            lock = open(LOCK, 'a')
            fcntl.flock(lock, fcntl.LOCK_EX)
            was_running = not lablib.port_free(SYSTEM_PORT)
            run_playbook(['playbook.yml'])
            port = SYSTEM_PORT
        else:
            lab.start_agent(GOOD_HOST, PRIVATE_PORT)
            port = PRIVATE_PORT
        # An agent whose UserParameter passes the script a bad argument: the agent answers the script's error line.
        lab.start_agent(BROKEN_HOST, BROKEN_PORT, json_params='"$1" "$2" "bogus-family"')
        yield {'mode': mode, 'port': port}
    finally:
        if lock is not None:
            if not was_running and not lablib.port_free(SYSTEM_PORT):
                # The role started the system agent for this test: stop it again (init script, no systemd here).
                subprocess.run(['/etc/init.d/zabbix-agent', 'stop'], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


@pytest.fixture(scope='module')
def inventory(lab, agents):
    api = {
        'zabbix_tcp_status_api_server': '127.0.0.1',
        'zabbix_tcp_status_api_port': lablib.API_PORT,
        'zabbix_tcp_status_api_use_ssl': False,
        'zabbix_tcp_status_api_url_path': '',
        'zabbix_tcp_status_api_user': 'Admin',
        'zabbix_tcp_status_api_password': 'zabbix',
    }
    host = {'ansible_connection': 'local', 'ansible_python_interpreter': '{{ ansible_playbook_python }}',
            'zabbix_tcp_status_api_interface_ip': '127.0.0.1'}
    data = {'zabbix_agents': {'vars': api, 'hosts': {
        GOOD_HOST: dict(host, zabbix_tcp_status_api_interface_port=agents['port'], zabbix_tcp_status_api_host_macros=[
            {'macro': '{$TCP.STATUS.INTERVAL}', 'value': '10s'}]),
        BROKEN_HOST: dict(host, zabbix_tcp_status_api_interface_port=BROKEN_PORT, zabbix_tcp_status_api_host_macros=[
            {'macro': '{$TCP.STATUS.INTERVAL}', 'value': '10s'},
            {'macro': '{$TCP.STATUS.NODATA}', 'value': '30s'}]),
    }}}
    path = lab.path('inventory.yml')
    with open(path, 'w') as handle:
        yaml.safe_dump(data, handle)
    return path


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
    triggers = sorted((t['description'], t['expression'], t['priority']) for t in api.call(
        'trigger.get', {'templateids': tid, 'output': ['description', 'expression', 'priority'],
                        'expandExpression': True}))
    graphs = api.call('graph.get', {'templateids': tid, 'output': ['name', 'graphtype'],
                                    'selectGraphItems': ['itemid']})
    macros = sorted(m['macro'] for m in api.call('usermacro.get', {'hostids': tid, 'output': ['macro']}))
    return {'templateid': tid, 'items': shape_items, 'triggers': triggers, 'macros': macros,
            'graphs': [(g['name'], g['graphtype'], len(g['gitems'])) for g in graphs]}


@pytest.fixture(scope='module')
def registered(lab, agents, inventory):
    api = lab.api
    # 1. The 3.4 XML through the role (format xml, template only), kept for comparison, then removed.
    run_playbook(['playbook-register.yml', '-e', 'zabbix_tcp_status_api_template_format=xml',
                  '-e', 'zabbix_tcp_status_api_register_host=false'], inventory)
    xml_shape = template_shape(api)
    api.call('template.delete', [xml_shape['templateid']])
    # 2. A host set up the recipe's way: an agent item tcp.status[TIME_WAIT] clicked together in the web UI.
    group = api.call('hostgroup.get', {'filter': {'name': 'Linux servers'}, 'output': ['groupid']})[0]['groupid']
    hostid = api.call('host.create', {
        'host': GOOD_HOST, 'groups': [{'groupid': group}],
        'interfaces': [{'type': 1, 'main': 1, 'useip': 1, 'ip': '127.0.0.1', 'dns': '',
                        'port': str(agents['port'])}]})['hostids'][0]
    iface = api.call('hostinterface.get', {'hostids': hostid, 'output': ['interfaceid']})[0]['interfaceid']
    seed = api.call('item.create', {'hostid': hostid, 'name': 'TIME_WAIT', 'key_': 'tcp.status[TIME_WAIT]',
                                    'type': 0, 'value_type': 3, 'delay': '1m', 'interfaceid': iface})['itemids'][0]
    # 3. The real registration: 6.0 YAML, both hosts, host macros, user and password.
    out, recap = run_playbook(['playbook-register.yml'], inventory)
    yaml_shape = template_shape(api)
    # 4. Again with an API token instead of the password (given as extra vars, the way a vault file would):
    #    nothing may change, and the token must not show in the output.
    tokenid = api.call('token.create', {'name': 'zts-e2e', 'userid': '1'})['tokenids'][0]
    token = api.call('token.generate', [tokenid])[0]['token']
    secrets = lab.path('secrets.yml')
    with open(secrets, 'w') as handle:
        yaml.safe_dump({'zabbix_tcp_status_api_token': token, 'zabbix_tcp_status_api_user': '',
                        'zabbix_tcp_status_api_password': ''}, handle)
    out2, recap2 = run_playbook(['playbook-register.yml', '-e', '@' + secrets, '-v'], inventory)
    return {'xml': xml_shape, 'yaml': yaml_shape, 'seed_itemid': seed, 'hostid': hostid, 'recap': recap,
            'recap2': recap2, 'out2': out2, 'token': token}


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
def held_sockets():
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


def test_xml_34_import_matches_yaml_60(registered):
    xml, yml = registered['xml'], registered['yaml']
    assert len(yml['items']) == 12 and len(yml['triggers']) == 5 and yml['graphs'] == [(TEMPLATE, '1', 11)]
    # Same keys, types, value types, masters and JSONPaths; the master's check step differs by design (3.4 has
    # no validation steps), so only JSONPath steps are compared.
    assert xml['items'] == yml['items']
    # The 3.4 expressions, converted by the server, are the 6.0 expressions.
    assert [t[1] for t in xml['triggers']] == [t[1] for t in yml['triggers']]
    assert xml['macros'] == yml['macros'] and xml['graphs'] == yml['graphs']


def test_registration_links_both_hosts_and_is_idempotent(lab, registered):
    for host in (GOOD_HOST, BROKEN_HOST):
        found = lab.api.call('host.get', {'filter': {'host': host}, 'selectParentTemplates': ['host'],
                                          'output': ['hostid']})
        assert len(found) == 1 and [t['host'] for t in found[0]['parentTemplates']] == [TEMPLATE], found
        assert len(host_items(lab.api, host)) == 12
    for host, counts in registered['recap2'].items():
        assert counts['changed'] == 0 and counts['failed'] == 0, (host, registered['out2'][-3000:])
    assert registered['recap'][GOOD_HOST]['changed'] > 0
    # The second run used the token (user and password emptied), at -v, under no_log.
    assert registered['token'] not in registered['out2']
    assert 'the output has been hidden' in registered['out2']


def test_recipe_item_is_kept_when_the_template_is_linked(lab, registered):
    item = host_items(lab.api, GOOD_HOST)['tcp.status[TIME_WAIT]']
    assert item['itemid'] == registered['seed_itemid'], 'the recipe\'s item was replaced: its history is lost'
    assert item['templateid'] != '0' and item['type'] == '18'


def test_every_state_arrives_and_matches_ss(lab, registered, held_sockets):
    sampler = SsSampler()
    sampler.start()
    started = time.time()
    try:
        def fresh():
            items = host_items(lab.api, GOOD_HOST)
            new = dict((k, i) for k, i in items.items() if int(i['lastclock'] or 0) >= started + 1)
            return items if len(new) == 12 else None
        items = wait_for('values newer than the sampler start for all 12 items', fresh, 150)
        took = time.time() - started
        log('all 12 items fresh {0:.0f}s after the host macros were applied'.format(took))
        master = json.loads(items['tcp.status.json']['lastvalue'])
        assert sorted(master) == sorted(STATES)
        mismatches = []
        for state in STATES:
            item = items['tcp.status[{0}]'.format(state)]
            assert item['state'] == '0', (state, item['error'])
            value, clock = int(item['lastvalue']), int(item['lastclock'])
            assert value == master[state] or int(items['tcp.status.json']['lastclock']) != clock
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
    close_wait = 'TCP sockets pile up in CLOSE_WAIT'
    few_listen = 'Fewer than {$TCP.LISTEN.MIN} listening'
    listener, accepted = _close_wait_sockets(held)
    try:
        listen = ss_state_counts().get('LISTEN', 0)
        log('ss counts {0} listening sockets, Zabbix last said {1}'.format(
            listen, host_items(api, GOOD_HOST)['tcp.status[LISTEN]']['lastvalue']))
        _set_host_macros(api, GOOD_HOST, {
            '{$TCP.CLOSE_WAIT.MAX}': str(base + held // 2), '{$TCP.CLOSE_WAIT.PERIOD}': '25s',
            '{$TCP.LISTEN.MIN}': str(listen + 1), '{$TCP.LISTEN.PERIOD}': '25s'})
        start = time.time()

        def fired():
            names = list(_problems(api, GOOD_HOST))
            return names if all(any(n.startswith(w) for n in names) for w in (close_wait, few_listen)) else None
        names = wait_for('CLOSE_WAIT and LISTEN triggers in problem state', fired, 150, step=3)
        log('triggers fired {0:.0f}s after crossing: {1}'.format(time.time() - start, names))
        # The other thresholds were not crossed.
        assert not any(n.startswith('Many TCP sockets in TIME_WAIT') or n.startswith('Possible SYN flood')
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
        return ['resolved'] if not any(n.startswith(w) for n in names for w in (close_wait, few_listen)) else None
    wait_for('CLOSE_WAIT and LISTEN triggers to resolve (LISTEN minimum {0})'.format(listen), resolved, 150, step=3)
    log('triggers resolved {0:.0f}s after clearing'.format(time.time() - start))


def test_script_error_makes_master_unsupported_and_nodata_fires(lab, registered):
    api = lab.api

    def unsupported():
        items = host_items(api, BROKEN_HOST)
        master = items['tcp.status.json']
        return items if master['state'] == '1' and master['error'] else None
    items = wait_for('the broken host\'s master item to turn unsupported', unsupported, 120)
    error = items['tcp.status.json']['error']
    log('master item error: {0}'.format(error))
    # Zabbix 6.0 words it: Preprocessing failed for: <value>\n1. Failed: <the check's output>
    assert '1. Failed: tcp_status script did not return JSON: tcp_status: ' in error, error
    assert 'bogus-family' in error
    # The error text never reaches the JSONPath steps: the state items simply get no values.
    assert all(items['tcp.status[{0}]'.format(s)]['lastclock'] == '0' for s in STATES)
    start = time.time()

    def fired():
        names = list(_problems(api, BROKEN_HOST))
        return names if any(n.startswith('TCP state counter sends no data') for n in names) else None
    names = wait_for('the no-data trigger on the broken host', fired, 150, step=3)
    log('no-data trigger fired {0:.0f}s after the item turned unsupported: {1}'.format(time.time() - start, names))
