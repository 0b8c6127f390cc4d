"""The README stays true: its example playbook is the one molecule converges with, its variable table is the
role's argument_specs, and its two commands are make targets."""
import os
import re

import yaml

from zabbix import role_items

README = os.path.join(role_items.REPO, 'README.md')


def readme():
    with open(README) as handle:
        return handle.read()


def section(title):
    text = readme()
    start = text.index('\n## ' + title + '\n')
    end = text.find('\n## ', start + 1)
    return text[start:end if end > 0 else len(text)]


def test_the_example_playbook_is_the_molecule_converge_playbook():
    example = re.search(r'```yaml\n(.*?)```', section('Example playbook'), re.S).group(1)
    with open(os.path.join(role_items.REPO, 'molecule', 'shared', 'converge.yml')) as handle:
        converge = handle.read()
    assert yaml.safe_load(example) == yaml.safe_load(converge)
    body = [line for line in converge.splitlines() if line and not line.startswith(('#', '---'))]
    assert example.splitlines() == body


def test_the_variable_table_is_the_argument_specs():
    with open(os.path.join(role_items.ROLE, 'meta', 'argument_specs.yml')) as handle:
        options = yaml.safe_load(handle)['argument_specs']['main']['options']
    with open(os.path.join(role_items.ROLE, 'defaults', 'main.yml')) as handle:
        defaults = yaml.safe_load(handle)
    rows = re.findall(r'^\| `(zabbix_tcp_status_\w+)` \| `([^`]*)` \|', section('Role variables'), re.M)
    documented = dict(rows)
    deprecated = set(name for name, spec in options.items() if 'Deprecated' in str(spec.get('description')))
    assert set(documented) == set(options) - deprecated
    assert set(defaults) == set(options) - deprecated
    for name, shown in documented.items():
        value = defaults[name]
        assert shown == (yaml.safe_dump(value, default_flow_style=True).strip().replace("''", '""')
                         .replace('...', '').strip()), name


def test_the_two_commands_are_make_targets():
    with open(os.path.join(role_items.REPO, 'Makefile')) as handle:
        targets = set(re.findall(r'^([a-z-]+):', handle.read(), re.M))
    commands = re.findall(r'^make (\w+)', section('Quick start'), re.M)
    assert commands == ['deploy', 'test'] and set(commands) <= targets
