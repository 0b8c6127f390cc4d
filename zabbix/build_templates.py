#!/usr/bin/env python3
"""Write the "TCP connection states" template in the two formats users import.

One description of the template (below) produces both files, so they cannot drift apart:

    zabbix/template_tcp_status.yaml     Zabbix 6.0 YAML export (imports into 6.0 and later)
    zabbix/template_tcp_status_3.4.xml  Zabbix 3.4 XML export (imports into 3.4 up to 5.x, and later)

Run it after changing the template:  python3 zabbix/build_templates.py
Check that the committed files are current:  python3 zabbix/build_templates.py --check
(tests/zabbix_server/test_template.py runs the check).

The item keys come from the role's item table and the state names from the counter (zabbix/role_items.py), so
the template cannot drift from what the role installs.

Controller-side tool: Python 3 with PyYAML and Jinja2 (any Ansible controller has both; run it with the repo's
venv: .venv/bin/python zabbix/build_templates.py).
"""

import argparse
import hashlib
import os
import sys
import uuid
import xml.etree.ElementTree as ET
from xml.dom import minidom

import role_items

HERE = os.path.dirname(os.path.abspath(__file__))
YAML_FILE = os.path.join(HERE, 'template_tcp_status.yaml')
XML_FILE = os.path.join(HERE, 'template_tcp_status_3.4.xml')

TEMPLATE = 'TCP connection states'
GROUP = 'Templates'
# The master item: the item table's key that answers every state as one JSON object.
MASTER_KEY = role_items.item('states')['key']
# The key of each state's item is the recipe's agent key, so that items, triggers, graphs and dashboards
# built on tcp.status[ESTABLISHED], tcp.status[TIME_WAIT] and tcp.status[LISTEN] keep working.  Here they
# are dependent items: one agent call per interval feeds all eleven.
STATE_KEY = role_items.item('count')['key'] + '[{0}]'

# How each state looks in the template: its graph colour and its description.
STATE_LOOKS = [
    ('ESTABLISHED', '1A7C11', 'an open connection; data flows both ways.'),
    ('SYN_SENT', 'F63100', 'we sent a SYN (connect() in progress) and wait for the SYN-ACK; many point at '
                           'unreachable peers or an outgoing scan.'),
    ('SYN_RECV', 'FF0000', 'a SYN arrived and we answered SYN-ACK, waiting for the final ACK; many at once '
                           'mean a SYN flood or a slow accept queue.'),
    ('FIN_WAIT1', '2774A4', 'we closed and sent a FIN, waiting for its ACK.'),
    ('FIN_WAIT2', 'A54F10', 'our FIN was acknowledged, waiting for the peer to close its side.'),
    ('TIME_WAIT', 'FC6EA3', 'we closed first; the socket lingers 2*MSL (60 s on Linux) so that late segments '
                            'die; many use up local ports.'),
    ('CLOSE', '6C59DC', 'closed (bound or unused sockets, and the instant before a socket is freed).'),
    ('CLOSE_WAIT', 'AC8C14', 'the peer closed; waiting for our application to call close(): a growing count '
                             'is an application leaking sockets.'),
    ('LAST_ACK', '611F27', 'the peer closed, then we closed; waiting for the ACK of our FIN.'),
    ('LISTEN', '00AA00', 'a server socket waiting for incoming connections.'),
    ('CLOSING', '888888', 'both sides closed at the same time; waiting for the ACK of our FIN.'),
]


def _states():
    """[(state, colour, description)] for the counter's states, in the counter's (the kernel's) order."""
    looks = dict((state, (colour, text)) for state, colour, text in STATE_LOOKS)
    missing = [state for state in role_items.states() if state not in looks]
    if missing or len(looks) != len(role_items.states()):
        raise SystemExit('build_templates.py: STATE_LOOKS does not match the counter\'s states (missing: {0})'.format(
            ', '.join(missing) or 'none; extra states here'))
    return [(state,) + looks[state] for state in role_items.states()]


# The 11 states in the kernel's order (include/net/tcp_states.h), named as netstat and the counter name them.
STATES = _states()

MACROS = [
    ('{$TCP.STATUS.INTERVAL}', '1m', 'How often the agent counts all states (one call feeds every item).'),
    ('{$TCP.STATUS.NODATA}', '5m', 'No value of the all-states item for this long means the script is broken.'),
    ('{$TCP.TIME_WAIT.MAX}', '5000', 'TIME_WAIT sockets above this for {$TCP.TIME_WAIT.PERIOD} raise a problem.'),
    ('{$TCP.TIME_WAIT.PERIOD}', '5m', 'How long TIME_WAIT must stay above {$TCP.TIME_WAIT.MAX}.'),
    ('{$TCP.CLOSE_WAIT.MAX}', '100', 'CLOSE_WAIT sockets above this for {$TCP.CLOSE_WAIT.PERIOD} raise a problem.'),
    ('{$TCP.CLOSE_WAIT.PERIOD}', '10m', 'How long CLOSE_WAIT must stay above {$TCP.CLOSE_WAIT.MAX} and grow.'),
    ('{$TCP.SYN_RECV.MAX}', '200', 'SYN_RECV sockets above this for {$TCP.SYN_RECV.PERIOD} raise a problem.'),
    ('{$TCP.SYN_RECV.PERIOD}', '2m', 'How long SYN_RECV must stay above {$TCP.SYN_RECV.MAX}.'),
    ('{$TCP.LISTEN.MIN}', '1', 'Fewer listening sockets than this for {$TCP.LISTEN.PERIOD} raise a problem; '
                               'set it per host to the number of listeners the host must have, 0 turns it off.'),
    ('{$TCP.LISTEN.PERIOD}', '5m', 'How long listeners must stay below {$TCP.LISTEN.MIN}.'),
]

# The master item's check: anything that is not a JSON object (the agent returns the script's error line as the
# value, e.g. after a bad argument or a missing interpreter) makes the item unsupported with that line as the
# error, instead of feeding text to the eleven JSONPath steps.
NOT_JSON_PATTERN = r'^(?!\s*\{)(.*)'
NOT_JSON_OUTPUT = r'tcp_status script did not return JSON: \1'

# Triggers. 'expr' uses {F}(key, param) placeholders written once and rendered per format by _expr().
TRIGGERS = [
    {
        'id': 'time_wait',
        'name': 'Many TCP sockets in TIME_WAIT (over {$TCP.TIME_WAIT.MAX} for {$TCP.TIME_WAIT.PERIOD})',
        'parts': [('min', 'TIME_WAIT', '{$TCP.TIME_WAIT.PERIOD}', '>', '{$TCP.TIME_WAIT.MAX}')],
        'priority': 'WARNING',
        'description': 'Connections closed by this host stay in TIME_WAIT for 60 s and hold a local port each. '
                       'Thousands of them toward one destination exhaust the ephemeral port range '
                       '(net.ipv4.ip_local_port_range): use keep-alive or connection pools, let the peer close '
                       'first.',
    },
    {
        'id': 'close_wait',
        'name': 'TCP sockets pile up in CLOSE_WAIT (over {$TCP.CLOSE_WAIT.MAX} for {$TCP.CLOSE_WAIT.PERIOD} '
                'and not draining)',
        # Above the threshold for the whole period, and the latest count is not below the period's average:
        # the pile is not draining. A healthy application closes within milliseconds, so CLOSE_WAIT stays
        # near zero; a leak only grows.
        'parts': [('min', 'CLOSE_WAIT', '{$TCP.CLOSE_WAIT.PERIOD}', '>', '{$TCP.CLOSE_WAIT.MAX}'),
                  'and',
                  ('last', 'CLOSE_WAIT', None, '>=', ('avg', 'CLOSE_WAIT', '{$TCP.CLOSE_WAIT.PERIOD}'))],
        'priority': 'AVERAGE',
        'description': 'The peers closed these connections but the local application never called close(): '
                       'a socket (file descriptor) leak. Find the process with: ss -tanp state close-wait.',
    },
    {
        'id': 'syn_recv',
        'name': 'Possible SYN flood: over {$TCP.SYN_RECV.MAX} TCP sockets in SYN_RECV for {$TCP.SYN_RECV.PERIOD}',
        'parts': [('min', 'SYN_RECV', '{$TCP.SYN_RECV.PERIOD}', '>', '{$TCP.SYN_RECV.MAX}')],
        'priority': 'AVERAGE',
        'description': 'Half-open incoming handshakes that never complete: a SYN flood, or an application '
                       'too slow to accept(). Check net.ipv4.tcp_syncookies and the listen backlog.',
    },
    {
        'id': 'listen',
        'name': 'Fewer than {$TCP.LISTEN.MIN} listening TCP sockets for {$TCP.LISTEN.PERIOD}',
        'parts': [('max', 'LISTEN', '{$TCP.LISTEN.PERIOD}', '<', '{$TCP.LISTEN.MIN}')],
        'priority': 'HIGH',
        'description': 'The services expected to listen on this host are gone. Set {$TCP.LISTEN.MIN} on the '
                       'host to the number of listening sockets it must have (ss -Htln | wc -l when healthy).',
    },
    {
        'id': 'nodata',
        'name': 'TCP state counter sends no data for {$TCP.STATUS.NODATA} (script broken or item unsupported)',
        'parts': [('nodata', None, '{$TCP.STATUS.NODATA}', '=', '1')],
        'priority': 'AVERAGE',
        'description': 'The item ' + MASTER_KEY + ' got no valid value: the agent lost its UserParameter, '
                       'the script fails (see the item\'s error: the script\'s own message), or the agent is '
                       'down. Test on the host: zabbix_agentd -t ' + MASTER_KEY + '; from the server: '
                       'zabbix_get -s HOST -k ' + MASTER_KEY + '. On servers before 5.4, nodata() does not '
                       'fire for an unsupported item: watch the item state there.',
    },
]

GRAPH_NAME = 'TCP connection states'

TEMPLATE_DESCRIPTION = (
    'Counts the host\'s TCP sockets in each state (IPv4 and IPv6) with one agent call per interval: the '
    'agent runs the tcp_status script (UserParameter ' + MASTER_KEY + ', installed by the Ansible role '
    'zabbix_tcp_status), which answers all states as one JSON object; eleven dependent items take one state '
    'each. They keep the recipe\'s keys tcp.status[STATE], so existing items, triggers and graphs on '
    'tcp.status[ESTABLISHED], tcp.status[TIME_WAIT] and tcp.status[LISTEN] keep working.\n'
    '\n'
    'The states:\n'
    + ''.join('{0}: {1}\n'.format(name, text[0].upper() + text[1:]) for name, _, text in STATES)
    + '\n'
    'Thresholds are user macros ({$TCP.*}); override them per host. Ports or families can be counted '
    'separately with tcp.status[STATE,LOCAL_PORTS,REMOTE_PORTS,FAMILY] agent items.'
)


def _uuid(*parts):
    """A stable uuid (version-4 layout, as Zabbix expects) derived from the object's identity."""
    digest = hashlib.md5('/'.join((TEMPLATE,) + parts).encode('utf-8')).digest()
    return uuid.UUID(bytes=digest, version=4).hex


def _func(fmt, name, state, param):
    key = MASTER_KEY if state is None else STATE_KEY.format(state)
    if fmt == '6.0':
        args = '/{0}/{1}'.format(TEMPLATE, key) + ('' if param is None else ',' + param)
        return '{0}({1})'.format(name, args)
    return '{{{0}:{1}.{2}({3})}}'.format(TEMPLATE, key, name, '' if param is None else param)


def _expr(fmt, parts):
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        name, state, param, op, right = part
        if isinstance(right, tuple):
            right = _func(fmt, right[0], right[1], right[2])
        out.append('{0}{1}{2}'.format(_func(fmt, name, state, param), op, right))
    return ' '.join(out)


def _trigger_items(trigger):
    """The item keys a trigger reads (the first one carries the trigger in the 6.0 export)."""
    keys = []
    for part in trigger['parts']:
        if isinstance(part, str):
            continue
        for state in (part[1],) + ((part[4][1],) if isinstance(part[4], tuple) else ()):
            key = MASTER_KEY if state is None else STATE_KEY.format(state)
            if key not in keys:
                keys.append(key)
    return keys


def _state_description(state, text):
    return 'Number of TCP sockets in {0}: {1}'.format(state, text)


# ---------------------------------------------------------------------------------------------------------
# Zabbix 6.0 YAML


def model_60():
    """The template as the Zabbix 6.0 export structure (plain dicts and lists, all scalars strings)."""
    master = {
        'uuid': _uuid('item', MASTER_KEY),
        'name': 'TCP states: all states (JSON)',
        'type': 'ZABBIX_PASSIVE',
        'key': MASTER_KEY,
        'delay': '{$TCP.STATUS.INTERVAL}',
        'history': '1h',
        'trends': '0',
        'value_type': 'TEXT',
        'description': 'All TCP state counts in one agent call, as a JSON object {"ESTABLISHED":n,...}; the '
                       'dependent items tcp.status[STATE] take their values from it. Kept one hour only.',
        'preprocessing': [{
            'type': 'CHECK_REGEX_ERROR',
            'parameters': [NOT_JSON_PATTERN, NOT_JSON_OUTPUT],
        }],
        'tags': [{'tag': 'component', 'value': 'network'}],
    }
    items = [master]
    for state, _, text in STATES:
        items.append({
            'uuid': _uuid('item', STATE_KEY.format(state)),
            'name': 'TCP states: {0}'.format(state),
            'type': 'DEPENDENT',
            'key': STATE_KEY.format(state),
            'delay': '0',
            'history': '7d',
            'trends': '365d',
            'value_type': 'UNSIGNED',
            'description': _state_description(state, text),
            'preprocessing': [{'type': 'JSONPATH', 'parameters': ['$.' + state]}],
            'master_item': {'key': MASTER_KEY},
            'tags': [{'tag': 'component', 'value': 'network'}],
        })
    by_key = dict((item['key'], item) for item in items)
    for trigger in TRIGGERS:
        owner = by_key[_trigger_items(trigger)[0]]
        owner.setdefault('triggers', []).append({
            'uuid': _uuid('trigger', trigger['id']),
            'expression': _expr('6.0', trigger['parts']),
            'name': trigger['name'],
            'priority': trigger['priority'],
            'description': trigger['description'],
            'tags': [{'tag': 'scope', 'value': 'availability' if trigger['id'] in ('listen', 'nodata')
                      else 'performance'}],
        })
    return {'zabbix_export': {
        'version': '6.0',
        'date': '2026-11-25T00:00:00Z',
        'groups': [{'uuid': _uuid('group', GROUP), 'name': GROUP}],
        'templates': [{
            'uuid': _uuid('template'),
            'template': TEMPLATE,
            'name': TEMPLATE,
            'description': TEMPLATE_DESCRIPTION,
            'groups': [{'name': GROUP}],
            'items': items,
            'tags': [{'tag': 'class', 'value': 'os'}, {'tag': 'target', 'value': 'linux'}],
            'macros': [{'macro': m, 'value': v, 'description': d} for m, v, d in sorted(MACROS)],
        }],
        'graphs': [{
            'uuid': _uuid('graph', GRAPH_NAME),
            'name': GRAPH_NAME,
            'type': 'STACKED',
            'graph_items': [{
                'sortorder': str(i),
                'color': color,
                'item': {'host': TEMPLATE, 'key': STATE_KEY.format(state)},
            } for i, (state, color, _) in enumerate(STATES)],
        }],
    }}


# Zabbix leaves a field out of its export when it has the default value, and configuration.importcompare
# (used by community.zabbix to decide "changed") reports a difference when a file spells a default out.
ITEM_DEFAULTS = {'type': 'ZABBIX_PASSIVE', 'value_type': 'UNSIGNED', 'trends': '365d', 'history': '90d',
                 'delay': '1m'}
GRAPH_ITEM_DEFAULTS = {'sortorder': '0'}


def _drop_defaults(export):
    for template in export['zabbix_export']['templates']:
        for item in template['items']:
            for key, value in ITEM_DEFAULTS.items():
                if item.get(key) == value:
                    del item[key]
    for graph in export['zabbix_export']['graphs']:
        for graph_item in graph['graph_items']:
            for key, value in GRAPH_ITEM_DEFAULTS.items():
                if graph_item.get(key) == value:
                    del graph_item[key]
    return export


def _yaml_scalar(value):
    if not isinstance(value, str):
        raise TypeError('template values must be strings: {0!r}'.format(value))
    return "'" + value.replace("'", "''") + "'"


def _yaml_lines(node, indent):
    pad = ' ' * indent
    lines = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                lines.append('{0}{1}:'.format(pad, key))
                lines.extend(_yaml_lines(value, indent + 2))
            elif '\n' in value:
                lines.append('{0}{1}: |'.format(pad, key))
                lines.extend((pad + '  ' + line).rstrip() for line in value.rstrip('\n').split('\n'))
            else:
                lines.append('{0}{1}: {2}'.format(pad, key, _yaml_scalar(value)))
    else:
        for value in node:
            if isinstance(value, (dict, list)):
                sub = _yaml_lines(value, indent + 2)
                lines.append(pad + '- ' + sub[0][indent + 2:])
                lines.extend(sub[1:])
            else:
                lines.append('{0}- {1}'.format(pad, _yaml_scalar(value)))
    return lines


def render_yaml():
    head = ['---',
            '# Generated by zabbix/build_templates.py from one description shared with the 3.4 XML: edit that',
            '# script, not this file. Import: Data collection > Templates > Import (Zabbix 6.0 or later).',
            '# yamllint disable rule:line-length']
    return '\n'.join(head + _yaml_lines(_drop_defaults(model_60()), 0)) + '\n'


# ---------------------------------------------------------------------------------------------------------
# Zabbix 3.4 XML (every element the 3.4 importer requires, numeric constants)

ITEM_EMPTY = ['snmp_community', 'snmp_oid']
ITEM_TAIL_EMPTY = ['allowed_hosts']
SNMPV3 = [('snmpv3_contextname', ''), ('snmpv3_securityname', ''), ('snmpv3_securitylevel', '0'),
          ('snmpv3_authprotocol', '0'), ('snmpv3_authpassphrase', ''), ('snmpv3_privprotocol', '0'),
          ('snmpv3_privpassphrase', '')]
PRIORITY_34 = {'WARNING': '2', 'AVERAGE': '3', 'HIGH': '4'}


def _sub(parent, tag, text=None):
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def _xml_item(items, name, type_, key, delay, history, trends, value_type, description, steps, master):
    item = _sub(items, 'item')
    _sub(item, 'name', name)
    _sub(item, 'type', type_)
    for tag in ITEM_EMPTY:
        _sub(item, tag)
    _sub(item, 'key', key)
    _sub(item, 'delay', delay)
    _sub(item, 'history', history)
    _sub(item, 'trends', trends)
    _sub(item, 'status', '0')
    _sub(item, 'value_type', value_type)
    _sub(item, 'allowed_hosts')
    _sub(item, 'units')
    for tag, text in SNMPV3:
        _sub(item, tag, text or None)
    for tag in ('params', 'ipmi_sensor'):
        _sub(item, tag)
    _sub(item, 'authtype', '0')
    for tag in ('username', 'password', 'publickey', 'privatekey', 'port'):
        _sub(item, tag)
    _sub(item, 'description', description)
    _sub(item, 'inventory_link', '0')
    apps = _sub(item, 'applications')
    _sub(_sub(apps, 'application'), 'name', 'TCP states')
    _sub(item, 'valuemap')
    pre = _sub(item, 'preprocessing')
    for step_type, params in steps:
        step = _sub(pre, 'step')
        _sub(step, 'type', step_type)
        _sub(step, 'params', params)
    _sub(item, 'jmx_endpoint')
    master_el = _sub(item, 'master_item')
    if master:
        _sub(master_el, 'key', master)
    _sub(item, 'logtimefmt')


def render_xml():
    root = ET.Element('zabbix_export')
    _sub(root, 'version', '3.4')
    _sub(root, 'date', '2026-11-25T00:00:00Z')
    _sub(_sub(_sub(root, 'groups'), 'group'), 'name', GROUP)
    template = _sub(_sub(root, 'templates'), 'template')
    _sub(template, 'template', TEMPLATE)
    _sub(template, 'name', TEMPLATE)
    _sub(template, 'description', TEMPLATE_DESCRIPTION)
    _sub(template, 'templates')
    _sub(_sub(_sub(template, 'groups'), 'group'), 'name', GROUP)
    _sub(_sub(_sub(template, 'applications'), 'application'), 'name', 'TCP states')
    items = _sub(template, 'items')
    # 3.4 has no validation steps: a regular expression that only matches a JSON object keeps error text out
    # of the JSONPath steps (the item turns unsupported with "pattern does not match").
    _xml_item(items, 'TCP states: all states (JSON)', '0', MASTER_KEY, '{$TCP.STATUS.INTERVAL}', '1h', '0', '4',
              'All TCP state counts in one agent call, as a JSON object; the dependent items tcp.status[STATE] '
              'take their values from it.', [('5', '^(\\{.*\\})\n\\1')], None)
    for state, _, text in STATES:
        # 18 = dependent item, 3 = numeric unsigned, 12 = JSONPath
        _xml_item(items, 'TCP states: {0}'.format(state), '18', STATE_KEY.format(state), '0', '7d', '365d', '3',
                  _state_description(state, text), [('12', '$.' + state)], MASTER_KEY)
    _sub(template, 'discovery_rules')
    _sub(template, 'httptests')
    macros = _sub(template, 'macros')
    for macro, value, _ in sorted(MACROS):
        el = _sub(macros, 'macro')
        _sub(el, 'macro', macro)
        _sub(el, 'value', value)
    _sub(template, 'screens')
    triggers = _sub(root, 'triggers')
    for trigger in TRIGGERS:
        el = _sub(triggers, 'trigger')
        _sub(el, 'expression', _expr('3.4', trigger['parts']))
        _sub(el, 'recovery_mode', '0')
        _sub(el, 'recovery_expression')
        _sub(el, 'name', trigger['name'])
        _sub(el, 'correlation_mode', '0')
        _sub(el, 'correlation_tag')
        _sub(el, 'url')
        _sub(el, 'status', '0')
        _sub(el, 'priority', PRIORITY_34[trigger['priority']])
        _sub(el, 'description', trigger['description'])
        _sub(el, 'type', '0')
        _sub(el, 'manual_close', '0')
        _sub(el, 'dependencies')
        _sub(el, 'tags')
    graph = _sub(_sub(root, 'graphs'), 'graph')
    for tag, text in (('name', GRAPH_NAME), ('width', '900'), ('height', '200'), ('yaxismin', '0.0000'),
                      ('yaxismax', '100.0000'), ('show_work_period', '1'), ('show_triggers', '1'),
                      ('type', '1'), ('show_legend', '1'), ('show_3d', '0'), ('percent_left', '0.0000'),
                      ('percent_right', '0.0000'), ('ymin_type_1', '0'), ('ymax_type_1', '0'),
                      ('ymin_item_1', '0'), ('ymax_item_1', '0')):
        _sub(graph, tag, text)
    gitems = _sub(graph, 'graph_items')
    for i, (state, color, _) in enumerate(STATES):
        gi = _sub(gitems, 'graph_item')
        # drawtype 1 = filled region, calc_fnc 2 = average, type 0 = simple, yaxisside 0 = left
        for tag, text in (('sortorder', str(i)), ('drawtype', '1'), ('color', color), ('yaxisside', '0'),
                          ('calc_fnc', '2'), ('type', '0')):
            _sub(gi, tag, text)
        ref = _sub(gi, 'item')
        _sub(ref, 'host', TEMPLATE)
        _sub(ref, 'key', STATE_KEY.format(state))
    _sub(root, 'value_maps')
    text = minidom.parseString(ET.tostring(root, encoding='unicode')).toprettyxml(indent='    ',
                                                                                    encoding='UTF-8')
    return text.decode('utf-8')


def outputs():
    return {YAML_FILE: render_yaml(), XML_FILE: render_xml()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true', help='fail if the committed files are not current')
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = None
        if os.path.exists(path):
            with open(path, encoding='utf-8') as handle:
                current = handle.read()
        if current == text:
            continue
        if args.check:
            stale.append(os.path.relpath(path))
        else:
            with open(path, 'w', encoding='utf-8') as handle:
                handle.write(text)
            print('wrote ' + os.path.relpath(path))
    if stale:
        sys.stderr.write('not current (run python3 zabbix/build_templates.py): {0}\n'.format(', '.join(stale)))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
