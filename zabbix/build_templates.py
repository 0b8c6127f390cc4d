#!/usr/bin/env python3
"""Write the "TCP connection states" template in the formats users import.

One description of the template (below) produces every file, so they cannot drift apart:

    zabbix/template_tcp_status.yaml      Zabbix 6.0 YAML export (imports into 6.0 up to 6.4, and later)
    zabbix/template_tcp_status_7.0.yaml  Zabbix 7.0 YAML export (the same template in 7.0's format: 7.0
                                         re-imports it without seeing a change, which it does not for the 6.0 file)
    zabbix/template_tcp_status_3.4.xml   Zabbix 3.4 XML export (imports into 3.4 up to 5.x, and later)

The template follows Zabbix's template guidelines where they fit (GUIDELINES below says where it does not, and why);
tests/zabbix_server/test_template.py checks the generated files against them. The model is built in parts (items,
triggers, graphs, dashboards, discovery rules) so that per-port discovery is an addition to it.

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

try:
    import role_items
except ImportError:  # imported as zabbix.build_templates (the tests), not run as a script
    from zabbix import role_items

HERE = os.path.dirname(os.path.abspath(__file__))
YAML_FILE = os.path.join(HERE, 'template_tcp_status.yaml')
YAML_70_FILE = os.path.join(HERE, 'template_tcp_status_7.0.yaml')
XML_FILE = os.path.join(HERE, 'template_tcp_status_3.4.xml')

# The template's technical name is its identity: hosts link to it, trigger expressions name it, and the 3.4-5.x
# importers match on it (6.0+ also match on its uuid, derived from it). It stays as first published. The visible
# name follows the guidelines' "<what> by <collection method>".
TEMPLATE = 'TCP connection states'
VISIBLE_NAME = 'TCP connection states by Zabbix agent'
GROUP = 'Templates'
# Prefix of trigger names (the guidelines: the object first).
OBJECT = 'TCP'
# The master item: the item table's key that answers every state as one JSON object.
MASTER_KEY = role_items.item('states')['key']
# The key of each state's item is the recipe's agent key, so that items, triggers, graphs and dashboards
# built on tcp.status[ESTABLISHED], tcp.status[TIME_WAIT] and tcp.status[LISTEN] keep working.  Here they
# are dependent items: one agent call per interval feeds all eleven.
STATE_KEY = role_items.item('count')['key'] + '[{0}]'

# Per-port monitoring (issue 10): the item table's per-port keys. On Zabbix 4.2+ one agent call of the ports key
# feeds everything (a master item, dependent discovery rules, dependent item prototypes); the 3.4 XML discovers with
# the discovery key (an agent discovery rule) and polls the count key per port.
COUNT_KEY = role_items.item('count')['key']
PORTS_KEY = role_items.item('ports')['key']
DISCOVERY_KEY = role_items.item('discovery')['key']
# The master's key: every listening port (MAX_PORTS at most), and the remote ports of {$TCP.PORT.REMOTE} (a comma
# list, hence quoted). The same parameters go to the 3.4 XML's discovery key.
PORTS_MASTER_KEY = PORTS_KEY + '[,"{$TCP.PORT.REMOTE}",,{$TCP.PORT.MAX}]'
# The 3.4 XML's master item prototype: the per-port answer for the one discovered port (the key's local port
# filter), one agent call per listening port and interval for all of its items.
PORT_MASTER_34_KEY = PORTS_KEY + '[{#PORT}]'
# Per side of a connection: which array of the ports JSON lists the side's ports, the discovery rule's key (the
# table's discovery key; the remote rule asks for the remote ports, as the agent's discovery key takes them), the
# item key of a state on one port (the agent's own count key with the port as its local or remote port filter:
# the same number the agent answers for that key, and on 3.4 the key the agent is asked), and the states shown.
PORT_SIDES = [
    {'side': 'local', 'array': 'ports', 'rule_key': DISCOVERY_KEY, 'rule_key_34': DISCOVERY_KEY,
     'state_key': COUNT_KEY + '[{0},{{#PORT}}]', 'label': 'Port {#PORT}', 'what': 'listening port',
     'states': ['ESTABLISHED', 'SYN_RECV', 'TIME_WAIT', 'CLOSE_WAIT']},
    {'side': 'remote', 'array': 'remote', 'rule_key': DISCOVERY_KEY + '[,"{$TCP.PORT.REMOTE}"]',
     'rule_key_34': DISCOVERY_KEY + '[,"{$TCP.PORT.REMOTE}"]',
     'state_key': COUNT_KEY + '[{0},,{{#PORT}}]', 'label': 'Remote port {#PORT}', 'what': 'remote port',
     'states': ['ESTABLISHED', 'SYN_SENT', 'TIME_WAIT', 'CLOSE_WAIT']},
]
PORT_SIDES_BY_NAME = dict((side['side'], side) for side in PORT_SIDES)
# The accept queue of a listening port's fullest listener, and its limit (the backlog): dependent item prototypes
# (on the ports master in the YAML files, on the port's own master item prototype in the 3.4 XML).
QUEUE_KEY = COUNT_KEY + '.queue[{#PORT}]'
BACKLOG_KEY = COUNT_KEY + '.backlog[{#PORT}]'
# Host-level items of the ports answer (4.2+ and 3.4: plain JSONPath): TcpExt ListenOverflows and ListenDrops as
# rates, and how many listening ports the answer left out (MAX_PORTS).
OVERFLOWS_KEY = COUNT_KEY + '.listen_overflows'
DROPS_KEY = COUNT_KEY + '.listen_drops'
TRUNCATED_KEY = COUNT_KEY + '.ports_truncated'
PORT_GRAPH_NAMES = {'local': 'Port {#PORT}: TCP connections and accept queue',
                    'remote': 'Remote port {#PORT}: TCP connections'}

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
    ('{$TCP.PORT.INTERVAL}', '1m', 'How often the agent counts per port (one call feeds every per-port item and '
                                   'the discovery).'),
    ('{$TCP.PORT.REMOTE}', '', 'Remote ports to count connections to (comma list, e.g. 3306,5432,6379; at most '
                               '100); empty: none.'),
    ('{$TCP.PORT.MAX}', '100', 'The most listening ports the agent reports (the busiest; 1-65536).'),
    ('{$TCP.PORT.MATCHES}', '.*', 'Discover the listening ports that match this regular expression.'),
    ('{$TCP.PORT.NOT_MATCHES}', 'CHANGE_IF_NEEDED', 'Do not discover the listening ports that match this regular '
                                                    'expression (e.g. ^(22|10050)$).'),
    ('{$TCP.PORT.LIFETIME}', '7d', 'How long the items of a port that stopped listening are kept.'),
    ('{$TCP.PORT.QUEUE.PCT.MAX}', '80', 'Accept queue above this percentage of its limit (the backlog) for '
                                        '{$TCP.PORT.QUEUE.PERIOD} raises a problem; per port: '
                                        '{$TCP.PORT.QUEUE.PCT.MAX:"443"}.'),
    ('{$TCP.PORT.QUEUE.PERIOD}', '2m', 'How long an accept queue must stay above {$TCP.PORT.QUEUE.PCT.MAX}.'),
    ('{$TCP.PORT.CLOSE_WAIT.MAX}', '50', 'CLOSE_WAIT sockets of one port above this for {$TCP.PORT.CLOSE_WAIT.PERIOD} '
                                         'raise a problem; per port: {$TCP.PORT.CLOSE_WAIT.MAX:"8080"}.'),
    ('{$TCP.PORT.CLOSE_WAIT.PERIOD}', '10m', 'How long CLOSE_WAIT on a port must stay above '
                                             '{$TCP.PORT.CLOSE_WAIT.MAX} and grow.'),
    ('{$TCP.LISTEN_DROPS.MAX}', '0', 'Connections dropped by listeners (ListenDrops) per second above this for '
                                     '{$TCP.LISTEN_DROPS.PERIOD} raise a problem.'),
    ('{$TCP.LISTEN_DROPS.PERIOD}', '5m', 'How long ListenDrops must stay above {$TCP.LISTEN_DROPS.MAX}.'),
]

# The master item's check: anything that is not a JSON object (the agent returns the script's error line as the
# value, e.g. after a bad argument or a missing interpreter) makes the item unsupported with that line as the
# error, instead of feeding text to the eleven JSONPath steps.
NOT_JSON_PATTERN = r'^(?!\s*\{)(.*)'
NOT_JSON_OUTPUT = r'tcp_status script did not return JSON: \1'

# The state item that carries the "no data" trigger in the YAML files. The master keeps no history there (the
# guidelines), and Zabbix evaluates no trigger function on an item without history: nodata() reads a dependent
# item instead, which gets no value whenever the master gets none or turns unsupported.
NODATA_STATE = 'ESTABLISHED'

# Triggers. 'parts' are ('function', STATE or None for the master, parameter, operator, right side) written once
# and rendered per format by _expr(). 'name' and 'event_name' follow the guidelines (the object first, the
# threshold in the event name); 'name_34' is the name the 3.4 XML has always had: before 6.0 the importer matches
# triggers by name and expression, so a renamed trigger would be imported a second time next to the old one on
# every 3.4-5.x server that imported the XML before. 'depends_on': the triggers a problem of this one implies.
TRIGGERS = [
    {
        'id': 'nodata',
        'name': OBJECT + ': No data from the state counter',
        'event_name': OBJECT + ': No data from the state counter (for {$TCP.STATUS.NODATA}: script broken or '
                               'item unsupported)',
        'name_34': 'TCP state counter sends no data for {$TCP.STATUS.NODATA} (script broken or item unsupported)',
        'parts': [('nodata', NODATA_STATE, '{$TCP.STATUS.NODATA}', '=', '1')],
        'parts_34': [('nodata', None, '{$TCP.STATUS.NODATA}', '=', '1')],
        'priority': 'AVERAGE',
        'scope': 'availability',
        'description': 'The item ' + MASTER_KEY + ' got no valid value, so no state item got one: the agent lost '
                       'its UserParameter, the script fails (see the item\'s error: the script\'s own message), or '
                       'the agent is down. Test on the host: zabbix_agentd -t ' + MASTER_KEY + '; from the server: '
                       'zabbix_get -s HOST -k ' + MASTER_KEY + '.',
    },
    {
        'id': 'time_wait',
        'name': OBJECT + ': Too many sockets in TIME_WAIT',
        'event_name': OBJECT + ': Too many sockets in TIME_WAIT (over {$TCP.TIME_WAIT.MAX} for '
                               '{$TCP.TIME_WAIT.PERIOD})',
        'name_34': 'Many TCP sockets in TIME_WAIT (over {$TCP.TIME_WAIT.MAX} for {$TCP.TIME_WAIT.PERIOD})',
        'parts': [('min', 'TIME_WAIT', '{$TCP.TIME_WAIT.PERIOD}', '>', '{$TCP.TIME_WAIT.MAX}')],
        'priority': 'WARNING',
        'scope': 'capacity',
        'depends_on': ['nodata'],
        'description': 'Connections closed by this host stay in TIME_WAIT for 60 s and hold a local port each. '
                       'Thousands of them toward one destination exhaust the ephemeral port range '
                       '(net.ipv4.ip_local_port_range): use keep-alive or connection pools, let the peer close '
                       'first.',
    },
    {
        'id': 'close_wait',
        'name': OBJECT + ': Sockets pile up in CLOSE_WAIT',
        'event_name': OBJECT + ': Sockets pile up in CLOSE_WAIT (over {$TCP.CLOSE_WAIT.MAX} for '
                               '{$TCP.CLOSE_WAIT.PERIOD} and not draining)',
        'name_34': 'TCP sockets pile up in CLOSE_WAIT (over {$TCP.CLOSE_WAIT.MAX} for {$TCP.CLOSE_WAIT.PERIOD} '
                   'and not draining)',
        # Above the threshold for the whole period, and the latest count is not below the period's average:
        # the pile is not draining. A healthy application closes within milliseconds, so CLOSE_WAIT stays
        # near zero; a leak only grows.
        'parts': [('min', 'CLOSE_WAIT', '{$TCP.CLOSE_WAIT.PERIOD}', '>', '{$TCP.CLOSE_WAIT.MAX}'),
                  'and',
                  ('last', 'CLOSE_WAIT', None, '>=', ('avg', 'CLOSE_WAIT', '{$TCP.CLOSE_WAIT.PERIOD}'))],
        'priority': 'AVERAGE',
        'scope': 'performance',
        'depends_on': ['nodata'],
        'description': 'The peers closed these connections but the local application never called close(): '
                       'a socket (file descriptor) leak. Find the process with: ss -tanp state close-wait.',
    },
    {
        'id': 'syn_recv',
        'name': OBJECT + ': Possible SYN flood',
        'event_name': OBJECT + ': Possible SYN flood (over {$TCP.SYN_RECV.MAX} sockets in SYN_RECV for '
                               '{$TCP.SYN_RECV.PERIOD})',
        'name_34': 'Possible SYN flood: over {$TCP.SYN_RECV.MAX} TCP sockets in SYN_RECV for {$TCP.SYN_RECV.PERIOD}',
        'parts': [('min', 'SYN_RECV', '{$TCP.SYN_RECV.PERIOD}', '>', '{$TCP.SYN_RECV.MAX}')],
        'priority': 'AVERAGE',
        'scope': 'security',
        'depends_on': ['nodata'],
        'description': 'Half-open incoming handshakes that never complete: a SYN flood, or an application '
                       'too slow to accept(). Check net.ipv4.tcp_syncookies and the listen backlog.',
    },
    {
        'id': 'listen',
        'name': OBJECT + ': Too few listening sockets',
        'event_name': OBJECT + ': Too few listening sockets (under {$TCP.LISTEN.MIN} for {$TCP.LISTEN.PERIOD})',
        'name_34': 'Fewer than {$TCP.LISTEN.MIN} listening TCP sockets for {$TCP.LISTEN.PERIOD}',
        'parts': [('max', 'LISTEN', '{$TCP.LISTEN.PERIOD}', '<', '{$TCP.LISTEN.MIN}')],
        'priority': 'HIGH',
        'scope': 'availability',
        'depends_on': ['nodata'],
        'description': 'The services expected to listen on this host are gone. Set {$TCP.LISTEN.MIN} on the '
                       'host to the number of listening sockets it must have (ss -Htln | wc -l when healthy).',
    },
]
TRIGGERS_BY_ID = dict((trigger['id'], trigger) for trigger in TRIGGERS)

# The guidelines this template does not follow, and why (docs/TEMPLATE.md repeats them; the test checks that
# every rule it cannot find followed is named here).
GUIDELINES_NOT_FOLLOWED = {
    'item_keys': 'The state items keep the recipe\'s agent keys tcp.status[STATE] (dependent items would be named '
                 'freely): items, triggers, graphs and dashboards that users built on tcp.status[ESTABLISHED], '
                 'tcp.status[TIME_WAIT] and tcp.status[LISTEN] keep working, and linking the template takes over '
                 'an existing recipe item with its history.',
    'template_name': 'The technical name stays "TCP connection states" (the visible name follows the guidelines): '
                     'hosts, the registration role and 3.4-5.x importers find the template by it.',
    'discard_unchanged': 'No DISCARD_UNCHANGED_HEARTBEAT on the state items: every one is drawn in the stacked '
                         'graph, and the triggers read min()/max()/avg() over a period, which need values inside '
                         'the period; a count that stays the same for long is the normal case here, not a sign '
                         'of a value that rarely changes (the master item, which keeps no history, is the one '
                         'that saves the database).',
    'xml_34': 'The 3.4 XML (for 3.4-5.x servers) keeps the first published trigger names, the master\'s one hour '
              'of history and its nodata() on the master: the format has no event names, no validation steps, '
              'no error handlers and no tags on items, and its importer matches triggers by name.',
}

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
    'separately with tcp.status[STATE,LOCAL_PORTS,REMOTE_PORTS,FAMILY] agent items.\n'
    '\n'
    'Per port: one more agent call (' + PORTS_KEY + ') feeds the discovery of every listening port (and of the '
    'remote ports listed in {$TCP.PORT.REMOTE}): its connections by state, its accept queue and limit, a trigger '
    'when the accept queue stays nearly full (the application does not accept() fast enough) and one when '
    'CLOSE_WAIT piles up on the port; thresholds per port with context macros, e.g. '
    '{$TCP.PORT.QUEUE.PCT.MAX:"443"}. The host\'s ListenOverflows and ListenDrops as rates.'
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
# Zabbix 6.0 and 7.0 YAML: one model, built in parts


def _fmt(version):
    """Trigger expression syntax: 6.0 and later share it."""
    return '6.0'


def _master_item():
    return {
        'uuid': _uuid('item', MASTER_KEY),
        'name': 'Get TCP state counts',
        'type': 'ZABBIX_PASSIVE',
        'key': MASTER_KEY,
        'delay': '{$TCP.STATUS.INTERVAL}',
        # The guidelines: a master item keeps no history; its dependent items keep the values.
        'history': '0',
        'trends': '0',
        'value_type': 'TEXT',
        'description': 'All TCP state counts in one agent call, as a JSON object {"ESTABLISHED":n,...}; the '
                       'dependent items tcp.status[STATE] take their values from it. Not stored.',
        'preprocessing': [{
            'type': 'CHECK_REGEX_ERROR',
            'parameters': [NOT_JSON_PATTERN, NOT_JSON_OUTPUT],
        }],
        'tags': [{'tag': 'component', 'value': 'raw'}],
    }


def _state_item(state, text):
    return {
        'uuid': _uuid('item', STATE_KEY.format(state)),
        'name': 'TCP sockets in {0}'.format(state),
        'type': 'DEPENDENT',
        'key': STATE_KEY.format(state),
        'delay': '0',
        'history': '7d',
        'trends': '365d',
        'value_type': 'UNSIGNED',
        'description': _state_description(state, text),
        'preprocessing': [{
            'type': 'JSONPATH',
            'parameters': ['$.' + state],
            # A JSON object without this state (an older or foreign script) is an error on this item, with
            # a message that says so, not a value.
            'error_handler': 'CUSTOM_ERROR',
            'error_handler_params': 'The counter\'s JSON has no {0}: is the agent\'s tcp_status script older '
                                    'than the template?'.format(state),
        }],
        'master_item': {'key': MASTER_KEY},
        'tags': [{'tag': 'component', 'value': 'network'}, {'tag': 'component', 'value': 'tcp'}],
    }


def _trigger(trigger, version):
    out = {
        'uuid': _uuid('trigger', trigger['id']),
        'expression': _expr(_fmt(version), trigger['parts']),
        'name': trigger['name'],
        'event_name': trigger['event_name'],
        'priority': trigger['priority'],
        'description': trigger['description'],
    }
    if trigger.get('depends_on'):
        out['dependencies'] = [{'name': TRIGGERS_BY_ID[dep]['name'],
                                'expression': _expr(_fmt(version), TRIGGERS_BY_ID[dep]['parts'])}
                               for dep in trigger['depends_on']]
    out['tags'] = [{'tag': 'scope', 'value': trigger['scope']}]
    return out


def items(version):
    """The template's items, each carrying the triggers that read it first (as Zabbix exports them)."""
    found = [_master_item()] + [_state_item(state, text) for state, _, text in STATES]
    found += [_ports_master_item()] + _ports_host_items()
    by_key = dict((item['key'], item) for item in found)
    for trigger in TRIGGERS:
        by_key[_trigger_items(trigger)[0]].setdefault('triggers', []).append(_trigger(trigger, version))
    for trigger in PORT_TRIGGERS:
        if trigger['rule'] is None:
            by_key[_port_trigger_keys(trigger)[0]].setdefault('triggers', []).append(_port_trigger(trigger, version))
    return found


# ---------------------------------------------------------------------------------------------------------
# Per-port monitoring (issue 10): host-level items of the ports answer, discovery rules, prototypes.

# Triggers of the per-port part: 'expr' is the expression with %(name)s where a function goes, 'funcs' the functions
# as (function, item key, parameter or None); _render_expr() writes them in either syntax. 'rule' is the discovery
# side a prototype belongs to (None: a host-level trigger). Names: the object first, the threshold in the event
# name (the 3.4 XML, which has no event names, takes the event name as the name: these triggers are new there).
PORT_STATE_KEY = PORT_SIDES_BY_NAME['local']['state_key']
PORT_TRIGGERS = [
    {
        'id': 'listen_drops',
        'rule': None,
        'name': OBJECT + ': Listeners drop connections',
        'event_name': OBJECT + ': Listeners drop connections (over {$TCP.LISTEN_DROPS.MAX}/s for '
                               '{$TCP.LISTEN_DROPS.PERIOD})',
        'expr': '%(drops)s>{$TCP.LISTEN_DROPS.MAX}',
        'funcs': {'drops': ('min', DROPS_KEY, '{$TCP.LISTEN_DROPS.PERIOD}')},
        'priority': 'WARNING',
        'scope': 'performance',
        'description': 'The kernel dropped incoming connections at a listener (TcpExt ListenDrops, which includes '
                       'ListenOverflows: a full accept queue) all through the period: an application accepts too '
                       'slowly, or its backlog is too small. The per-port discovery shows which port\'s accept queue '
                       'is full; ss -Hltn shows each listener\'s queue (Recv-Q) and backlog (Send-Q).',
    },
    {
        'id': 'port_queue',
        'rule': 'local',
        'name': OBJECT + ' port {#PORT}: Accept queue is nearly full',
        'event_name': OBJECT + ' port {#PORT}: Accept queue is nearly full (over '
                               '{$TCP.PORT.QUEUE.PCT.MAX:"{#PORT}"}% of the backlog for {$TCP.PORT.QUEUE.PERIOD})',
        # Over the percentage for the whole period. A listener whose accept queue is full drops the handshakes'
        # final ACKs (the clients sit in SYN_SENT, the server's half-open sockets in SYN_RECV, then time out).
        'expr': '%(queue)s*100>{$TCP.PORT.QUEUE.PCT.MAX:"{#PORT}"}*%(backlog)s',
        'funcs': {'queue': ('min', QUEUE_KEY, '{$TCP.PORT.QUEUE.PERIOD}'), 'backlog': ('last', BACKLOG_KEY, None)},
        'priority': 'HIGH',
        'scope': 'performance',
        'description': 'The application listening on port {#PORT} does not accept() connections as fast as they '
                       'arrive: once its accept queue is full, new connections are dropped (ListenOverflows) and '
                       'clients time out. Find the process: ss -Hltnp \'( sport = :{#PORT} )\'; it is stuck, '
                       'overloaded, or its listen backlog (Send-Q; capped by net.core.somaxconn) is too small.',
    },
    {
        'id': 'port_close_wait',
        'rule': 'local',
        'name': OBJECT + ' port {#PORT}: Sockets pile up in CLOSE_WAIT',
        'event_name': OBJECT + ' port {#PORT}: Sockets pile up in CLOSE_WAIT (over '
                               '{$TCP.PORT.CLOSE_WAIT.MAX:"{#PORT}"} for {$TCP.PORT.CLOSE_WAIT.PERIOD} and not '
                               'draining)',
        'expr': '%(min)s>{$TCP.PORT.CLOSE_WAIT.MAX:"{#PORT}"} and %(last)s>=%(avg)s',
        'funcs': {'min': ('min', PORT_STATE_KEY.format('CLOSE_WAIT'), '{$TCP.PORT.CLOSE_WAIT.PERIOD}'),
                  'last': ('last', PORT_STATE_KEY.format('CLOSE_WAIT'), None),
                  'avg': ('avg', PORT_STATE_KEY.format('CLOSE_WAIT'), '{$TCP.PORT.CLOSE_WAIT.PERIOD}')},
        'priority': 'AVERAGE',
        'scope': 'performance',
        'description': 'Clients closed their connections to port {#PORT} but the application never called close(): '
                       'it leaks sockets (file descriptors). Find it: ss -tanp state close-wait \'( sport = :{#PORT} )\'.',
    },
]
PORT_TRIGGERS_BY_ID = dict((trigger['id'], trigger) for trigger in PORT_TRIGGERS)


def _render_expr(fmt, trigger):
    """A PORT_TRIGGERS expression in the 6.0+ ('6.0') or the 3.4 syntax."""
    rendered = {}
    for name, (func, key, param) in trigger['funcs'].items():
        if fmt == '6.0':
            rendered[name] = '{0}(/{1}/{2}{3})'.format(func, TEMPLATE, key, '' if param is None else ',' + param)
        else:
            rendered[name] = '{{{0}:{1}.{2}({3})}}'.format(TEMPLATE, key, func, '' if param is None else param)
    return trigger['expr'] % rendered


def _port_trigger_keys(trigger):
    """The keys a PORT_TRIGGERS entry reads, in the order of its expression."""
    order = sorted(trigger['funcs'], key=lambda name: trigger['expr'].index('%(' + name + ')s'))
    keys = []
    for name in order:
        if trigger['funcs'][name][1] not in keys:
            keys.append(trigger['funcs'][name][1])
    return keys


def _port_trigger(trigger, version):
    return {
        'uuid': _uuid('trigger', trigger['id']),
        'expression': _render_expr(_fmt(version), trigger),
        'name': trigger['name'],
        'event_name': trigger['event_name'],
        'priority': trigger['priority'],
        'description': trigger['description'],
        'tags': [{'tag': 'scope', 'value': trigger['scope']}],
    }


def _ports_master_item():
    return {
        'uuid': _uuid('item', PORTS_KEY),
        'name': 'Get per-port TCP counts',
        'type': 'ZABBIX_PASSIVE',
        'key': PORTS_MASTER_KEY,
        'delay': '{$TCP.PORT.INTERVAL}',
        'history': '0',
        'trends': '0',
        'value_type': 'TEXT',
        'description': 'Every listening port\'s state counts and accept queue, the remote ports\' ({$TCP.PORT.REMOTE}) '
                       'state counts and the host\'s ListenOverflows/ListenDrops, in one agent call, as JSON; the '
                       'per-port discovery rules and items take their values from it. At most {$TCP.PORT.MAX} '
                       'listening ports, the busiest. Not stored.',
        'preprocessing': [{'type': 'CHECK_REGEX_ERROR', 'parameters': [NOT_JSON_PATTERN, NOT_JSON_OUTPUT]}],
        'tags': [{'tag': 'component', 'value': 'raw'}],
    }


def _jsonpath_step(path, what):
    return {'type': 'JSONPATH', 'parameters': [path], 'error_handler': 'CUSTOM_ERROR',
            'error_handler_params': 'The per-port JSON has no {0}: is the agent\'s tcp_status script older than '
                                    'the template?'.format(what)}


def _ports_host_items():
    """ListenOverflows and ListenDrops as per-second rates, and the count of listening ports left out."""
    found = []
    for key, field, name, text in (
            (OVERFLOWS_KEY, 'listen_overflows', 'TCP listen queue overflows per second',
             'Connections completed while their listener\'s accept queue was full (TcpExt ListenOverflows), '
             'per second: an application that accepts too slowly.'),
            (DROPS_KEY, 'listen_drops', 'TCP connections dropped by listeners per second',
             'Incoming connections dropped at a listener for any reason (TcpExt ListenDrops, which includes the '
             'overflows), per second.')):
        found.append({
            'uuid': _uuid('item', key),
            'name': name,
            'type': 'DEPENDENT',
            'key': key,
            'delay': '0',
            'history': '7d',
            'trends': '365d',
            'value_type': 'FLOAT',
            'units': '/s',
            'description': text,
            'preprocessing': [_jsonpath_step('$.' + field, field),
                              {'type': 'CHANGE_PER_SECOND', 'parameters': [''], 'error_handler': 'DISCARD_VALUE'}],
            'master_item': {'key': PORTS_MASTER_KEY},
            'tags': [{'tag': 'component', 'value': 'network'}, {'tag': 'component', 'value': 'tcp'}],
        })
    found.append({
        'uuid': _uuid('item', TRUNCATED_KEY),
        'name': 'TCP listening ports left out of the per-port counts',
        'type': 'DEPENDENT',
        'key': TRUNCATED_KEY,
        'delay': '0',
        'history': '7d',
        'trends': '365d',
        'value_type': 'UNSIGNED',
        'description': 'How many listening ports the agent left out of its per-port answer (the least busy; over '
                       '{$TCP.PORT.MAX} ports, or a JSON answer over 60,000 bytes). Their items are not updated and '
                       'go after {$TCP.PORT.LIFETIME}: raise {$TCP.PORT.MAX}, or exclude ports with '
                       '{$TCP.PORT.NOT_MATCHES}.',
        'preprocessing': [_jsonpath_step('$.truncated', 'truncated'),
                          {'type': 'DISCARD_UNCHANGED_HEARTBEAT', 'parameters': ['1h']}],
        'master_item': {'key': PORTS_MASTER_KEY},
        'tags': [{'tag': 'component', 'value': 'network'}, {'tag': 'component', 'value': 'tcp'}],
    })
    return found


def port_jsonpath(side, field):
    """The JSONPath of one field ('states.ESTABLISHED', 'queue', 'backlog') of the port {#PORT} on a side."""
    return '$.{0}[?(@.port=={{#PORT}})].{1}.first()'.format(PORT_SIDES_BY_NAME[side]['array'], field)


def _port_item(side, key, name, field, value_type, description, extra_steps=()):
    return {
        'uuid': _uuid('item_prototype', key),
        'name': name,
        'type': 'DEPENDENT',
        'key': key,
        'delay': '0',
        'history': '7d',
        'trends': '365d',
        'value_type': value_type,
        'description': description,
        # A port that stopped listening is no longer in the answer: its items get no value (the discovery
        # removes them after {$TCP.PORT.LIFETIME}) rather than an error every interval.
        'preprocessing': [{'type': 'JSONPATH', 'parameters': [port_jsonpath(side['side'], field)],
                           'error_handler': 'DISCARD_VALUE'}] + list(extra_steps),
        'master_item': {'key': PORTS_MASTER_KEY},
        'tags': [{'tag': 'component', 'value': 'network'}, {'tag': 'component', 'value': 'tcp'},
                 {'tag': 'port', 'value': '{#PORT}'}, {'tag': 'service', 'value': '{#SERVICE}'}],
    }


def port_item_prototypes(side_name):
    """[(key, name, field, value type, description, extra steps)] of one side, in the order of the export."""
    side = PORT_SIDES_BY_NAME[side_name]
    found = []
    for state in side['states']:
        text = [t for s, _, t in STATES if s == state][0]
        found.append((side['state_key'].format(state), '{0}: sockets in {1}'.format(side['label'], state),
                      'states.' + state, 'UNSIGNED',
                      'TCP sockets in {0} whose {1} port is {{#PORT}} ({{#SERVICE}}): {2}'.format(
                          state, side['side'], text), ()))
    if side_name == 'local':
        found.append((QUEUE_KEY, side['label'] + ': accept queue', 'queue', 'UNSIGNED',
                      'Connections waiting in the accept queue of the fullest listener on port {#PORT} '
                      '({#SERVICE}): completed handshakes the application has not accept()ed yet (ss -lt: '
                      'Recv-Q).', ()))
        found.append((BACKLOG_KEY, side['label'] + ': accept queue limit', 'backlog', 'UNSIGNED',
                      'The accept queue\'s limit of that listener (the listen() backlog, capped by '
                      'net.core.somaxconn; ss -lt: Send-Q). The queue holds at most one more.',
                      ({'type': 'DISCARD_UNCHANGED_HEARTBEAT', 'parameters': ['1h']},)))
    return found


def _graph_prototype(side_name):
    side = PORT_SIDES_BY_NAME[side_name]
    colours = dict((state, colour) for state, colour, _ in STATES)
    keys = [(side['state_key'].format(state), colours[state]) for state in side['states']]
    if side_name == 'local':
        keys.append((QUEUE_KEY, '1E88E5'))
    return {
        'uuid': _uuid('graph_prototype', PORT_GRAPH_NAMES[side_name]),
        'name': PORT_GRAPH_NAMES[side_name],
        'graph_items': [{'sortorder': str(i), 'color': colour, 'item': {'host': TEMPLATE, 'key': key}}
                        for i, (key, colour) in enumerate(keys)],
    }


# The discovery rules get the master's value every {$TCP.PORT.INTERVAL}: only the ports and their names, in port
# order, go on, and only when they changed (or after the heartbeat), so that the server's LLD runs when a port
# starts or stops listening, not on every count (as Zabbix's own templates do with their dependent discovery).
DISCOVERY_ROWS_SCRIPT = ('return JSON.stringify(JSON.parse(value).map(function (row) {\n'
                         '    return {port: row.port, service: row.service};\n'
                         '}).sort(function (a, b) { return a.port - b.port; }));\n')
DISCOVERY_HEARTBEAT = '1h'


def _discovery_rule(side_name, version):
    side = PORT_SIDES_BY_NAME[side_name]
    prototypes = [_port_item(side, *row) for row in port_item_prototypes(side_name)]
    by_key = dict((item['key'], item) for item in prototypes)
    rule_triggers = []
    for trigger in PORT_TRIGGERS:
        if trigger['rule'] != side_name:
            continue
        keys = _port_trigger_keys(trigger)
        if len(keys) == 1:
            by_key[keys[0]].setdefault('trigger_prototypes', []).append(_port_trigger(trigger, version))
        else:
            rule_triggers.append(_port_trigger(trigger, version))
    rule = {
        'uuid': _uuid('discovery_rule', side_name),
        'name': ('Listening port discovery' if side_name == 'local' else 'Remote port discovery'),
        'type': 'DEPENDENT',
        'key': side['rule_key'],
        'delay': '0',
    }
    if side_name == 'local':
        rule['filter'] = {
            'evaltype': 'AND',
            'conditions': [
                {'macro': '{#PORT}', 'value': '{$TCP.PORT.MATCHES}', 'formulaid': 'A'},
                {'macro': '{#PORT}', 'value': '{$TCP.PORT.NOT_MATCHES}', 'operator': 'NOT_MATCHES_REGEX',
                 'formulaid': 'B'},
            ],
        }
    rule['lifetime'] = '{$TCP.PORT.LIFETIME}'
    rule['description'] = (
        'Every {0} in the per-port answer ({1}; {{#PORT}}, {{#SERVICE}}: its /etc/services name or empty), from '
        'the master item: no agent call of its own.'.format(
            side['what'], 'filtered by {$TCP.PORT.MATCHES} and {$TCP.PORT.NOT_MATCHES}' if side_name == 'local'
            else 'the ports of {$TCP.PORT.REMOTE}'))
    rule['item_prototypes'] = prototypes
    if rule_triggers:
        rule['trigger_prototypes'] = rule_triggers
    rule['graph_prototypes'] = [_graph_prototype(side_name)]
    rule['master_item'] = {'key': PORTS_MASTER_KEY}
    rule['lld_macro_paths'] = [{'lld_macro': '{#PORT}', 'path': '$.port'},
                               {'lld_macro': '{#SERVICE}', 'path': '$.service'}]
    rule['preprocessing'] = [_jsonpath_step('$.' + side['array'], side['array']),
                             {'type': 'JAVASCRIPT', 'parameters': [DISCOVERY_ROWS_SCRIPT]},
                             {'type': 'DISCARD_UNCHANGED_HEARTBEAT', 'parameters': [DISCOVERY_HEARTBEAT]}]
    return rule


def discovery_rules(version):
    """The per-port discovery rules (4.2+): dependent on the ports master item, one per side."""
    return [_discovery_rule(side['side'], version) for side in PORT_SIDES]


def graphs(version):
    return [{
        'uuid': _uuid('graph', GRAPH_NAME),
        'name': GRAPH_NAME,
        'type': 'STACKED',
        'graph_items': [{
            'sortorder': str(i),
            'color': color,
            'item': {'host': TEMPLATE, 'key': STATE_KEY.format(state)},
        } for i, (state, color, _) in enumerate(STATES)],
    }]


# Widget field types in the order of their numeric codes (6.0 exports fields in that order).
FIELD_TYPE_ORDER = ['INTEGER', 'STRING', 'HOST_GROUP', 'HOST', 'ITEM', 'ITEM_PROTOTYPE', 'GRAPH', 'GRAPH_PROTOTYPE']
# Dashboard grid: 7.0 has three times as many columns as 6.0 (72 instead of 24).
GRID_COLUMNS = {'6.0': 24, '7.0': 72}
DASHBOARD_NAME = 'TCP connection states'
# The states the triggers watch, shown as their latest values next to the graph (the widget shows as many
# lines as there are states: the latest value of each, since one agent call gives them all the same clock).
WATCHED_STATES = ['ESTABLISHED', 'TIME_WAIT', 'CLOSE_WAIT', 'SYN_RECV', 'LISTEN']


def _field(kind, name, value):
    return {'type': kind, 'name': name, 'value': value}


def _widgets_60(columns):
    """6.0: a classic graph widget and a plain text widget (latest values)."""
    graph_width = columns * 2 // 3
    return [
        {'type': 'GRAPH_CLASSIC', 'name': DASHBOARD_NAME, 'width': str(graph_width), 'height': '11',
         'fields': [_field('INTEGER', 'source_type', '0'),
                    _field('GRAPH', 'graphid', {'host': TEMPLATE, 'name': GRAPH_NAME})]},
        {'type': 'PLAIN_TEXT', 'name': 'Watched states (latest values)', 'x': str(graph_width),
         'width': str(columns - graph_width), 'height': '11',
         'fields': [_field('INTEGER', 'show_lines', str(len(WATCHED_STATES)))]
         + [_field('ITEM', 'itemids', {'host': TEMPLATE, 'key': STATE_KEY.format(state)}) for state in WATCHED_STATES]},
    ]


def _widgets_70(columns):
    """7.0: widgets are modules ("graph", "itemhistory", the types 7.0's own converter gives the 6.0 ones), each
    with a reference; repeated fields are numbered."""
    graph_width = columns * 2 // 3
    history = [_field('INTEGER', 'show_lines', str(len(WATCHED_STATES))), _field('STRING', 'reference', 'AAAAB')]
    for i, state in enumerate(WATCHED_STATES):
        history.append(_field('ITEM', 'columns.{0}.itemid'.format(i),
                              {'host': TEMPLATE, 'key': STATE_KEY.format(state)}))
        history.append(_field('STRING', 'columns.{0}.name'.format(i), state))
    return [
        {'type': 'graph', 'name': DASHBOARD_NAME, 'width': str(graph_width), 'height': '11',
         'fields': [_field('GRAPH', 'graphid', {'host': TEMPLATE, 'name': GRAPH_NAME}),
                    _field('STRING', 'reference', 'AAAAA'), _field('INTEGER', 'source_type', '0')]},
        {'type': 'itemhistory', 'name': 'Watched states (latest values)', 'x': str(graph_width),
         'width': str(columns - graph_width), 'height': '11', 'fields': history},
    ]


def dashboards(version):
    """A template dashboard (6.0 and later): the stacked state graph, and the watched states' latest values."""
    columns = GRID_COLUMNS[version]
    widgets = (_widgets_70 if version == '7.0' else _widgets_60)(columns) + _per_port_widgets(version)
    # The widgets in the order Zabbix exports (and compares) them: 7.0 by type; 6.0 the graph prototype first.
    widgets.sort(key=(lambda widget: widget['type']) if version == '7.0' else
                 (lambda widget: widget['type'] != 'GRAPH_PROTOTYPE'))
    for widget in widgets:
        # Zabbix exports (and compares) a widget's fields in its own order: 6.0 by field type (integers before
        # items and graphs), 7.0 by name.
        widget['fields'].sort(key=(lambda field: field['name']) if version == '7.0' else
                              (lambda field: FIELD_TYPE_ORDER.index(field['type'])))
    return [{
        'uuid': _uuid('dashboard', DASHBOARD_NAME),
        'name': DASHBOARD_NAME,
        'pages': [{'widgets': widgets}],
    }]


# The per-port graphs on the dashboard: the listening ports' graph prototype, one small graph per discovered port,
# in a grid under the state graph (the busiest ports first only as Zabbix sorts them: by name).
PORT_WIDGET_GRID = {'columns': '3', 'rows': '2'}


def _per_port_widgets(version):
    """The graph prototype widget of the listening ports (below the state graph and the watched states)."""
    name = PORT_GRAPH_NAMES['local']
    fields = [_field('INTEGER', 'columns', PORT_WIDGET_GRID['columns']),
              _field('INTEGER', 'rows', PORT_WIDGET_GRID['rows'])]
    if version == '7.0':
        fields += [_field('GRAPH_PROTOTYPE', 'graphid.0', {'host': TEMPLATE, 'name': name}),
                   _field('STRING', 'reference', 'AAAAC')]
        kind = 'graphprototype'
    else:
        fields += [_field('GRAPH_PROTOTYPE', 'graphid', {'host': TEMPLATE, 'name': name})]
        kind = 'GRAPH_PROTOTYPE'
    return [{'type': kind, 'name': 'Listening ports', 'y': '11', 'width': str(GRID_COLUMNS[version]),
             'height': '10', 'fields': fields}]


def model(version):
    """The template as Zabbix's export structure for version '6.0' or '7.0' (plain dicts and lists, all scalars
    strings)."""
    template = {
        'uuid': _uuid('template'),
        'template': TEMPLATE,
        'name': VISIBLE_NAME,
        'description': TEMPLATE_DESCRIPTION,
        'groups': [{'name': GROUP}],
        'items': items(version),
    }
    rules = discovery_rules(version)
    if rules:
        template['discovery_rules'] = rules
    template['tags'] = [{'tag': 'class', 'value': 'os'}, {'tag': 'target', 'value': 'linux'}]
    # An empty value is left out, as Zabbix exports it (importcompare sees a change otherwise).
    template['macros'] = [dict([('macro', m)] + ([('value', v)] if v else []) + [('description', d)])
                          for m, v, d in sorted(MACROS)]
    template['dashboards'] = dashboards(version)
    export = {'version': version}
    if version == '6.0':
        export['date'] = '2026-11-25T00:00:00Z'
    # 6.2 split template groups from host groups.
    export['template_groups' if version == '7.0' else 'groups'] = [{'uuid': _uuid('group', GROUP), 'name': GROUP}]
    export['templates'] = [template]
    export['graphs'] = graphs(version)
    return {'zabbix_export': export}


def model_60():
    return model('6.0')


# Zabbix leaves a field out of its export when it has the default value, and configuration.importcompare
# (used by community.zabbix to decide "changed") reports a difference when a file spells a default out.
ITEM_DEFAULTS = {'type': 'ZABBIX_PASSIVE', 'value_type': 'UNSIGNED', 'trends': '365d', 'history': '90d',
                 'delay': '1m'}
GRAPH_ITEM_DEFAULTS = {'sortorder': '0'}
WIDGET_DEFAULTS = {'x': '0', 'y': '0'}


RULE_DEFAULTS = {'type': 'ZABBIX_PASSIVE', 'delay': '1h'}
CONDITION_DEFAULTS = {'operator': 'MATCHES_REGEX'}


def _drop(node, defaults):
    for key, value in defaults.items():
        if node.get(key) == value:
            del node[key]


def _drop_defaults(export):
    for template in export['zabbix_export']['templates']:
        for item in template['items']:
            _drop(item, ITEM_DEFAULTS)
        for rule in template.get('discovery_rules', []):
            _drop(rule, RULE_DEFAULTS)
            for condition in rule.get('filter', {}).get('conditions', []):
                _drop(condition, CONDITION_DEFAULTS)
            for item in rule['item_prototypes']:
                _drop(item, ITEM_DEFAULTS)
            for graph in rule.get('graph_prototypes', []):
                for graph_item in graph['graph_items']:
                    _drop(graph_item, GRAPH_ITEM_DEFAULTS)
        for dashboard in template.get('dashboards', []):
            for page in dashboard['pages']:
                for widget in page['widgets']:
                    for key, value in WIDGET_DEFAULTS.items():
                        if widget.get(key) == value:
                            del widget[key]
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
            elif '\n' in value:
                lines.append('{0}- |'.format(pad))
                lines.extend((pad + '  ' + line).rstrip() for line in value.rstrip('\n').split('\n'))
            else:
                lines.append('{0}- {1}'.format(pad, _yaml_scalar(value)))
    return lines


def render_yaml(version='6.0'):
    where = {'6.0': 'Zabbix 6.0 to 6.4 (7.0 and later: template_tcp_status_7.0.yaml)',
             '7.0': 'Zabbix 7.0 or later'}[version]
    head = ['---',
            '# Generated by zabbix/build_templates.py from one description shared with the other formats: edit',
            '# that script, not this file. Import: Data collection > Templates > Import, ' + where + '.',
            '# yamllint disable rule:line-length']
    return '\n'.join(head + _yaml_lines(_drop_defaults(model(version)), 0)) + '\n'


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


def _xml_item(items, name, type_, key, delay, history, trends, value_type, description, steps, master,
              prototype=False):
    item = _sub(items, 'item_prototype' if prototype else 'item')
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
    if prototype:
        _sub(item, 'application_prototypes')
    _sub(item, 'valuemap')
    pre = _sub(item, 'preprocessing')
    for step_type, params in steps:
        step = _sub(pre, 'step')
        _sub(step, 'type', step_type)
        _sub(step, 'params', params)
    _sub(item, 'jmx_endpoint')
    master_el = _sub(item, 'master_item_prototype' if prototype else 'master_item')
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
    _sub(template, 'name', VISIBLE_NAME)
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
    _xml_ports_items(items)
    _xml_discovery_rules(_sub(template, 'discovery_rules'))
    _sub(template, 'httptests')
    macros = _sub(template, 'macros')
    for macro, value, _ in sorted(MACROS):
        el = _sub(macros, 'macro')
        _sub(el, 'macro', macro)
        _sub(el, 'value', value or None)
    _sub(template, 'screens')
    triggers = _sub(root, 'triggers')
    for trigger in TRIGGERS:
        _xml_trigger(triggers, 'trigger', _expr('3.4', trigger.get('parts_34', trigger['parts'])), trigger['name_34'],
                     trigger, [(TRIGGERS_BY_ID[dep]['name_34'],
                                _expr('3.4', TRIGGERS_BY_ID[dep].get('parts_34', TRIGGERS_BY_ID[dep]['parts'])))
                               for dep in trigger.get('depends_on', [])])
    for trigger in PORT_TRIGGERS:
        if trigger['rule'] is None:
            _xml_trigger(triggers, 'trigger', _render_expr('3.4', trigger), trigger['event_name'], trigger)
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


GRAPH_34_HEAD = (('width', '900'), ('height', '200'), ('yaxismin', '0.0000'), ('yaxismax', '100.0000'),
                 ('show_work_period', '1'), ('show_triggers', '1'))
GRAPH_34_TAIL = (('show_legend', '1'), ('show_3d', '0'), ('percent_left', '0.0000'), ('percent_right', '0.0000'),
                 ('ymin_type_1', '0'), ('ymax_type_1', '0'))


def _xml_trigger(parent, tag, expression, name, trigger, dependencies=()):
    """A 3.4 trigger or trigger prototype: its expression and name as given (a port trigger's event name: 3.4 has
    none), priority, description and scope from ``trigger``, and the (name, expression) of those it depends on."""
    el = _sub(parent, tag)
    _sub(el, 'expression', expression)
    _sub(el, 'recovery_mode', '0')
    _sub(el, 'recovery_expression')
    _sub(el, 'name', name)
    _sub(el, 'correlation_mode', '0')
    _sub(el, 'correlation_tag')
    _sub(el, 'url')
    _sub(el, 'status', '0')
    _sub(el, 'priority', PRIORITY_34[trigger['priority']])
    _sub(el, 'description', trigger['description'])
    _sub(el, 'type', '0')
    _sub(el, 'manual_close', '0')
    deps = _sub(el, 'dependencies')
    for dep_name, dep_expression in dependencies:
        dep_el = _sub(deps, 'dependency')
        _sub(dep_el, 'name', dep_name)
        _sub(dep_el, 'expression', dep_expression)
        _sub(dep_el, 'recovery_expression')
    tag_el = _sub(_sub(el, 'tags'), 'tag')
    _sub(tag_el, 'tag', 'scope')
    _sub(tag_el, 'value', trigger['scope'])


def _xml_ports_items(items):
    """3.4: the ports master item (one agent call) and its host-level dependent items (plain JSONPath; change per
    second exists there)."""
    _xml_item(items, 'TCP ports: per-port counts (JSON)', '0', PORTS_MASTER_KEY, '{$TCP.PORT.INTERVAL}', '1h', '0',
              '4', _ports_master_item()['description'], [('5', '^(\\{.*\\})\n\\1')], None)
    for item in _ports_host_items():
        steps = [('12', item['preprocessing'][0]['parameters'][0])]
        if any(step['type'] == 'CHANGE_PER_SECOND' for step in item['preprocessing']):
            steps.append(('10', ''))
        _xml_item(items, item['name'], '18', item['key'], '0', item['history'], item['trends'],
                  '0' if item['value_type'] == 'FLOAT' else '3', item['description'], steps, PORTS_MASTER_KEY)


def _xml_discovery_rules(rules):
    """3.4 has no dependent discovery and no JSONPath filters: an agent discovery rule per side on the discovery
    key (the LLD format with the data wrapper). Per listening port, one agent call: a master item prototype on the
    per-port key filtered to that port, and the same item prototypes as the YAML's (states, accept queue and
    limit) dependent on it, each a plain JSONPath into the answer's one entry; per remote port, agent items on
    the count key (a per-port call for one remote port would dump every listener's sockets too)."""
    for side in PORT_SIDES:
        rule = _sub(rules, 'discovery_rule')
        _sub(rule, 'name', 'Listening port discovery' if side['side'] == 'local' else 'Remote port discovery')
        _sub(rule, 'type', '0')
        for tag in ITEM_EMPTY:
            _sub(rule, tag)
        _sub(rule, 'key', side['rule_key_34'])
        _sub(rule, 'delay', '{$TCP.PORT.INTERVAL}')
        _sub(rule, 'status', '0')
        _sub(rule, 'allowed_hosts')
        for tag, text in SNMPV3:
            _sub(rule, tag, text or None)
        for tag in ('params', 'ipmi_sensor'):
            _sub(rule, tag)
        _sub(rule, 'authtype', '0')
        for tag in ('username', 'password', 'publickey', 'privatekey', 'port'):
            _sub(rule, tag)
        filter_el = _sub(rule, 'filter')
        _sub(filter_el, 'evaltype', '0')
        _sub(filter_el, 'formula')
        conditions = _sub(filter_el, 'conditions')
        # 8 = matches (3.4 has no "does not match": {$TCP.PORT.NOT_MATCHES} is 4.2+ only)
        wanted = ([('{#PORT}', '{$TCP.PORT.MATCHES}')] if side['side'] == 'local' else
                  [('{#SIDE}', '^remote$')])
        for i, (macro, value) in enumerate(wanted):
            condition = _sub(conditions, 'condition')
            _sub(condition, 'macro', macro)
            _sub(condition, 'value', value)
            _sub(condition, 'operator', '8')
            _sub(condition, 'formulaid', 'ABCD'[i])
        _sub(rule, 'lifetime', '{$TCP.PORT.LIFETIME}')
        _sub(rule, 'description', 'Every {0} the agent\'s discovery key lists ({{#PORT}}, {{#SERVICE}}, {{#SIDE}}).'.format(
            side['what']))
        prototypes = _sub(rule, 'item_prototypes')
        if side['side'] == 'local':
            _xml_item(prototypes, 'Port {#PORT}: per-port counts (JSON)', '0', PORT_MASTER_34_KEY,
                      '{$TCP.PORT.INTERVAL}', '1h', '0', '4',
                      'The per-port answer for port {#PORT} alone (one agent call per interval): its states, '
                      'accept queue and limit; the item prototypes below take their values from it.',
                      [('5', '^(\\{.*\\})\n\\1')], None, prototype=True)
            for key, name, field, _type, description, _steps in port_item_prototypes('local'):
                # 18 = dependent, 3 = numeric unsigned, 12 = JSONPath (a port that stopped listening leaves the
                # answer empty: its items turn unsupported until the discovery removes them; 3.4 has no error
                # handlers)
                _xml_item(prototypes, name, '18', key, '0', '7d', '365d', '3', description,
                          [('12', '$.ports[0].' + field)], PORT_MASTER_34_KEY, prototype=True)
        else:
            for state in side['states']:
                key = side['state_key'].format(state)
                row = [r for r in port_item_prototypes(side['side']) if r[0] == key][0]
                _xml_item(prototypes, row[1], '0', key, '{$TCP.PORT.INTERVAL}', '7d', '365d', '3', row[4], [],
                          None, prototype=True)
        trigger_prototypes = _sub(rule, 'trigger_prototypes')
        for trigger in PORT_TRIGGERS:
            if trigger['rule'] == side['side']:
                _xml_trigger(trigger_prototypes, 'trigger_prototype', _render_expr('3.4', trigger),
                             trigger['event_name'], trigger)
        graph = _sub(_sub(rule, 'graph_prototypes'), 'graph_prototype')
        _sub(graph, 'name', PORT_GRAPH_NAMES[side['side']])
        for tag, text in GRAPH_34_HEAD + (('type', '0'),) + GRAPH_34_TAIL:
            _sub(graph, tag, text)
        _sub(graph, 'ymin_item_1', '0')
        _sub(graph, 'ymax_item_1', '0')
        gitems = _sub(graph, 'graph_items')
        for i, graph_item in enumerate(_graph_prototype(side['side'])['graph_items']):
            gi = _sub(gitems, 'graph_item')
            for tag, text in (('sortorder', str(i)), ('drawtype', '0'), ('color', graph_item['color']),
                              ('yaxisside', '0'), ('calc_fnc', '2'), ('type', '0')):
                _sub(gi, tag, text)
            ref = _sub(gi, 'item')
            _sub(ref, 'host', TEMPLATE)
            _sub(ref, 'key', graph_item['item']['key'])
        _sub(rule, 'host_prototypes')
        _sub(rule, 'jmx_endpoint')


def outputs():
    return {YAML_FILE: render_yaml('6.0'), YAML_70_FILE: render_yaml('7.0'), XML_FILE: render_xml()}


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
