# -*- coding: utf-8 -*-
"""The agent-configuration reader (module_utils/zabbix_agent_config.py) on the shapes real fleets have.

Each test lays a host's /etc/zabbix out in a temporary root (from tests/fixtures/agent_configs, real package files,
or text written here) and reads it as the agent would. Plain unittest, so that the same file runs under the
targets' Python 2.7 and 3.6 (test_old_pythons.py) as well as under pytest.
"""
from __future__ import absolute_import, division, print_function

import os
import shutil
import tempfile
import unittest

from zabbix_agent_config import AgentConfig, AgentConfigError, address_allowed, describe

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures', 'agent_configs')
KEYS = ['tcp.status', 'tcp.status.json']
SCRIPT = '/etc/zabbix/tcp_status.py'
UP_FILE = 'userparameter_tcp_status.conf'
RECIPE_LINE = 'UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2'
OUR_LINE = "UserParameter=tcp.status[*],/etc/zabbix/tcp_status.py '$1' '$2' '$3' '$4'"


class Host(object):
    """A temporary root laid out like a host's /."""

    def __init__(self, shape=None, dirs=()):
        self.root = tempfile.mkdtemp(prefix='zts-agent-config-')
        if shape:
            shutil.rmtree(self.root)
            shutil.copytree(os.path.join(FIXTURES, shape), self.root)
        for directory in dirs:
            if not os.path.isdir(self.real(directory)):
                os.makedirs(self.real(directory))

    def real(self, path):
        return self.root + path

    def write(self, path, text, mode='w'):
        if not os.path.isdir(os.path.dirname(self.real(path))):
            os.makedirs(os.path.dirname(self.real(path)))
        with open(self.real(path), mode) as handle:
            handle.write(text)

    def append(self, path, text):
        self.write(path, text, 'a')

    def describe(self, config, flavour='agent', source='', backup_dir=''):
        return describe(config, flavour, KEYS, SCRIPT, UP_FILE, source, backup_dir, root=self.root)

    def close(self):
        shutil.rmtree(self.root)


class ShapeTest(unittest.TestCase):
    def host(self, shape=None, dirs=()):
        host = Host(shape, dirs)
        self.addCleanup(host.close)
        return host


class PackageShapes(ShapeTest):
    def test_centos7_agent30_directory_include(self):
        host = self.host('el7-agent30')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual([(i['kind'], i['path']) for i in got['includes']],
                         [('directory', '/etc/zabbix/zabbix_agentd.d')])
        self.assertEqual(got['userparameter_path'], '/etc/zabbix/zabbix_agentd.d/' + UP_FILE)
        self.assertEqual(got['foreign_files'], ['/etc/zabbix/zabbix_agentd.conf'])
        self.assertEqual([u['key'] for u in got['userparameters']],
                         ['mysql.status[*]', 'mysql.size[*]', 'mysql.ping', 'mysql.version', 'tcp.status[*]'],
                         'in load order: the directory is included before the recipe line at the end')
        self.assertEqual(got['settings']['Server'], '127.0.0.1')
        self.assertEqual(got['timeout'], 3)
        self.assertEqual(got['duplicate_keys'], {})

    def test_directory_include_loads_backups_and_any_name(self):
        """What broke agents: in a directory Include, an Ansible backup (*~) or an .rpmsave is configuration."""
        host = self.host('el7-agent30')
        directory = '/etc/zabbix/zabbix_agentd.d/'
        host.write(directory + UP_FILE, OUR_LINE + '\n')
        host.write(directory + UP_FILE + '.4242.2026-11-27@10:11:12~', OUR_LINE + '\n')
        host.write(directory + 'tcp.conf.rpmsave', RECIPE_LINE + '\n')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        loaded = [f['path'] for f in got['files']]
        self.assertIn(directory + UP_FILE + '.4242.2026-11-27@10:11:12~', loaded)
        self.assertIn(directory + 'tcp.conf.rpmsave', loaded)
        self.assertEqual(got['stray_backups'], [directory + UP_FILE + '.4242.2026-11-27@10:11:12~'])
        self.assertEqual(sorted(got['foreign_files']),
                         ['/etc/zabbix/zabbix_agentd.conf', directory + 'tcp.conf.rpmsave'])
        self.assertEqual(len(got['duplicate_keys']['tcp.status[*]']), 4)

    def test_trailing_slash_and_double_slash_give_clean_paths(self):
        host = self.host('el7-agent30')
        host.append('/etc/zabbix/zabbix_agentd.conf', 'Include=/etc/zabbix//zabbix_agentd.d//\n')
        config = AgentConfig('/etc/zabbix/zabbix_agentd.conf', root=host.root)
        self.assertEqual(config.userparameter_path(UP_FILE), '/etc/zabbix/zabbix_agentd.d/' + UP_FILE)
        self.assertTrue(all('//' not in f['path'] for f in config.files))

    def test_el_agent40_glob_loads_only_matches(self):
        host = self.host('el7-agent30')
        conf = '/etc/zabbix/zabbix_agentd.conf'
        with open(host.real(conf)) as handle:
            text = handle.read().replace('Include=/etc/zabbix/zabbix_agentd.d/\n',
                                         'Include=/etc/zabbix/zabbix_agentd.d/*.conf\n')
        host.write(conf, text.replace(RECIPE_LINE + '\n', ''))
        host.write('/etc/zabbix/zabbix_agentd.d/tcp_connections.conf', RECIPE_LINE + '\n')
        host.write('/etc/zabbix/zabbix_agentd.d/old.conf.rpmsave', RECIPE_LINE + '\n')
        host.write('/etc/zabbix/zabbix_agentd.d/tcp_connections.conf.disabled', RECIPE_LINE + '\n')
        got = host.describe(conf)
        self.assertEqual(got['includes'][0]['kind'], 'pattern')
        self.assertEqual(got['foreign_files'], ['/etc/zabbix/zabbix_agentd.d/tcp_connections.conf'])
        self.assertEqual(got['userparameter_path'], '/etc/zabbix/zabbix_agentd.d/' + UP_FILE)
        self.assertNotIn('/etc/zabbix/zabbix_agentd.d/old.conf.rpmsave', [f['path'] for f in got['files']])

    def test_debian_agentd_package_file(self):
        host = self.host('debian-agentd', dirs=['/etc/zabbix/zabbix_agentd.conf.d'])
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual(got['userparameter_path'], '/etc/zabbix/zabbix_agentd.conf.d/' + UP_FILE)
        self.assertEqual(got['foreign_files'], [])
        self.assertEqual(got['verify']['address'], '127.0.0.1')
        self.assertEqual(got['verify']['port'], 10050)
        self.assertIs(got['verify']['server_allows'], True)
        self.assertEqual(got['verify']['tls'], {'connect': 'unencrypted'})
        self.assertFalse(got['unsafe_userparameters'])
        self.assertEqual(got['line_endings'], 'lf')

    def test_debian_agent2_relative_include(self):
        host = self.host('debian-agent2')
        got = host.describe('/etc/zabbix/zabbix_agent2.conf', flavour='agent2')
        self.assertEqual([(i['value'], i['path']) for i in got['includes']],
                         [('/etc/zabbix/zabbix_agent2.d/*.conf', '/etc/zabbix/zabbix_agent2.d/*.conf'),
                          ('./zabbix_agent2.d/plugins.d/*.conf', '/etc/zabbix/zabbix_agent2.d/plugins.d/*.conf')])
        self.assertIn('/etc/zabbix/zabbix_agent2.d/plugins.d/mysql.conf', [f['path'] for f in got['files']])
        self.assertEqual(got['userparameter_path'], '/etc/zabbix/zabbix_agent2.d/' + UP_FILE)

    def test_community_zabbix_rendered_psk(self):
        host = self.host('community-zabbix', dirs=['/etc/zabbix/zabbix_agentd.d'])
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual(got['userparameter_path'], '/etc/zabbix/zabbix_agentd.d/' + UP_FILE)
        self.assertEqual(got['timeout'], 5)
        self.assertEqual(got['verify']['tls'], {'connect': 'psk', 'psk_identity': 'web01-psk',
                                                'psk_file': '/etc/zabbix/tls_psk_auto.secret'})
        self.assertIs(got['verify']['server_allows'], True)
        remote = host.describe('/etc/zabbix/zabbix_agentd.conf', source='192.0.2.10')
        self.assertEqual(remote['verify']['address'], '')
        self.assertIs(remote['verify']['server_allows'], True)
        self.assertIs(host.describe('/etc/zabbix/zabbix_agentd.conf', source='192.0.2.11')['verify']['server_allows'],
                      False)


class WrittenShapes(ShapeTest):
    def test_crlf_config(self):
        host = self.host(dirs=['/etc/zabbix/zabbix_agentd.d'])
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Server=127.0.0.1\r\nTimeout=10\r\n'
                   'Include=/etc/zabbix/zabbix_agentd.d/*.conf\r\n' + RECIPE_LINE + '\r\n')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual(got['line_endings'], 'crlf')
        self.assertEqual(got['timeout'], 10)
        self.assertEqual(got['userparameters'][0]['command'], '/etc/zabbix/tcp_connections.sh $1 $2')
        self.assertEqual(got['userparameter_path'], '/etc/zabbix/zabbix_agentd.d/' + UP_FILE)
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Server=127.0.0.1\r\nTimeout=10\n')
        self.assertEqual(host.describe('/etc/zabbix/zabbix_agentd.conf')['line_endings'], 'mixed')

    def test_several_includes_the_first_that_loads_the_file_wins_and_comments_are_ignored(self):
        host = self.host(dirs=['/etc/zabbix/a', '/etc/zabbix/b', '/etc/zabbix/c'])
        host.write('/etc/zabbix/zabbix_agentd.conf', '# Include=/etc/zabbix/c/\n'
                   'Include=/etc/zabbix/a/*.local\nInclude=/etc/zabbix/b/*.conf\nInclude=/etc/zabbix/c/\n'
                   'Server=10.1.0.0/16\n')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual(len(got['includes']), 3)
        self.assertEqual(got['userparameter_path'], '/etc/zabbix/b/' + UP_FILE)
        self.assertIs(got['verify']['server_allows'], False, 'Server= leaves 127.0.0.1 out')

    def test_no_include_means_a_block_in_the_main_file(self):
        host = self.host()
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Server=127.0.0.1\n' + RECIPE_LINE + '\n')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual(got['userparameter_path'], '')
        self.assertEqual(got['foreign_files'], ['/etc/zabbix/zabbix_agentd.conf'])

    def test_our_own_line_is_not_foreign(self):
        host = self.host(dirs=['/etc/zabbix/d'])
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Include=/etc/zabbix/d/\n')
        host.write('/etc/zabbix/d/' + UP_FILE, OUR_LINE + '\n')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual((got['foreign_files'], got['stray_backups'], got['duplicate_keys']), ([], [], {}))

    def test_nested_and_repeated_includes(self):
        host = self.host(dirs=['/etc/zabbix/d', '/etc/zabbix/e'])
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Include=/etc/zabbix/d/*.conf\nInclude=/etc/zabbix/d/*.conf\n')
        host.write('/etc/zabbix/d/1.conf', 'Include=./e/\n')
        host.write('/etc/zabbix/e/x', RECIPE_LINE + '\n')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertEqual([f['path'] for f in got['files']],
                         ['/etc/zabbix/zabbix_agentd.conf', '/etc/zabbix/d/1.conf', '/etc/zabbix/e/x'])
        self.assertEqual(got['foreign_files'], ['/etc/zabbix/e/x'])

    def test_missing_include_is_an_error(self):
        host = self.host()
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Include=/etc/zabbix/nowhere.conf\n')
        with self.assertRaises(AgentConfigError) as caught:
            host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertIn('nowhere.conf', str(caught.exception))

    def test_unsafe_userparameters_and_listen_ip(self):
        host = self.host()
        host.write('/etc/zabbix/zabbix_agentd.conf', 'UnsafeUserParameters=1\nListenIP=192.0.2.7\nListenPort=10070\n'
                   'Server=192.0.2.7,zabbix.example.com\n')
        got = host.describe('/etc/zabbix/zabbix_agentd.conf')
        self.assertTrue(got['unsafe_userparameters'])
        self.assertEqual((got['verify']['address'], got['verify']['port']), ('192.0.2.7', 10070))
        self.assertIs(got['verify']['server_allows'], True)

    def test_no_server_means_no_passive_checks(self):
        host = self.host()
        host.write('/etc/zabbix/zabbix_agentd.conf', 'ServerActive=192.0.2.1\n')
        self.assertIs(host.describe('/etc/zabbix/zabbix_agentd.conf')['verify']['server_allows'], False)

    def test_cert_tls(self):
        host = self.host()
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Server=127.0.0.1\nTLSAccept=cert\nTLSCAFile=/c/ca.crt\n'
                   'TLSCertFile=/c/agent.crt\nTLSKeyFile=/c/agent.key\n')
        self.assertEqual(host.describe('/etc/zabbix/zabbix_agentd.conf')['verify']['tls'],
                         {'connect': 'cert', 'ca_file': '/c/ca.crt', 'cert_file': '/c/agent.crt',
                          'key_file': '/c/agent.key'})

    def test_backup_dir_inside_an_include_is_refused(self):
        host = self.host(dirs=['/var/lib/zts/d'])
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Include=/var/lib/zts/d/\n')
        with self.assertRaises(AgentConfigError):
            host.describe('/etc/zabbix/zabbix_agentd.conf', backup_dir='/var/lib/zts')
        self.assertTrue(host.describe('/etc/zabbix/zabbix_agentd.conf', backup_dir='/var/lib/other'))

    def test_garbage_line_is_reported(self):
        host = self.host()
        host.write('/etc/zabbix/zabbix_agentd.conf', 'Server=127.0.0.1\nthis is not a setting\n')
        self.assertEqual(len(host.describe('/etc/zabbix/zabbix_agentd.conf')['problems']), 1)


class Addresses(unittest.TestCase):
    def test_allowlist_matching(self):
        cases = [
            ('127.0.0.1', ['127.0.0.1'], True),
            ('127.0.0.1', ['::ffff:127.0.0.1'], True),
            ('127.0.0.1', ['127.0.0.0/8'], True),
            ('10.231.0.10', ['127.0.0.1', '10.231.0.0/24'], True),
            ('10.231.0.10', ['127.0.0.1', '10.231.1.0/24'], False),
            ('::1', ['::1'], True),
            ('::1', ['127.0.0.1'], False),
            ('2001:db8::5', ['2001:db8::/32'], True),
            ('127.0.0.1', ['localhost'], True),
            ('10.0.0.1', ['zabbix.example.com'], None),
            ('10.0.0.1', ['zabbix.example.com', '10.0.0.1'], True),
            ('server.example.com', ['10.0.0.1'], None),
            ('10.0.0.1', ['0.0.0.0/0'], True),
        ]
        for address, entries, want in cases:
            self.assertIs(address_allowed(address, entries), want, (address, entries))


if __name__ == '__main__':
    unittest.main()
