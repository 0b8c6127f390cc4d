"""The template as data: the export files checked without a Zabbix server, against the real counter script and
against Zabbix's template guidelines (https://www.zabbix.com/documentation/guidelines/en/template_guidelines).

Fast (about a second). The end-to-end test (test_e2e.py) imports the files into real Zabbix 5.0, 6.0 and 7.0
servers.
"""

import json
import os
import re
import subprocess
import time
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZABBIX_DIR = os.path.join(REPO, 'zabbix')
YAML_FILE = os.path.join(ZABBIX_DIR, 'template_tcp_status.yaml')
YAML_FILES = {'6.0': YAML_FILE, '7.0': os.path.join(ZABBIX_DIR, 'template_tcp_status_7.0.yaml')}
XML_FILE = os.path.join(ZABBIX_DIR, 'template_tcp_status_3.4.xml')
COUNTER = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'module_utils', 'tcp_status_counter.py')
ROLE_DEFAULTS = os.path.join(REPO, 'roles', 'zabbix_tcp_status', 'defaults', 'main.yml')

import tcp_status_counter  # the repo's one counter, for its list of states (pytest.ini puts module_utils on the path)
from zabbix import build_templates

TEMPLATE = 'TCP connection states'
# The template's identity as first published (2026-11-25): hosts, the registration role and old importers find it
# by this name, 6.0+ importers by this uuid. Changing either makes existing users' imports a second template.
TEMPLATE_UUID = 'f36af4c6742844a7a9eec1d7647037ae'
# The trigger names of the first published 3.4 XML: 3.4-5.x importers match triggers by name and expression.
FIRST_TRIGGER_NAMES_34 = [
    'Many TCP sockets in TIME_WAIT (over {$TCP.TIME_WAIT.MAX} for {$TCP.TIME_WAIT.PERIOD})',
    'TCP sockets pile up in CLOSE_WAIT (over {$TCP.CLOSE_WAIT.MAX} for {$TCP.CLOSE_WAIT.PERIOD} and not draining)',
    'Possible SYN flood: over {$TCP.SYN_RECV.MAX} TCP sockets in SYN_RECV for {$TCP.SYN_RECV.PERIOD}',
    'Fewer than {$TCP.LISTEN.MIN} listening TCP sockets for {$TCP.LISTEN.PERIOD}',
    'TCP state counter sends no data for {$TCP.STATUS.NODATA} (script broken or item unsupported)',
]
STATES = list(tcp_status_counter.STATES)
MASTER_KEY = 'tcp.status.json'
UUID_RE = re.compile(r'^[0-9a-f]{32}$')
MACRO_RE = re.compile(r'\{\$[A-Z0-9_.]+(?::[^}]*)?\}')
FUNC_60_RE = re.compile(r'([a-z]+)\(/([^/]+)/((?:[^,)\[]|\[[^\]]*\])+)(?:,([^)]*))?\)')
FUNC_34_RE = re.compile(r'\{([^:{}]+):((?:[^\[\]{}]|\[[^\]]*\])+?)\.([a-z]+)\(([^)]*)\)\}')
JSONPATH_RE = re.compile(r'^\$\.([A-Z_0-9]+)$')


def run_counter(*args):
    proc = subprocess.run([sys.executable, COUNTER] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def jsonpath(doc, path):
    """Zabbix JSONPath for the one form the template uses: $.NAME (a member of the top object)."""
    match = JSONPATH_RE.match(path)
    assert match, 'JSONPath {0!r} is not of the form $.STATE'.format(path)
    if match.group(1) not in doc:
        raise KeyError(path)
    return doc[match.group(1)]


# --------------------------------------------------------------------------------------------------------
# Loading


@pytest.fixture(scope='module', params=sorted(YAML_FILES), ids=['yaml-' + v for v in sorted(YAML_FILES)])
def y(request):
    with open(YAML_FILES[request.param], encoding='utf-8') as handle:
        return yaml.safe_load(handle)['zabbix_export']


@pytest.fixture(scope='module')
def ytemplate(y):
    assert len(y['templates']) == 1
    return y['templates'][0]


@pytest.fixture(scope='module')
def yitems(ytemplate):
    # Zabbix exports leave defaults out (and importcompare flags them when spelled out): put them back here.
    defaults = {'type': 'ZABBIX_PASSIVE', 'value_type': 'UNSIGNED', 'trends': '365d', 'history': '90d',
                'delay': '1m'}
    return dict((item['key'], dict(defaults, **item)) for item in ytemplate['items'])


@pytest.fixture(scope='module')
def ystates(yitems):
    """The all-states part: the master tcp.status.json and its eleven dependent items (the per-port part, its own
    master and items, is checked below)."""
    return dict((key, item) for key, item in yitems.items()
                if key == MASTER_KEY or item.get('master_item', {}).get('key') == MASTER_KEY)


@pytest.fixture(scope='module')
def x():
    return ET.parse(XML_FILE).getroot()


@pytest.fixture(scope='module')
def xitems(x):
    return dict((item.findtext('key'), item) for item in x.findall('./templates/template/items/item'))


@pytest.fixture(scope='module')
def real_all():
    code, out, err = run_counter('all')
    assert code == 0 and err == '', (code, err)
    return json.loads(out)


def yaml_triggers(ytemplate, y):
    found = []
    for item in ytemplate['items']:
        found.extend(item.get('triggers', []))
    return found + list(y.get('triggers', []))


STATE_TRIGGER_UUIDS = set(build_templates._uuid('trigger', t['id']) for t in build_templates.TRIGGERS)


def state_triggers(ytemplate, y):
    """The all-states part's triggers (the per-port part's are checked below)."""
    return [t for t in yaml_triggers(ytemplate, y) if t['uuid'] in STATE_TRIGGER_UUIDS]


# --------------------------------------------------------------------------------------------------------
# The files are current and well-formed


def test_generated_files_are_current():
    proc = subprocess.run([sys.executable, os.path.join(ZABBIX_DIR, 'build_templates.py'), '--check'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_yaml_header(y):
    assert y['version'] in YAML_FILES
    if y['version'] == '6.0':
        assert [g['name'] for g in y['groups']] == ['Templates'] and 'date' in y
    else:
        # 6.2 split template groups from host groups; 7.0's importer refuses a date.
        assert [g['name'] for g in y['template_groups']] == ['Templates'] and 'date' not in y and 'groups' not in y


def test_6_and_7_files_hold_the_same_template():
    with open(YAML_FILES['6.0'], encoding='utf-8') as handle:
        six = yaml.safe_load(handle)['zabbix_export']
    with open(YAML_FILES['7.0'], encoding='utf-8') as handle:
        seven = yaml.safe_load(handle)['zabbix_export']
    assert six['graphs'] == seven['graphs']
    left, right = dict(six['templates'][0]), dict(seven['templates'][0])
    # Dashboards differ by format only (grid width, field names): test_dashboard checks each.
    left.pop('dashboards'), right.pop('dashboards')
    assert left == right


def test_xml_header(x):
    assert x.tag == 'zabbix_export'
    assert x.findtext('version') == '3.4'
    assert [g.findtext('name') for g in x.findall('./groups/group')] == ['Templates']


def test_yaml_template_fields(ytemplate):
    assert ytemplate['template'] == TEMPLATE and ytemplate['uuid'] == TEMPLATE_UUID
    assert [g['name'] for g in ytemplate['groups']] == ['Templates']
    for state in STATES:
        # The description explains every state on a line of its own.
        assert re.search(r'^{0}: \S.+$'.format(state), ytemplate['description'], re.M), state


def test_uuids_are_unique_and_well_formed(y):
    uuids = []

    def walk(node):
        if isinstance(node, dict):
            if 'uuid' in node:
                uuids.append(node['uuid'])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(y)
    # groups + template + 12 items + 5 triggers + graph + dashboard; the per-port part: its master, 3 host items,
    # 1 trigger, 2 discovery rules with 6 + 4 item prototypes, 2 trigger prototypes and 2 graph prototypes
    assert len(uuids) == 1 + 1 + 12 + 5 + 1 + 1 + (1 + 3 + 1 + 2 + 10 + 2 + 2)
    assert len(set(uuids)) == len(uuids)
    assert all(UUID_RE.match(u) and u[12] == '4' for u in uuids), uuids


def test_all_yaml_scalars_are_strings(y):
    """Zabbix exports quote every value; a bare 0 or a date-looking value would be typed by the YAML parser."""
    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + '.' + key)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, '{0}[{1}]'.format(path, i))
        else:
            assert isinstance(node, str), path
    walk(y, '')


def test_xml_items_have_every_element_the_34_importer_requires(xitems):
    required = ['name', 'type', 'snmp_community', 'snmp_oid', 'key', 'delay', 'history', 'trends', 'status',
                'value_type', 'allowed_hosts', 'units', 'snmpv3_contextname', 'snmpv3_securityname',
                'snmpv3_securitylevel', 'snmpv3_authprotocol', 'snmpv3_authpassphrase', 'snmpv3_privprotocol',
                'snmpv3_privpassphrase', 'params', 'ipmi_sensor', 'authtype', 'username', 'password',
                'publickey', 'privatekey', 'port', 'description', 'inventory_link', 'applications', 'valuemap',
                'preprocessing', 'logtimefmt', 'jmx_endpoint', 'master_item']
    for key, item in xitems.items():
        missing = [tag for tag in required if item.find(tag) is None]
        assert not missing, (key, missing)


# --------------------------------------------------------------------------------------------------------
# Items: one master, a dependent item per state, keys the script answers


def test_items_yaml(ystates):
    yitems = ystates
    assert sorted(yitems) == sorted([MASTER_KEY] + ['tcp.status[{0}]'.format(s) for s in STATES])
    master = yitems[MASTER_KEY]
    assert master['type'] == 'ZABBIX_PASSIVE' and master['value_type'] == 'TEXT'
    assert master['trends'] == '0' and master['history'] == '0'
    assert master['delay'] == '{$TCP.STATUS.INTERVAL}'
    for state in STATES:
        item = yitems['tcp.status[{0}]'.format(state)]
        assert item['type'] == 'DEPENDENT' and item['delay'] == '0'
        assert item['value_type'] == 'UNSIGNED'
        assert item['master_item'] == {'key': MASTER_KEY}
        steps = item['preprocessing']
        assert [(p['type'], p['parameters']) for p in steps] == [('JSONPATH', ['$.' + state])]


def test_items_xml_match_yaml(xitems, yitems):
    assert sorted(xitems) == sorted(yitems)
    yitems = dict((key, item) for key, item in yitems.items() if key.startswith('tcp.status[') or key == MASTER_KEY)
    master = xitems[MASTER_KEY]
    assert master.findtext('type') == '0' and master.findtext('value_type') == '4'
    assert master.findtext('trends') == '0'
    for state in STATES:
        item = xitems['tcp.status[{0}]'.format(state)]
        assert item.findtext('type') == '18' and item.findtext('value_type') == '3'
        assert item.findtext('master_item/key') == MASTER_KEY
        steps = [(s.findtext('type'), s.findtext('params')) for s in item.findall('preprocessing/step')]
        assert steps == [('12', '$.' + state)]
        assert item.findtext('history') == yitems['tcp.status[{0}]'.format(state)]['history']


def test_seed_keys_are_present(yitems, xitems):
    for key in ('tcp.status[ESTABLISHED]', 'tcp.status[TIME_WAIT]', 'tcp.status[LISTEN]'):
        assert key in yitems and key in xitems


def test_master_key_is_the_roles_json_key(yitems):
    with open(ROLE_DEFAULTS, encoding='utf-8') as handle:
        defaults = yaml.safe_load(handle)
    assert defaults['zabbix_tcp_status_json_key'] == MASTER_KEY


def test_every_state_key_is_answered_by_the_script(ystates):
    for key in ystates:
        if key == MASTER_KEY:
            continue
        state = re.match(r'^tcp\.status\[([A-Z_0-9]+)\]$', key).group(1)
        code, out, err = run_counter(state)
        assert code == 0 and err == '' and re.match(r'^\d+\n?$', out), (key, code, out, err)


def test_every_jsonpath_resolves_against_real_output(ystates, xitems, real_all):
    assert sorted(real_all) == sorted(STATES)
    for key, item in ystates.items():
        for step in item.get('preprocessing', []):
            if step['type'] == 'JSONPATH':
                value = jsonpath(real_all, step['parameters'][0])
                assert isinstance(value, int) and value >= 0, (key, value)
    for key, item in xitems.items():
        if item.findtext('master_item/key') != MASTER_KEY:
            continue
        for step in item.findall('preprocessing/step'):
            if step.findtext('type') == '12':
                assert isinstance(jsonpath(real_all, step.findtext('params')), int), key


def test_master_check_passes_json_and_rejects_error_lines(yitems):
    """The master's preprocessing (PCRE in Zabbix; Python's re agrees on this pattern) on real script output."""
    steps = yitems[MASTER_KEY]['preprocessing']
    assert [s['type'] for s in steps] == ['CHECK_REGEX_ERROR']
    pattern, output = steps[0]['parameters']
    code, good, _ = run_counter('all')
    assert code == 0 and re.match(pattern, good) is None
    code, out, bad = run_counter('all', '', '', 'bogus')
    assert code == 2 and out == '' and bad.startswith('tcp_status: ')
    # What the agent returns for that call is the stderr line: the check turns it into the item's error.
    match = re.match(pattern, bad.strip())
    assert match and match.expand(output.replace(r'\1', r'\g<1>')) == \
        'tcp_status script did not return JSON: ' + bad.strip()
    assert re.match(pattern, '') is not None  # an empty answer is an error too


def test_xml_master_regex_keeps_json_only(xitems, real_all):
    steps = [(s.findtext('type'), s.findtext('params')) for s in xitems[MASTER_KEY].findall('preprocessing/step')]
    assert len(steps) == 1 and steps[0][0] == '5'
    pattern, output = steps[0][1].split('\n')
    code, good, _ = run_counter('all')
    match = re.search(pattern, good)
    assert match and json.loads(match.expand(output)).keys() == real_all.keys()
    assert re.search(pattern, "tcp_status: unknown family 'bogus'") is None


# --------------------------------------------------------------------------------------------------------
# Triggers, macros, graph


def _macros_used(text):
    return set(m.split(':')[0].rstrip('}') + '}' for m in MACRO_RE.findall(text))


def test_triggers_reference_existing_items_and_defined_macros(ytemplate, y, yitems):
    defined = set(m['macro'] for m in ytemplate['macros'])
    assert len(defined) == len(ytemplate['macros'])
    triggers = state_triggers(ytemplate, y)
    assert len(triggers) == 5
    used = set()
    for trigger in triggers:
        funcs = FUNC_60_RE.findall(trigger['expression'])
        assert funcs, trigger['expression']
        for _name, host, key, _param in funcs:
            assert host == TEMPLATE and key in yitems, (trigger['name'], key)
        for text in (trigger['expression'], trigger['name']):
            used |= _macros_used(text)
    assert used <= defined, used - defined
    used_anywhere = set()
    for item in ytemplate['items']:
        used_anywhere |= _macros_used(item['delay'])
    # The per-port part's macros: in its master's key and interval, its triggers and its discovery rules.
    used_anywhere |= _macros_used(json.dumps(ytemplate.get('discovery_rules', [])))
    for item in ytemplate['items']:
        used_anywhere |= _macros_used(item['key'])
        for trigger in item.get('triggers', []):
            used_anywhere |= _macros_used(trigger['expression'])
    assert (used | used_anywhere) == defined, 'macros defined but never used: {0}'.format(
        defined - used - used_anywhere)


def test_trigger_topics(ytemplate, y):
    exprs = ' '.join(t['expression'] for t in yaml_triggers(ytemplate, y))
    for needle in ('tcp.status[TIME_WAIT]', '{$TCP.TIME_WAIT.MAX}', 'tcp.status[CLOSE_WAIT]',
                   'tcp.status[SYN_RECV]', 'tcp.status[LISTEN]', 'nodata(/TCP connection states/tcp.status['):
        assert needle in exprs, needle


def test_xml_triggers_match_yaml(x, ytemplate, y, xitems):
    xtriggers = [t for t in x.findall('./triggers/trigger') if t.findtext('name') in FIRST_TRIGGER_NAMES_34]
    ytriggers = state_triggers(ytemplate, y)
    # The XML keeps the first published names (the 3.4-5.x importers match triggers by name): see GUIDELINES.
    assert sorted(t.findtext('name') for t in xtriggers) == sorted(FIRST_TRIGGER_NAMES_34)
    assert len(xtriggers) == len(ytriggers)
    defined = set(m.findtext('macro') for m in x.findall('./templates/template/macros/macro'))
    assert defined == set(m['macro'] for m in ytemplate['macros'])
    by_uuid = dict((t['uuid'], t) for t in ytriggers)
    for trigger in xtriggers:
        expr = trigger.findtext('expression')
        funcs = FUNC_34_RE.findall(expr)
        assert funcs, expr
        for host, key, _name, _param in funcs:
            assert host == TEMPLATE and key in xitems, key
        assert _macros_used(expr) <= defined
        # Same functions, same order, in both syntaxes; only the XML's nodata() reads the master, which keeps
        # history there.
        source = [t for t in build_templates.TRIGGERS if t['name_34'] == trigger.findtext('name')][0]
        yfuncs = FUNC_60_RE.findall(by_uuid[build_templates._uuid('trigger', source['id'])]['expression'])
        xfuncs = [(k, n, p) for _h, k, n, p in funcs]
        if source['id'] == 'nodata':
            assert xfuncs == [(MASTER_KEY, 'nodata', '{$TCP.STATUS.NODATA}')]
            assert [(n, p) for n, _h, _k, p in yfuncs] == [('nodata', '{$TCP.STATUS.NODATA}')]
        else:
            assert xfuncs == [(k, n, p) for n, _h, k, p in yfuncs]
        # Dependencies name triggers that exist in the file.
        for dep in trigger.findall('dependencies/dependency'):
            assert dep.findtext('name') in FIRST_TRIGGER_NAMES_34


def test_macro_values(ytemplate):
    for macro in ytemplate['macros']:
        # Only the remote port list is empty by default (no remote ports counted); Zabbix exports no empty value.
        assert MACRO_RE.match(macro['macro']) and macro['description'], macro
        assert macro.get('value', '') != '' or macro['macro'] == '{$TCP.PORT.REMOTE}', macro


def test_graph_stacks_every_state(y, x):
    graphs = y['graphs']
    assert len(graphs) == 1 and graphs[0]['type'] == 'STACKED'
    keys = [gi['item']['key'] for gi in graphs[0]['graph_items']]
    assert [gi.get('sortorder', '0') for gi in graphs[0]['graph_items']] == [str(i) for i in range(len(STATES))]
    assert keys == ['tcp.status[{0}]'.format(s) for s in STATES]
    assert all(gi['item']['host'] == TEMPLATE for gi in graphs[0]['graph_items'])
    colors = [gi['color'] for gi in graphs[0]['graph_items']]
    assert len(set(colors)) == len(colors)
    xgraph = x.findall('./graphs/graph')
    assert len(xgraph) == 1 and xgraph[0].findtext('type') == '1'
    assert [gi.findtext('item/key') for gi in xgraph[0].findall('graph_items/graph_item')] == keys


# --------------------------------------------------------------------------------------------------------
# Zabbix's template guidelines (https://www.zabbix.com/documentation/guidelines/en/template_guidelines), as far as
# they apply to this template; where the template does not follow one, build_templates.GUIDELINES_NOT_FOLLOWED
# must say why (and docs/TEMPLATE.md repeats it).

SCOPES = {'availability', 'performance', 'capacity', 'notice', 'security'}
ALL_FILES = [YAML_FILE, YAML_FILES['7.0'], XML_FILE]


def _tags(node):
    return [(t['tag'], t['value']) for t in node.get('tags', [])]


def test_guideline_template_name_says_what_and_how(ytemplate):
    # "<What> by <collection method>"; the technical name stays the published identity.
    assert ytemplate['name'] == TEMPLATE + ' by Zabbix agent'
    assert ytemplate['template'] == TEMPLATE and 'template_name' in build_templates.GUIDELINES_NOT_FOLLOWED
    assert ('class', 'os') in _tags(ytemplate) and ('target', 'linux') in _tags(ytemplate)


def test_guideline_master_item_keeps_no_history(ystates):
    yitems = ystates
    master = yitems[MASTER_KEY]
    assert master['history'] == '0' and master['trends'] == '0'
    assert ('component', 'raw') in _tags(master)
    for key, item in yitems.items():
        if key != MASTER_KEY:
            # Dependent items keep the values (the guidelines: the default storage period or an explicit one).
            assert item['master_item'] == {'key': MASTER_KEY} and item['history'] not in ('0', '')


def test_guideline_every_item_has_a_component_tag(yitems):
    for key, item in yitems.items():
        assert any(tag == 'component' for tag, _ in _tags(item)), key


def test_guideline_dependent_items_have_an_error_handler(yitems):
    for key, item in yitems.items():
        if 'master_item' not in item:
            continue  # the masters: their check turns an error line into the item's error
        for step in item['preprocessing']:
            if step['type'] == 'DISCARD_UNCHANGED_HEARTBEAT':
                continue  # cannot fail
            assert step.get('error_handler') in ('CUSTOM_ERROR', 'DISCARD_VALUE', 'CUSTOM_VALUE'), (key, step)
            if step['error_handler'] == 'CUSTOM_ERROR':
                assert step['error_handler_params'].strip(), key


def test_guideline_discard_unchanged_or_a_reason(yitems):
    uses = [key for key, item in yitems.items()
            if any(step['type'] == 'DISCARD_UNCHANGED_HEARTBEAT' for step in item.get('preprocessing', []))]
    assert uses or build_templates.GUIDELINES_NOT_FOLLOWED.get('discard_unchanged')


def test_guideline_trigger_names_object_first_threshold_in_event_name(ytemplate, y):
    for trigger in yaml_triggers(ytemplate, y):
        name, event = trigger['name'], trigger.get('event_name', '')
        # The object first ("TCP: ..."), short: no macros, no threshold in the name itself.
        assert re.match(r'^TCP: [A-Z]', name), name
        assert not MACRO_RE.search(name) and '(' not in name, name
        # The event name is the name with the threshold explained in parentheses.
        assert event.startswith(name + ' (') and event.endswith(')'), (name, event)
        used = _macros_used(trigger['expression'])
        assert used and used <= _macros_used(event), (name, used - _macros_used(event))
        assert [tag for tag, _ in _tags(trigger)] == ['scope'] and _tags(trigger)[0][1] in SCOPES, name


def test_guideline_triggers_read_items_that_keep_history(ytemplate, y, yitems):
    """Zabbix evaluates no trigger function on an item that keeps no history: nodata() must not read the master."""
    for trigger in yaml_triggers(ytemplate, y):
        for _name, _host, key, _param in FUNC_60_RE.findall(trigger['expression']):
            assert yitems[key]['history'] != '0', (trigger['name'], key)


def test_guideline_state_triggers_depend_on_no_data(ytemplate, y):
    triggers = state_triggers(ytemplate, y)
    nodata = [t for t in triggers if t['expression'].startswith('nodata(')]
    assert len(nodata) == 1
    expected = [{'name': nodata[0]['name'], 'expression': nodata[0]['expression']}]
    for trigger in triggers:
        if trigger is not nodata[0]:
            # No values means no state trigger can judge: the "no data" problem implies them.
            assert trigger.get('dependencies') == expected, trigger['name']
    assert 'dependencies' not in nodata[0]


def test_guideline_exceptions_are_documented():
    with open(os.path.join(REPO, 'docs', 'TEMPLATE.md'), encoding='utf-8') as handle:
        doc = handle.read()
    for key in build_templates.GUIDELINES_NOT_FOLLOWED:
        assert '`{0}`'.format(key) in doc, 'docs/TEMPLATE.md does not explain the exception ' + key


def test_template_identity_is_kept_in_every_file(x):
    assert x.findtext('./templates/template/template') == TEMPLATE
    for path in YAML_FILES.values():
        with open(path, encoding='utf-8') as handle:
            template = yaml.safe_load(handle)['zabbix_export']['templates'][0]
        assert template['template'] == TEMPLATE and template['uuid'] == TEMPLATE_UUID
        # The recipe's keys, unchanged (and in the 3.4 XML too, by test_seed_keys_are_present).
        keys = [item['key'] for item in template['items']]
        assert all('tcp.status[{0}]'.format(state) in keys for state in STATES)


def test_dashboard(y, ytemplate):
    columns = {'6.0': 24, '7.0': 72}[y['version']]
    dashboards = ytemplate['dashboards']
    assert len(dashboards) == 1 and dashboards[0]['name'] == 'TCP connection states'
    widgets = [w for page in dashboards[0]['pages'] for w in page['widgets']]
    graph_names = set(g['name'] for g in y['graphs'])
    keys = set(item['key'] for item in ytemplate['items'])
    prototype_names = set(g['name'] for rule in ytemplate['discovery_rules'] for g in rule['graph_prototypes'])
    kinds = set()
    for widget in widgets:
        x_pos, width = int(widget.get('x', '0')), int(widget['width'])
        assert 0 < width and x_pos + width <= columns, widget['name']
        for field in widget['fields']:
            if field['type'] == 'GRAPH':
                assert field['value'] == {'host': TEMPLATE, 'name': field['value']['name']}
                assert field['value']['name'] in graph_names
            if field['type'] == 'ITEM':
                assert field['value']['host'] == TEMPLATE and field['value']['key'] in keys
            if field['type'] == 'GRAPH_PROTOTYPE':
                assert field['value'] == {'host': TEMPLATE, 'name': field['value']['name']}
                assert field['value']['name'] in prototype_names
        names = [field['name'] for field in widget['fields']]
        if y['version'] == '7.0':
            # Widgets are modules in 7.0, each with a reference of its own; repeated fields are numbered.
            references = [f['value'] for f in widget['fields'] if f['name'] == 'reference']
            assert len(references) == 1 and re.match(r'^[A-Z]{5}$', references[0]), widget['name']
            for name in names:
                match = re.match(r'^columns\.(\d+)\.itemid$', name)
                assert not match or 'columns.{0}.name'.format(match.group(1)) in names, name
        kinds.add(widget['type'])
    refs = [f['value'] for w in widgets for f in w['fields'] if f['name'] == 'reference']
    assert len(set(refs)) == len(refs)
    assert kinds == ({'graph', 'itemhistory', 'graphprototype'} if y['version'] == '7.0' else
                     {'GRAPH_CLASSIC', 'PLAIN_TEXT', 'GRAPH_PROTOTYPE'})
    # The per-port graphs sit under the state graph, across the whole width, and do not overlap it.
    ports = [w for w in widgets if w['type'] in ('graphprototype', 'GRAPH_PROTOTYPE')]
    assert len(ports) == 1 and int(ports[0]['y']) >= max(int(w['height']) for w in widgets if w is not ports[0])
    assert int(ports[0].get('x', '0')) == 0 and int(ports[0]['width']) == columns


# --------------------------------------------------------------------------------------------------------
# Per-port monitoring (issue 10): keys from the item table, JSONPaths against the real script's `ports` answer on
# sockets this test holds, the discovery, triggers with context macros, the 3.4 XML's agent discovery.

import socket  # noqa: E402

from zabbix import role_items  # noqa: E402
from ss_oracle import ss_sockets  # noqa: E402

COUNT_KEY = role_items.item('count')['key']
PORTS_KEY = role_items.item('ports')['key']
DISCOVERY_KEY = role_items.item('discovery')['key']
PORT_JSONPATH_RE = re.compile(r'^\$\.(ports|remote)\[\?\(@\.port==\{#PORT\}\)\]\.([a-z]+(?:\.[A-Z_0-9]+)?)\.first\(\)$')


def port_jsonpath(doc, path, port):
    """Zabbix JSONPath for the form the prototypes use, with {#PORT} resolved: $.ARRAY[?(@.port==N)].FIELD.first().
    None where nothing matches (Zabbix's "no data matches": the prototypes discard the value then)."""
    match = PORT_JSONPATH_RE.match(path)
    assert match, path
    for entry in doc[match.group(1)]:
        if entry['port'] == port:
            value = entry
            for part in match.group(2).split('.'):
                if part not in value:
                    return None
                value = value[part]
            return value
    return None


@pytest.fixture(scope='module')
def held_port():
    """A listener on loopback with a backlog of 2 that never accepts: 3 connections fill its accept queue (queue 3 =
    backlog + 1); 1 more, accepted and closed by its client, sits in CLOSE_WAIT on the listener's port."""
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(2)
    port = server.getsockname()[1]
    clients = []
    first = socket.create_connection(('127.0.0.1', port))
    accepted, _ = server.accept()
    first.close()  # the accepted side: CLOSE_WAIT
    for _ in range(3):
        clients.append(socket.create_connection(('127.0.0.1', port)))
    time.sleep(0.3)
    yield port
    for sock in clients + [accepted, server]:
        sock.close()


@pytest.fixture(scope='module')
def real_ports(held_port):
    code, out, err = run_counter('ports')
    assert code == 0 and err == '', (code, err)
    return json.loads(out)


def _rules(ytemplate):
    return dict((rule['key'], rule) for rule in ytemplate['discovery_rules'])


def _ports_master(yitems):
    masters = [key for key in yitems if key.startswith(PORTS_KEY + '[')]
    assert len(masters) == 1, masters
    return yitems[masters[0]]


def test_ports_master_is_the_tables_ports_key(yitems):
    master = _ports_master(yitems)
    # The master asks the agent's ports key: every listening port, the remote ports of a macro, at most MAX_PORTS.
    assert master['key'] == PORTS_KEY + '[,"{$TCP.PORT.REMOTE}",,{$TCP.PORT.MAX}]'
    assert master['type'] == 'ZABBIX_PASSIVE' and master['value_type'] == 'TEXT'
    assert master['history'] == '0' and master['trends'] == '0' and ('component', 'raw') in _tags(master)
    assert [s['type'] for s in master['preprocessing']] == ['CHECK_REGEX_ERROR']
    # The agent answers it with the parameters the template passes (empty remote list, the default MAX_PORTS).
    code, out, err = run_counter('ports', '', '', '', '100')
    assert code == 0 and err == '' and set(json.loads(out)) == {'ports', 'remote', 'truncated', 'listen_overflows',
                                                                 'listen_drops'}
    pattern = master['preprocessing'][0]['parameters'][0]
    assert re.match(pattern, out) is None and re.match(pattern, 'tcp_status: bad MAX_PORTS') is not None


def test_discovery_rules_are_dependent_on_the_master(ytemplate, yitems):
    master = _ports_master(yitems)['key']
    rules = _rules(ytemplate)
    assert sorted(rules) == sorted([DISCOVERY_KEY, DISCOVERY_KEY + '[,"{$TCP.PORT.REMOTE}"]'])
    for key, rule in rules.items():
        assert rule['type'] == 'DEPENDENT' and rule['delay'] == '0' and rule['master_item'] == {'key': master}
        assert rule['lifetime'] == '{$TCP.PORT.LIFETIME}'
        assert rule['lld_macro_paths'] == [{'lld_macro': '{#PORT}', 'path': '$.port'},
                                           {'lld_macro': '{#SERVICE}', 'path': '$.service'}]
        # The rows, then only their ports and names in port order, passed on when they changed or after an hour
        # (the e2e proves on the real servers that a new port is discovered and a closed one goes).
        assert [s['type'] for s in rule['preprocessing']] == ['JSONPATH', 'JAVASCRIPT', 'DISCARD_UNCHANGED_HEARTBEAT']
        assert rule['preprocessing'][0]['error_handler'] == 'CUSTOM_ERROR'
        assert 'row.port' in rule['preprocessing'][1]['parameters'][0]
        assert rule['preprocessing'][2]['parameters'] == ['1h']
    local = rules[DISCOVERY_KEY]
    assert local['filter']['evaltype'] == 'AND'
    assert [(c['macro'], c['value'], c.get('operator', 'MATCHES_REGEX')) for c in local['filter']['conditions']] == [
        ('{#PORT}', '{$TCP.PORT.MATCHES}', 'MATCHES_REGEX'), ('{#PORT}', '{$TCP.PORT.NOT_MATCHES}', 'NOT_MATCHES_REGEX')]


def test_discovery_finds_the_scripts_ports(ytemplate, real_ports, held_port):
    """The rule's JSONPath and macro paths on the real answer give one row per listening port, the same ports the
    script's discovery form (the 3.4 rule) lists."""
    local = _rules(ytemplate)[DISCOVERY_KEY]
    path = local['preprocessing'][0]['parameters'][0]
    assert path == '$.ports'
    array = real_ports[path[2:]]
    rows = [dict((m['lld_macro'], str(entry[m['path'][2:]])) for m in local['lld_macro_paths']) for entry in array]
    assert {'{#PORT}': str(held_port), '{#SERVICE}': ''} in rows
    listening_before = _listening_ports()
    code, out, err = run_counter('discovery')
    listening_after = _listening_ports()
    assert code == 0 and err == ''
    lld = json.loads(out)['data']
    assert str(held_port) in [row['{#PORT}'] for row in lld]
    assert set(row['{#SIDE}'] for row in lld) == {'local'}
    # Every port the discovery form lists was listening just before or just after it ran (other tests' listeners
    # come and go on a busy machine, so the two answers are not compared by count).
    assert set(int(row['{#PORT}']) for row in lld) <= listening_before | listening_after


def _listening_ports():
    return set(lport for _family, state, lport, _rport in ss_sockets() if state == 'LISTEN')


def test_port_prototypes_read_the_real_answer(ytemplate, yitems, real_ports, held_port):
    """Every prototype's JSONPath, {#PORT} resolved to the held port, gives the number ss would: 1 CLOSE_WAIT, a
    full accept queue of 3 over a backlog of 2; each state key is the agent's own count key for that port, and the
    agent's answer for it is the same number."""
    master = _ports_master(yitems)['key']
    local = _rules(ytemplate)[DISCOVERY_KEY]
    keys = [item['key'] for item in local['item_prototypes']]
    for state in ('ESTABLISHED', 'SYN_RECV', 'TIME_WAIT', 'CLOSE_WAIT'):
        assert '{0}[{1},{{#PORT}}]'.format(COUNT_KEY, state) in keys
    assert COUNT_KEY + '.queue[{#PORT}]' in keys and COUNT_KEY + '.backlog[{#PORT}]' in keys
    values = {}
    for item in local['item_prototypes']:
        assert item['type'] == 'DEPENDENT' and item['master_item'] == {'key': master} and item['history'] != '0'
        step = item['preprocessing'][0]
        assert step['type'] == 'JSONPATH' and step['error_handler'] == 'DISCARD_VALUE'
        values[item['key']] = port_jsonpath(real_ports, step['parameters'][0], held_port)
        assert isinstance(values[item['key']], int), item['key']
        # A port not in the answer (one that stopped listening) matches nothing: the value is discarded.
        assert port_jsonpath(real_ports, step['parameters'][0], 0) is None
        assert ('port', '{#PORT}') in _tags(item)
    assert values[COUNT_KEY + '[CLOSE_WAIT,{#PORT}]'] == 1
    assert values[COUNT_KEY + '.queue[{#PORT}]'] == 3 and values[COUNT_KEY + '.backlog[{#PORT}]'] == 2
    for key, value in values.items():
        match = re.match(r'^' + re.escape(COUNT_KEY) + r'\[([A-Z_0-9]+),\{#PORT\}\]$', key)
        if match:
            code, out, err = run_counter(match.group(1), str(held_port))
            assert code == 0 and int(out) == value, (key, out, err)


def test_remote_prototypes_read_the_real_answer(ytemplate, held_port):
    remote = _rules(ytemplate)[DISCOVERY_KEY + '[,"{$TCP.PORT.REMOTE}"]']
    code, out, err = run_counter('ports', '', str(held_port))
    assert code == 0, err
    answer = json.loads(out)
    for item in remote['item_prototypes']:
        match = re.match(r'^' + re.escape(COUNT_KEY) + r'\[([A-Z_0-9]+),,\{#PORT\}\]$', item['key'])
        assert match, item['key']
        value = port_jsonpath(answer, item['preprocessing'][0]['parameters'][0], held_port)
        code, out, err = run_counter(match.group(1), '', str(held_port))
        assert code == 0 and int(out) == value, (item['key'], value, out)
        if match.group(1) == 'ESTABLISHED':
            assert value == 3  # the three clients of the full queue (the fourth closed)


def test_listen_counters_are_rates(yitems, real_ports):
    master = _ports_master(yitems)['key']
    for key, field in ((COUNT_KEY + '.listen_overflows', 'listen_overflows'),
                       (COUNT_KEY + '.listen_drops', 'listen_drops')):
        item = yitems[key]
        assert item['master_item'] == {'key': master} and item['value_type'] == 'FLOAT'
        assert [s['type'] for s in item['preprocessing']] == ['JSONPATH', 'CHANGE_PER_SECOND']
        assert item['preprocessing'][0]['parameters'] == ['$.' + field]
        assert isinstance(real_ports[field], int) and real_ports[field] >= 0


def test_port_triggers_use_context_macros(ytemplate, y, yitems):
    rules = _rules(ytemplate)
    local = rules[DISCOVERY_KEY]
    prototypes = list(local.get('trigger_prototypes', []))
    for item in local['item_prototypes']:
        prototypes.extend(item.get('trigger_prototypes', []))
    keys = set(item['key'] for item in local['item_prototypes'])
    defined = set(m['macro'] for m in ytemplate['macros'])
    assert len(prototypes) == 2
    exprs = ' '.join(t['expression'] for t in prototypes)
    # Thresholds per port: a context macro each, so one port can be tuned alone.
    assert '{$TCP.PORT.QUEUE.PCT.MAX:"{#PORT}"}' in exprs and '{$TCP.PORT.CLOSE_WAIT.MAX:"{#PORT}"}' in exprs
    assert 'queue[{#PORT}]' in exprs and 'backlog[{#PORT}]' in exprs
    for trigger in prototypes:
        for _name, host, key, _param in FUNC_60_RE.findall(trigger['expression']):
            assert host == TEMPLATE and key in keys, key
        assert _macros_used(trigger['expression']) <= defined
        name, event = trigger['name'], trigger['event_name']
        assert re.match(r'^TCP port \{#PORT\}: [A-Z]', name) and '(' not in name, name
        assert event.startswith(name + ' (') and _macros_used(trigger['expression']) <= _macros_used(event)
        assert [tag for tag, _ in _tags(trigger)] == ['scope'] and _tags(trigger)[0][1] in SCOPES
    # The host-level ListenDrops trigger.
    drops = [t for t in yaml_triggers(ytemplate, y) if t['uuid'] not in STATE_TRIGGER_UUIDS]
    assert len(drops) == 1 and COUNT_KEY + '.listen_drops' in drops[0]['expression']


def test_graph_prototypes(ytemplate):
    for rule in ytemplate['discovery_rules']:
        keys = set(item['key'] for item in rule['item_prototypes'])
        graphs = rule['graph_prototypes']
        assert len(graphs) == 1 and '{#PORT}' in graphs[0]['name']
        assert all(gi['item']['host'] == TEMPLATE and gi['item']['key'] in keys for gi in graphs[0]['graph_items'])


XML_RULE_REQUIRED = ['name', 'type', 'snmp_community', 'snmp_oid', 'key', 'delay', 'status', 'allowed_hosts',
                     'snmpv3_contextname', 'snmpv3_securityname', 'snmpv3_securitylevel', 'snmpv3_authprotocol',
                     'snmpv3_authpassphrase', 'snmpv3_privprotocol', 'snmpv3_privpassphrase', 'params',
                     'ipmi_sensor', 'authtype', 'username', 'password', 'publickey', 'privatekey', 'port', 'filter',
                     'lifetime', 'description', 'item_prototypes', 'trigger_prototypes', 'graph_prototypes',
                     'host_prototypes', 'jmx_endpoint']


def test_xml_discovery_is_an_agent_rule_on_the_discovery_key(x, ytemplate, real_ports, held_port):
    """3.4: agent discovery rules on the table's discovery key, no "does not match" filter (4.0+). Per listening
    port one agent item prototype, the per-port key filtered to that port, and the YAML's prototypes (the same
    keys: states, accept queue and limit) dependent on it, each a plain JSONPath into the answer's one entry that
    reads, on the real script's answer for the held port, what the YAML's prototypes read from the host-wide one;
    per remote port, agent item prototypes on the count key."""
    rules = x.findall('./templates/template/discovery_rules/discovery_rule')
    yrules = _rules(ytemplate)
    assert sorted(r.findtext('key') for r in rules) == sorted(yrules)
    code, out, err = run_counter('ports', str(held_port))
    assert code == 0 and err == '', (code, err)
    one_port = json.loads(out)
    assert [entry['port'] for entry in one_port['ports']] == [held_port]
    for rule in rules:
        assert [tag for tag in XML_RULE_REQUIRED if rule.find(tag) is None] == []
        assert rule.findtext('type') == '0' and rule.findtext('lifetime') == '{$TCP.PORT.LIFETIME}'
        assert set(c.findtext('operator') for c in rule.findall('filter/conditions/condition')) == {'8'}
        protos = rule.findall('item_prototypes/item_prototype')
        for proto in protos:
            missing = [tag for tag in ('application_prototypes', 'master_item_prototype', 'preprocessing')
                       if proto.find(tag) is None]
            assert not missing
        keys = [p.findtext('key') for p in protos]
        yprotos = yrules[rule.findtext('key')]['item_prototypes']
        if rule.findtext('key') == DISCOVERY_KEY:
            master = PORTS_KEY + '[{#PORT}]'
            assert keys == [master] + [i['key'] for i in yprotos]
            assert protos[0].findtext('type') == '0' and protos[0].findtext('value_type') == '4'
            for proto, yproto in zip(protos[1:], yprotos):
                assert proto.findtext('type') == '18' and proto.findtext('master_item_prototype/key') == master
                path = proto.findtext('preprocessing/step/params')
                assert proto.findtext('preprocessing/step/type') == '12' and path.startswith('$.ports[0].')
                value = one_port['ports'][0]
                for part in path[len('$.ports[0].'):].split('.'):
                    value = value[part]
                assert value == port_jsonpath(real_ports, yproto['preprocessing'][0]['parameters'][0], held_port)
        else:
            assert keys == [i['key'] for i in yprotos if i['key'].startswith(COUNT_KEY + '[')]
            assert set(p.findtext('type') for p in protos) == {'0'}
        for trigger in rule.findall('trigger_prototypes/trigger_prototype'):
            for host, key, _name, _param in FUNC_34_RE.findall(trigger.findtext('expression')):
                assert host == TEMPLATE and key in keys
    # The agent answers the rule's key in the LLD format with the data wrapper, for both sides.
    code, out, err = run_counter('discovery', '', '22')
    rows = json.loads(out)['data']
    assert code == 0 and {'{#PORT}': '22', '{#SERVICE}': 'ssh', '{#SIDE}': 'remote'} in rows


def test_a_wrong_jsonpath_is_caught(real_ports, held_port):
    """The checks above can fail: a JSONPath with a misspelt field or the wrong array finds nothing."""
    assert port_jsonpath(real_ports, '$.ports[?(@.port=={#PORT})].states.CLOSEWAIT.first()', held_port) is None
    assert port_jsonpath(real_ports, '$.remote[?(@.port=={#PORT})].queue.first()', held_port) is None
    with pytest.raises(AssertionError):
        port_jsonpath(real_ports, '$.ports[0].queue', held_port)
