"""The role's item table and states, for the Python code that is not Ansible.

The keys the role installs are defined once, in ``roles/zabbix_tcp_status/vars/main.yml`` (``_zabbix_tcp_status_items``),
and the TCP states once, in the counter (``STATES``). The template generator (zabbix/build_templates.py), the private
agents of the benchmark and of the e2e lab, and the tests read them through this module, so that none of them
restates a key, a UserParameter line or a state:

    items()                      the item table, rendered with the role's defaults (or the overrides given)
    userparameter_conf(command)  the role's own UserParameter file (templates/userparameter_tcp_status.conf.j2)
                                 for an agent that runs the counter as ``command``
    states()                     the counter's states, in the kernel's order
    counter()                    the counter module itself, loaded from the role

Controller side (Python 3): needs Jinja2 and PyYAML, which every Ansible controller has.
"""

import importlib.util
import os

import jinja2
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLE = os.path.join(REPO, 'roles', 'zabbix_tcp_status')
COUNTER = os.path.join(ROLE, 'module_utils', 'tcp_status_counter.py')
USERPARAMETER_TEMPLATE = os.path.join(ROLE, 'templates', 'userparameter_tcp_status.conf.j2')


def _load_yaml(path):
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def _environment():
    # As Ansible's template module renders: trim_blocks on, undefined variables are errors.
    return jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _render(value, context, env):
    if isinstance(value, str):
        return env.from_string(value).render(context) if '{' in value else value
    if isinstance(value, list):
        return [_render(v, context, env) for v in value]
    if isinstance(value, dict):
        return dict((k, _render(v, context, env)) for k, v in value.items())
    return value


def role_variables(**overrides):
    """The role's defaults with ``overrides`` (e.g. zabbix_tcp_status_json_key='tcp.status.all') applied."""
    variables = _load_yaml(os.path.join(ROLE, 'defaults', 'main.yml'))
    unknown = set(overrides) - set(variables)
    if unknown:
        raise KeyError('not variables of the role: {0}'.format(', '.join(sorted(unknown))))
    variables.update(overrides)
    return variables


def items(**overrides):
    """The item table as the role renders it: [{key, command, params, description, answer, checks}]."""
    table = _load_yaml(os.path.join(ROLE, 'vars', 'main.yml'))['_zabbix_tcp_status_items']
    return _render(table, role_variables(**overrides), _environment())


def item(answer, **overrides):
    """The one row of the table whose answer is ``answer`` ('count' or 'states')."""
    rows = [row for row in items(**overrides) if row['answer'] == answer]
    if len(rows) != 1:
        raise LookupError('the item table has {0} rows answering {1!r}'.format(len(rows), answer))
    return rows[0]


def userparameter_conf(command, **overrides):
    """The role's UserParameter file for an agent that runs the counter as ``command`` (a path, or an interpreter
    and a path), rendered from the role's own template."""
    context = role_variables(**overrides)
    context.update(ansible_managed='Rendered from the zabbix_tcp_status role by zabbix/role_items.py',
                   _zabbix_tcp_status_script=command, _zabbix_tcp_status_items=items(**overrides))
    with open(USERPARAMETER_TEMPLATE) as handle:
        return _environment().from_string(handle.read()).render(context)


def counter():
    """The counter (roles/zabbix_tcp_status/module_utils/tcp_status_counter.py) as a module."""
    spec = importlib.util.spec_from_file_location('tcp_status_counter', COUNTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def states():
    """The eleven TCP states, named and ordered as the counter names and orders them."""
    return list(counter().STATES)
