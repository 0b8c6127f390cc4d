# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a Zabbix agent's configuration as the agent reads it: the one place that decides which files the agent
loads, where the role's UserParameters go, which lines of other files define the same keys, and how zabbix_get
can reach the agent (address, port, TLS, whether Server= allows the verifier).

Used by the role's read-only module ``zabbix_agent_config_info`` (imported as
``ansible.module_utils.zabbix_agent_config``) and unit-tested on real configuration shapes (tests/unit).
Standard library only; Python 2.7 and 3.6+ (the targets' interpreters).

The agent's rules (zabbix_agentd 3.0+ and agent 2):

* a line is ``Name=Value``; blank lines and lines starting with ``#`` are skipped; white space around the name and
  the value and a trailing CR are ignored;
* ``Include=`` names a file, a directory (every regular file in it, *whatever its name*: editor and Ansible
  backups ``*~`` included, not subdirectories) or a pattern with ``*`` in its last component (the matching
  regular files); included files may include further; a relative path is taken from the main file's directory
  (agent 2 documents this; the classic agent resolves it from its working directory, ``/`` for the service);
* ``UserParameter=key[*],command`` defines a key once across all loaded files: a second definition stops the
  agent (``key "..." already exists``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import os
import re
import socket
import struct
import time

MAX_INCLUDE_DEPTH = 10
# The settings the role reads, with the agent's defaults (zabbix_agentd.conf / zabbix_agent2.conf).
DEFAULTS = {
    'Timeout': '3',
    'ListenPort': '10050',
    'ListenIP': '0.0.0.0',
    'Server': '',
    'UnsafeUserParameters': '0',
    'AllowRoot': '0',
    'User': 'zabbix',
    'TLSConnect': 'unencrypted',
    'TLSAccept': 'unencrypted',
    'TLSPSKIdentity': '',
    'TLSPSKFile': '',
    'TLSCAFile': '',
    'TLSCertFile': '',
    'TLSKeyFile': '',
    'TLSServerCertIssuer': '',
    'TLSServerCertSubject': '',
    'PidFile': '',
}
# The compiled-in PidFile of each agent (packages set their own in the config).
PIDFILE_DEFAULTS = {'agent': '/tmp/zabbix_agentd.pid', 'agent2': '/tmp/zabbix_agent2.pid'}
# The role's marked blocks: its UserParameters in the main file (when no Include= loads a file of the role's) and
# its AllowKey lines before the first DenyKey that would deny its keys.
USERPARAMETER_BLOCK = 'zabbix_tcp_status UserParameters'
ALLOWKEY_BLOCK = 'zabbix_tcp_status AllowKey'
# Ansible's backup files: NAME.PID.YYYY-MM-DD@HH:MM:SS~ (module_utils.basic.backup_local).
ANSIBLE_BACKUP_RE = re.compile(r'\.\d+\.\d{4}-\d\d-\d\d@\d\d:\d\d:\d\d~$')
LOOPBACK_NAMES = ('localhost', 'localhost.localdomain', 'localhost4', 'localhost6', 'ip6-localhost')


class AgentConfigError(Exception):
    """A configuration the agent would refuse, or one the role cannot handle, with a message for the user."""


def _lines(data):
    """(number, text) of each line, without its line ending; and the file's line endings: lf, crlf, mixed or none."""
    text = data.decode('utf-8', 'replace') if isinstance(data, bytes) else data
    raw = text.split('\n')
    if raw and raw[-1] == '':
        raw.pop()
    crlf = sum(1 for line in raw if line.endswith('\r'))
    if not raw:
        endings = 'none'
    elif crlf == 0:
        endings = 'lf'
    elif crlf == len(raw) or (crlf == len(raw) - 1 and not text.endswith('\n')):
        endings = 'crlf'
    else:
        endings = 'mixed'
    return [(number, line.rstrip('\r')) for number, line in enumerate(raw, 1)], endings


def parse_line(line):
    """(name, value) of a parameter line, or None for a comment or a blank line."""
    stripped = line.strip()
    if not stripped or stripped.startswith('#'):
        return None
    name, sep, value = stripped.partition('=')
    if not sep:
        return (stripped, None)
    return (name.strip(), value.strip())


def split_list(value):
    return [item.strip() for item in (value or '').split(',') if item.strip()]


class AgentConfig(object):
    """The agent's configuration as loaded from ``path``.

    ``root`` is prepended to every path that is read (a test tree laid out like a host's /); paths in the result
    never carry it.
    """

    def __init__(self, path, flavour='agent', root=''):
        self.path = os.path.normpath(path)
        self.flavour = flavour
        self.root = root.rstrip('/')
        self.files = []          # {'path', 'line_endings'} in load order
        self.includes = []       # {'file', 'line', 'value', 'path', 'kind', 'files'}
        self.params = []         # (name, value, file, line)
        self.userparameters = []  # {'key', 'name', 'command', 'file', 'line'}
        self.problems = []
        self._load(self.path, 0)

    # -- reading ---------------------------------------------------------------------------------------------
    def _real(self, path):
        return self.root + path

    def _read(self, path):
        try:
            with open(self._real(path), 'rb') as handle:
                return handle.read()
        except (IOError, OSError) as exc:
            raise AgentConfigError('cannot read {0}: {1}'.format(path, exc.strerror or exc))

    def _load(self, path, depth):
        if depth > MAX_INCLUDE_DEPTH:
            raise AgentConfigError('Include= nests deeper than {0} levels at {1}'.format(MAX_INCLUDE_DEPTH, path))
        if any(entry['path'] == path for entry in self.files):
            return  # the agent would load it twice; every key in it would be a duplicate (reported below)
        lines, endings = _lines(self._read(path))
        self.files.append({'path': path, 'line_endings': endings})
        for number, line in lines:
            parsed = parse_line(line)
            if parsed is None:
                continue
            name, value = parsed
            if value is None:
                self.problems.append('{0}:{1}: not a Name=Value line: {2}'.format(path, number, line.strip()[:80]))
                continue
            self.params.append((name, value, path, number))
            if name == 'Include':
                self._include(value, path, number, depth)
            elif name == 'UserParameter':
                key, sep, command = value.partition(',')
                self.userparameters.append({
                    'key': key.strip(), 'name': key.strip().partition('[')[0], 'command': command.strip(),
                    'file': path, 'line': number})

    def resolve(self, value):
        """The absolute, normalised path an Include= value names."""
        if not value.startswith('/'):
            value = os.path.join(os.path.dirname(self.path), value)
        trailing = value.endswith('/')
        value = os.path.normpath(value)
        return value + '/' if trailing and value != '/' else value

    def _include(self, value, source, number, depth):
        path = self.resolve(value)
        directory, base = os.path.split(path.rstrip('/'))
        entry = {'file': source, 'line': number, 'value': value, 'path': path.rstrip('/') or '/', 'files': []}
        if '*' in directory or '?' in directory:
            raise AgentConfigError('{0}:{1}: Include={2}: wildcards are allowed only in the file name'.format(
                source, number, value))
        if '*' in base:
            entry['kind'] = 'pattern'
            entry['directory'] = directory
            entry['pattern'] = base
            candidates = self._regular_files(directory, missing_ok=True)
            matches = [name for name in candidates if fnmatch.fnmatchcase(name, base)]
        elif os.path.isdir(self._real(path.rstrip('/') or '/')):
            entry['kind'] = 'directory'
            entry['directory'] = path.rstrip('/') or '/'
            matches = self._regular_files(entry['directory'])
            directory = entry['directory']
        else:
            entry['kind'] = 'file'
            entry['directory'] = directory
            if not os.path.exists(self._real(path.rstrip('/'))):
                raise AgentConfigError('{0}:{1}: Include={2}: no such file or directory (the agent would not '
                                       'start)'.format(source, number, value))
            matches = [base]
        self.includes.append(entry)
        for name in matches:
            child = os.path.join(directory, name)
            entry['files'].append(child)
            self._load(child, depth + 1)

    def _regular_files(self, directory, missing_ok=False):
        try:
            names = os.listdir(self._real(directory))
        except (IOError, OSError) as exc:
            if missing_ok:
                return []
            raise AgentConfigError('cannot list {0}: {1}'.format(directory, exc.strerror or exc))
        return sorted(name for name in names if os.path.isfile(self._real(os.path.join(directory, name))))

    # -- what the agent makes of it --------------------------------------------------------------------------
    def setting(self, name):
        """The value the agent uses: the last one given (the agent refuses most repeats), else its default."""
        values = [value for param, value, _file, _line in self.params if param == name]
        return values[-1] if values else DEFAULTS.get(name, '')

    def settings(self):
        return dict((name, self.setting(name)) for name in DEFAULTS)

    def duplicate_keys(self):
        """{key: ['file:line', ...]} for every UserParameter key defined more than once."""
        seen = {}
        for up in self.userparameters:
            seen.setdefault(up['key'], []).append('{0}:{1}'.format(up['file'], up['line']))
        return dict((key, places) for key, places in seen.items() if len(places) > 1)

    def block_lines(self, name):
        """{(file, line)} of every line inside the marked block ``name`` (markers included) in any loaded file."""
        inside = set()
        for entry in self.files:
            lines, _endings = _lines(self._read(entry['path']))
            start = None
            for number, line in lines:
                if line.strip() == '# BEGIN ' + name:
                    start = number
                elif line.strip() == '# END ' + name and start is not None:
                    inside.update((entry['path'], n) for n in range(start, number + 1))
                    start = None
        return inside

    def loads(self, path):
        """Whether an Include= of the agent loads a file at ``path`` (were it a regular file)."""
        directory, name = os.path.split(path)
        for entry in self.includes:
            if entry['kind'] == 'directory' and entry['directory'] == directory:
                return True
            if entry['kind'] == 'pattern' and entry['directory'] == directory and fnmatch.fnmatchcase(
                    name, entry['pattern']):
                return True
            if entry['kind'] == 'file' and entry['path'] == path:
                return True
        return path == self.path

    def process(self):
        """The running agent as its PidFile names it: {'pid', 'started' (epoch s)} or {} when none runs."""
        pidfile = self.setting('PidFile') or PIDFILE_DEFAULTS.get(self.flavour, '')
        try:
            with open(self._real(pidfile)) as handle:
                pid = int(handle.read().split()[0])
            with open('/proc/{0}/stat'.format(pid)) as handle:
                fields = handle.read().rsplit(')', 1)
            with open('/proc/{0}/comm'.format(pid)) as handle:
                comm = handle.read().strip()
            with open('/proc/stat') as handle:
                boot = [int(line.split()[1]) for line in handle if line.startswith('btime ')][0]
            ticks = int(fields[1].split()[19])
        except (IOError, OSError, ValueError, IndexError):
            return {}
        if not comm.startswith('zabbix_agent'):
            return {}
        return {'pid': pid, 'started': boot + ticks / float(os.sysconf('SC_CLK_TCK'))}

    def stale(self):
        """Why the running agent has not loaded the files on disk (it started before the newest file it loads
        was written: a restart is owed), or ''. The boot time is known to the second, hence the second's margin."""
        process = self.process()
        if not process:
            return ''
        newest = max(self.files, key=lambda entry: os.stat(self._real(entry['path'])).st_mtime)
        written = os.stat(self._real(newest['path'])).st_mtime
        if written > process['started'] + 1:
            return ('the running agent (PID {0}, started {1}) has not loaded {2}, written {3:.0f} s after it '
                    'started'.format(process['pid'], time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(
                        process['started'])), newest['path'], written - process['started']))
        return ''

    def userparameter_path(self, file_name):
        """Where a UserParameter file named ``file_name`` is loaded by the agent: the first Include (in load
        order) that loads a file of that name, else '' (no Include= would: the role then uses a marked block in
        the main file)."""
        for entry in self.includes:
            candidate = os.path.join(entry['directory'], file_name)
            if entry['kind'] == 'directory':
                return candidate
            if entry['kind'] == 'pattern' and fnmatch.fnmatchcase(file_name, entry['pattern']):
                return candidate
            if entry['kind'] == 'file' and entry['path'] == candidate:
                return candidate
        return ''


def plan(config, key_names, script, file_name):
    """What the role must change so that the agent loads exactly one definition of each key in ``key_names``.

    Returns ``userparameter_path`` (the role's file, or '' for a marked block in the main file),
    ``foreign_files`` (loaded files, other than the role's file, with a definition of one of the keys that does
    not run ``script``: the role comments those lines out) and ``stray_backups`` (loaded Ansible backup files
    ``NAME.PID.DATE~`` that define one of the keys: left in an include directory by an earlier version of the
    role, they would define the keys twice; the role moves them out).
    """
    target = config.userparameter_path(file_name)
    names = set(key_names)
    ours = [up for up in config.userparameters if up['name'] in names and up['key'].endswith('[*]')]
    stray = []
    foreign = []
    for up in ours:
        if ANSIBLE_BACKUP_RE.search(up['file']):
            if up['file'] not in stray:
                stray.append(up['file'])
        elif up['file'] != target and not runs_script(up['command'], script) and up['file'] not in foreign:
            foreign.append(up['file'])
    return {'userparameter_path': target, 'foreign_files': foreign, 'stray_backups': stray}


# -- item key access rules (AllowKey / DenyKey, agents 5.0+) -------------------------------------------------------
# The agent's rules, as zabbix_agentd 6.0 applies them (tests/unit/test_agent_config.py; the role tests check them
# against the real agents): rules are taken in the order the agent reads them (an included file's rules where its
# Include= line is), the first rule that matches a key decides; no match allows the key (system.run aside, denied
# by an implicit last rule). A pattern is a key whose name and parameters may hold * (any characters): a pattern
# without parameters matches only keys without parameters (system.* does not match system.cpu.load[all]), except
# the pattern * alone, which matches every key; NAME[*] matches NAME[...] with any parameters, not NAME alone.
def _wildcard(pattern, text):
    regex = '.*'.join(re.escape(part) for part in pattern.split('*'))
    return re.match('^' + regex + '$', text, re.S) is not None


def _split_pattern(pattern):
    """(name, parameters or None) of a key pattern."""
    name, bracket, rest = pattern.strip().partition('[')
    if not bracket:
        return name, None
    rest = rest.rstrip()
    if rest.endswith(']'):
        rest = rest[:-1]
    return name, [param.strip() for param in rest.split(',')]


def key_rules(config, skip_block=False):
    """Every AllowKey/DenyKey rule in the agent's order: {'kind', 'pattern', 'file', 'line'}; skip_block leaves
    out the lines of the role's own AllowKey block."""
    skipped = config.block_lines(ALLOWKEY_BLOCK) if skip_block else set()
    return [{'kind': name, 'pattern': value, 'file': path, 'line': number}
            for name, value, path, number in config.params
            if name in ('AllowKey', 'DenyKey') and (path, number) not in skipped]


def rule_matches(pattern, name, form, every=False):
    """Whether a rule can match some key NAME (form 'bare') or some NAME[...] (form 'params'); with ``every``,
    whether it matches every such key."""
    if pattern.strip() == '*':
        return True
    rule_name, params = _split_pattern(pattern)
    if not _wildcard(rule_name, name):
        return False
    if form == 'bare':
        return params is None
    return params == ['*'] if every else params is not None


def denied_keys(config, names):
    """[{'key', 'rule', 'place'}] for each key form of ``names`` (NAME and NAME[...]) that some request would
    have denied: the first rule that can match it is a DenyKey, or an AllowKey matching only some of its
    parameters is followed by a DenyKey that can match."""
    rules = key_rules(config)
    denied = []
    for name in names:
        for form in ('bare', 'params'):
            for rule in rules:
                if rule['kind'] == 'AllowKey' and rule_matches(rule['pattern'], name, form, every=True):
                    break
                if rule['kind'] == 'DenyKey' and rule_matches(rule['pattern'], name, form):
                    entry = {'key': name if form == 'bare' else name + '[*]', 'rule': 'DenyKey=' + rule['pattern'],
                             'place': '{0}:{1}'.format(rule['file'], rule['line'])}
                    entry['text'] = '{key} is denied by {rule} ({place})'.format(**entry)
                    denied.append(entry)
                    break
    return denied


def allow_lines(names):
    """The AllowKey lines that allow exactly the role's keys, with and without parameters."""
    lines = []
    for name in names:
        lines.extend(['AllowKey={0}'.format(name), 'AllowKey={0}[*]'.format(name)])
    return lines


def allow_conflicts(config, names):
    """The DenyKey rules whose pattern is one of the role's AllowKey lines: the agent drops such a DenyKey ("conflicts
    with another rule defined above") once the AllowKey precedes it, and then the AllowKey with it, so the role
    cannot allow its keys there. ['DenyKey=... (file:line) ...']."""
    mine = set(line.partition('=')[2] for line in allow_lines(names))
    return ['DenyKey={0} ({1}:{2}) names a key of the role exactly'.format(rule['pattern'], rule['file'], rule['line'])
            for rule in key_rules(config, skip_block=True)
            if rule['kind'] == 'DenyKey' and rule['pattern'].strip() in mine]


def first_denying_rule(config, names):
    """The first DenyKey (not counting the role's own AllowKey block) that can match a key of ``names``: where the
    role's AllowKey lines must go. None when no rule denies them."""
    for rule in key_rules(config, skip_block=True):
        if rule['kind'] == 'DenyKey' and any(rule_matches(rule['pattern'], name, form)
                                             for name in names for form in ('bare', 'params')):
            return rule
    return None


# -- editing the files the agent loads -----------------------------------------------------------------------------
def set_block(text, name, body, before_line=0, crlf=False):
    """``text`` with the marked block ``# BEGIN name`` / ``# END name`` holding the lines ``body``: an empty
    body removes it; with ``before_line`` (a line number of ``text``) the block goes right before that line, else
    it stays where it is or is appended at the end. Line endings follow ``crlf``."""
    newline = '\r\n' if crlf else '\n'
    lines = text.splitlines(True)
    begin, end = '# BEGIN ' + name, '# END ' + name
    start = stop = None
    for index, line in enumerate(lines):
        if line.strip() == begin and start is None:
            start = index
        elif line.strip() == end and start is not None:
            stop = index
            break
    block = [line + newline for line in [begin] + list(body) + [end]] if body else []
    if start is not None and stop is not None:
        del lines[start:stop + 1]
        at = start
        if before_line:
            at = before_line - 1 - (stop + 1 - start if before_line - 1 > stop else 0)
    else:
        at = before_line - 1 if before_line else len(lines)
    if at == len(lines) and lines and not lines[-1].endswith('\n'):
        lines[-1] += newline
    lines[at:at] = block
    return ''.join(lines)


def comment_out_foreign(text, names, script, userparameter_path):
    """``text`` with every UserParameter line for one of ``names`` that does not run ``script`` commented out
    (the old recipe's: two definitions of a key stop the agent); a line's CR stays at its end."""
    keys = '(?:{0})\\[\\*\\]'.format('|'.join(re.escape(name) for name in names))
    regex = re.compile(r'^([ \t]*UserParameter[ \t]*=[ \t]*' + keys + r'[ \t]*,(?![ \t]*' + re.escape(script)
                       + r'[ \t])[^\r\n]*)(\r?)$', re.M)
    return regex.sub(lambda match: '# {0}  # replaced by the zabbix_tcp_status role ({1}){2}'.format(
        match.group(1), userparameter_path, match.group(2)), text)


def runs_script(command, script):
    return command == script or command.startswith(script + ' ')


# -- addresses ---------------------------------------------------------------------------------------------------
def _packed(address):
    """(family, bytes) of an IP address, IPv4-mapped IPv6 turned into IPv4; None if it is not an IP address."""
    address = address.strip().strip('[]')
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, address)
        except (socket.error, ValueError, OSError):
            continue
        if family == socket.AF_INET6 and packed[:12] == b'\x00' * 10 + b'\xff\xff':
            return socket.AF_INET, packed[12:]
        return family, packed
    return None


def _as_int(packed):
    value = 0
    for index in range(0, len(packed), 4):
        value = (value << 32) | struct.unpack('!I', packed[index:index + 4])[0]
    return value


def address_allowed(address, entries):
    """Whether an agent whose Server= is ``entries`` accepts a connection from ``address``: True, False, or None
    when it cannot be known here (Server= names hosts by DNS name, or the address is a name)."""
    peer = _packed(address)
    if peer is None:
        return None
    unknown = False
    for entry in entries:
        base, sep, bits = entry.partition('/')
        net = _packed(base)
        if net is None:
            if entry.lower() in LOOPBACK_NAMES and peer[1][:1] == b'\x7f':
                return True
            unknown = True  # a DNS name: the agent resolves it; this module does not
            continue
        if net[0] != peer[0]:
            continue
        width = len(net[1]) * 8
        try:
            prefix = int(bits) if sep else width
        except ValueError:
            continue
        if not 0 <= prefix <= width:
            continue
        shift = width - prefix
        if _as_int(net[1]) >> shift == _as_int(peer[1]) >> shift:
            return True
    return None if unknown else False


def verify_endpoint(config, source=''):
    """How zabbix_get reaches the agent: {'address', 'port', 'source', 'server_allows', 'tls'}.

    ``source`` is the address the agent sees the verifier connect from; empty means the agent's own host, which
    then connects to 127.0.0.1 (or ::1, or the first ListenIP when the agent listens on neither).
    """
    listen = split_list(config.setting('ListenIP')) or ['0.0.0.0']
    address = ''
    if not source:
        if any(ip in ('0.0.0.0', '::', '127.0.0.1') for ip in listen):
            address = '127.0.0.1'
        elif '::1' in listen:
            address = '::1'
        else:
            address = listen[0]
        source = address
    server = split_list(config.setting('Server'))
    allowed = address_allowed(source, server) if server else False
    return {'address': address, 'port': int(config.setting('ListenPort') or 10050), 'source': source,
            'server': server, 'server_allows': allowed, 'tls': tls_options(config)}


def tls_options(config):
    """What zabbix_get needs to pass the agent's TLSAccept: {'connect': unencrypted|psk|cert, ...files}."""
    accept = [item.lower() for item in split_list(config.setting('TLSAccept'))] or ['unencrypted']
    if 'unencrypted' in accept:
        return {'connect': 'unencrypted'}
    if 'psk' in accept:
        return {'connect': 'psk', 'psk_identity': config.setting('TLSPSKIdentity'),
                'psk_file': config.setting('TLSPSKFile')}
    return {'connect': 'cert', 'ca_file': config.setting('TLSCAFile'), 'cert_file': config.setting('TLSCertFile'),
            'key_file': config.setting('TLSKeyFile')}


def describe(config_path, flavour='agent', key_names=(), script='', file_name='', source='', backup_dir='',
             root=''):
    """Everything the role needs, as plain data (the module's result)."""
    config = AgentConfig(config_path, flavour, root)
    settings = config.settings()
    result = {
        'config': config.path,
        'files': config.files,
        'includes': config.includes,
        'settings': settings,
        'timeout': int(settings['Timeout'] or 3),
        'unsafe_userparameters': settings['UnsafeUserParameters'] == '1',
        'userparameters': config.userparameters,
        'duplicate_keys': config.duplicate_keys(),
        'line_endings': config.files[0]['line_endings'],
        'problems': config.problems,
        'verify': verify_endpoint(config, source),
    }
    if key_names:
        result.update(plan(config, key_names, script, file_name))
        result['denied_keys'] = denied_keys(config, key_names)
        result['allow_lines'] = allow_lines(key_names)
        result['allow_conflicts'] = allow_conflicts(config, key_names)
        result['stale'] = config.stale()
    if backup_dir:
        top = os.path.normpath(backup_dir)
        inside = [entry for entry in config.includes
                  if entry['directory'] == top or entry['directory'].startswith(top + '/')]
        if inside:
            raise AgentConfigError('the backup directory {0} holds the agent\'s Include={1} ({2}:{3}): backups '
                                   'there could be loaded as configuration'.format(
                                       backup_dir, inside[0]['value'], inside[0]['file'], inside[0]['line']))
    return result
