# -*- coding: utf-8 -*-
"""The tcp_status module's per-port breakdown (per_port=true, issue 10) through real ad-hoc runs, with the
controller's ansible-core and with ansible-core 2.16 on Python 2.7 and 3.6 targets, held to ss for the ports this
test owns (tcp_live.SocketFarm checks they are used by nothing else on the host)."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from ss_oracle import ss_sockets
from tcp_live import REPO, STATES, refuse_sock_diag, run_adhoc, run_adhoc_hosts, settle, zero_counts
from test_module_ansible import OLD_TARGETS, old_targets  # noqa: F401  (a fixture, used by name)


@pytest.fixture
def scene(farm):
    v4 = farm.listener('ipv4')
    dual = farm.listener('dual')
    farm.pair(v4)
    farm.pair(v4)
    farm.close_wait(v4)
    farm.pair(dual, client='ipv6')
    farm.time_wait(dual)
    want = zero_counts()
    want.update(LISTEN=1, ESTABLISHED=2, CLOSE_WAIT=1)
    assert settle(want, local=(v4,)) == want
    return {'v4': v4, 'dual': dual}


def ss_states(side, port):
    counts = zero_counts()
    for _family, state, lport, rport in ss_sockets():
        if (lport if side == 'local' else rport) == port:
            counts[state] += 1
    return counts


def check(per_port, scene, backend='netlink'):
    v4, dual = scene['v4'], scene['dual']
    ports = dict((entry['port'], entry) for entry in per_port['ports'])
    assert sorted(ports) == sorted([v4, dual]), per_port['ports']  # local_ports chose them
    assert ports[v4]['states'] == ss_states('local', v4), ports[v4]
    assert ports[dual]['states'] == ss_states('local', dual), ports[dual]
    assert ports[v4]['states']['ESTABLISHED'] == 2 and ports[v4]['states']['CLOSE_WAIT'] == 1
    assert ports[v4]['queue'] == 0 and ports[v4]['backlog'] == (64 if backend == 'netlink' else None)
    assert [entry['port'] for entry in per_port['remote']] == sorted([v4, dual])
    remote = dict((entry['port'], entry['states']) for entry in per_port['remote'])
    assert remote[v4] == ss_states('remote', v4) and remote[v4]['FIN_WAIT2'] == 1, remote
    assert remote[dual] == ss_states('remote', dual) and remote[dual]['TIME_WAIT'] == 1, remote
    assert per_port['truncated'] == 0 and per_port['backend'] == backend
    assert all(type(per_port[key]) is int and per_port[key] >= 0 for key in ('listen_overflows', 'listen_drops'))
    for entry in per_port['ports'] + per_port['remote']:
        assert list(sorted(entry['states'])) == sorted(STATES)


def test_adhoc_per_port(scene):
    ports = '{0},{1}'.format(scene['v4'], scene['dual'])
    status, result, proc = run_adhoc('per_port=true local_ports={0} remote_ports={0}'.format(ports))
    assert status == 'SUCCESS', proc.stdout + proc.stderr
    check(result['per_port'], scene)
    assert result['ansible_facts']['tcp_status']['per_port'] == result['per_port']
    # Without per_port, no breakdown; a bound of 1 keeps one port and says one was cut.
    status, result, proc = run_adhoc('local_ports={0}'.format(ports))
    assert status == 'SUCCESS' and 'per_port' not in result, result
    status, result, proc = run_adhoc('per_port=true max_ports=1 local_ports={0}'.format(ports))
    assert status == 'SUCCESS', proc.stdout + proc.stderr
    assert [entry['port'] for entry in result['per_port']['ports']] == [scene['v4']]  # the busier one
    assert result['per_port']['truncated'] == 1


def test_adhoc_per_port_bad_input_and_refused_netlink(scene):
    status, result, proc = run_adhoc('per_port=true max_ports=0')
    assert status == 'FAILED!' and 'bad MAX_PORTS 0;' in result['msg'], result
    status, result, proc = run_adhoc('per_port=true backend=counters')
    assert status == 'FAILED!' and "backend 'counters' cannot count per port" in result['msg'], result
    ports = '{0},{1}'.format(scene['v4'], scene['dual'])
    status, result, proc = run_adhoc('per_port=true local_ports={0} remote_ports={0}'.format(ports),
                                     preexec_fn=refuse_sock_diag)
    assert status == 'SUCCESS', proc.stdout + proc.stderr
    check(result['per_port'], scene, backend='proc')
    assert result['per_port']['fallbacks'][0].startswith('netlink: cannot open a NETLINK_SOCK_DIAG socket')


def test_adhoc_per_port_on_old_targets(scene, ansible_216, old_targets):  # noqa: F811
    ports = '{0},{1}'.format(scene['v4'], scene['dual'])
    results, proc = run_adhoc_hosts('per_port=true local_ports={0} remote_ports={0}'.format(ports),
                                    extra=old_targets, bin_dir=ansible_216, pattern='old_targets')
    assert sorted(results) == sorted(OLD_TARGETS), proc.stdout + proc.stderr
    for host, (status, result) in sorted(results.items()):
        assert status == 'SUCCESS', (host, result)
        check(result['per_port'], scene)


def test_fleet_report_lists_the_busiest_ports(scene, tmp_path):
    """tools/fleet_report.py --ports on a real module result (fleet-report.yml passes fleet_report_ports to both)."""
    ports = '{0},{1}'.format(scene['v4'], scene['dual'])
    status, result, proc = run_adhoc('per_port=true local_ports={0}'.format(ports))
    assert status == 'SUCCESS', proc.stdout + proc.stderr
    results = tmp_path / 'results.json'
    results.write_text(json.dumps({'localhost': result, 'ghost': {}}))
    report = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'fleet_report.py'), str(results),
                             '--out-dir', str(tmp_path), '--ports', '1'], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    with open(str(tmp_path / 'fleet-report-ports.csv')) as handle:
        rows = list(csv.DictReader(handle))
    # One port per host (the busier of the two: v4 has 3 connections, dual 1), as ss counts it.
    want = ss_states('local', scene['v4'])
    assert [(row['host'], int(row['port'])) for row in rows] == [('localhost', scene['v4'])], rows
    assert dict((state, int(rows[0][state])) for state in STATES) == want
    assert int(rows[0]['sockets']) == sum(want.values()) - 1 and rows[0]['backlog'] == '64'
    assert re.search(r'(?m)^localhost\s+{0}\s+-\s+3\s+2\s+0\s+0\s+1\s+0/64$'.format(scene['v4']), report.stdout), \
        report.stdout
    with open(str(tmp_path / 'fleet-report.json')) as handle:
        summary = json.load(handle)
    assert [row['ports'] for row in summary['rows'] if row['host'] == 'ghost'] == [[]]


def test_ansible_doc_documents_the_per_port_options():
    from tcp_live import LIBRARY, VENV_BIN, ansible_env
    proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-doc'), '-M', LIBRARY, '--json', 'tcp_status'], cwd=REPO,
                          env=ansible_env(), capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(proc.stdout)['tcp_status']
    options = doc['doc']['options']
    assert (options['per_port']['type'], options['per_port']['default']) == ('bool', False)
    assert (options['max_ports']['type'], options['max_ports']['default']) == ('int', 100)
    per_port = doc['return']['per_port']
    assert per_port['type'] == 'dict' and sorted(per_port['contains']) == [
        'backend', 'fallbacks', 'listen_drops', 'listen_overflows', 'ports', 'remote', 'truncated']
    assert 'per_port: true' in doc['examples']
