"""Smoke version of the benchmark (issue 6), so that the harness cannot rot.

Runs ``bench/run.sh --smoke`` for real: 1k real loopback sockets, a private
zabbix_agentd on its own port, real zabbix_get calls, every method. Needs root,
zabbix_agentd, zabbix_get, netstat and ss (as the rest of the suite does).
"""

import json
import os
import subprocess
import sys

from bench.loadgen import hold_sockets, read_port_range
from ss_oracle import ss_state_counts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, 'bench')
SMOKE_AGENT_PORT = '10071'  # the run has its own network namespace; a distinct port keeps logs apart
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'



def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose: it holds no sockets.
    with open('/proc/{0}/stat'.format(pid)) as handle:
        return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'


def test_loadgen_holds_real_sockets_and_closes_them():
    before = ss_state_counts()
    port_range = read_port_range()
    with hold_sockets(total=1000, timeout=60) as load:
        during = ss_state_counts()
        pids = load.pids
        assert during.get('ESTABLISHED', 0) - before.get('ESTABLISHED', 0) >= load.expected['ESTABLISHED']
        assert during.get('CLOSE_WAIT', 0) - before.get('CLOSE_WAIT', 0) >= load.expected['CLOSE_WAIT']
        assert during.get('FIN_WAIT2', 0) - before.get('FIN_WAIT2', 0) >= load.expected['FIN_WAIT2']
        assert during.get('LISTEN', 0) - before.get('LISTEN', 0) >= load.expected['LISTEN']
        assert during.get('TIME_WAIT', 0) - before.get('TIME_WAIT', 0) >= load.expected['TIME_WAIT'] - 5
    assert not [pid for pid in pids if _alive(pid)], 'load workers still running after the with block'
    after = ss_state_counts()
    # Reset, not closed gracefully: nothing of ours is left but the TIME_WAIT batch.
    assert after.get('ESTABLISHED', 0) < before.get('ESTABLISHED', 0) + 50
    assert after.get('CLOSE_WAIT', 0) < before.get('CLOSE_WAIT', 0) + 10
    assert read_port_range() == port_range


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / 'bench'
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:
        env['VENV'] = sys.prefix  # the venv running the tests; otherwise run.sh uses the repo's .venv
    run = subprocess.run(
        [os.path.join(BENCH, 'run.sh'), '--smoke', '--out', str(out), '--agent-port', SMOKE_AGENT_PORT],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=180)
    log = run.stdout.decode('utf-8', 'replace')
    assert run.returncode == 0, log

    results = json.loads((out / 'results.json').read_text())
    assert results['smoke'] is True
    assert [entry['target_sockets'] for entry in results['sizes']] == [1000]
    entry = results['sizes'][0]
    method_ids = [method['id'] for method in results['methods']]
    assert set(method_ids) == {'recipe', 'ss_one', 'ss_all', 'native', 'ours_one', 'ours_all',
                               'proc_one', 'proc_all', 'full_all', 'minority', 'ports', 'ports_floor'}
    for method_id in method_ids:
        agent_timing = entry['timings'][method_id]['agent']
        assert agent_timing['n'] == len(agent_timing['samples']) >= 3
        assert 0 < agent_timing['min'] <= agent_timing['median'] <= agent_timing['max'] < 30
    # Every method, bare and through zabbix_get, counted the same sockets.
    correctness = entry['correctness']
    disagreeing = dict((name, item) for name, item in correctness['methods'].items() if not item['agreed'])
    assert not disagreeing, disagreeing
    assert results['all_agreed'] is True
    assert len(correctness['methods']) == 23  # 12 methods through the agent, 11 as bare commands
    # The per-port rows listed every listening port (the load's, the churn's and the agent's) and counted them.
    for route in ('bare', 'agent'):
        ports = correctness['methods']['ports/' + route]
        assert ports['ports_listed'] == ports['ports_listening'] >= 3 and ports['unknown'] == [], ports
        assert ports['counts']['ESTABLISHED'] > 0 and ports['counts']['LISTEN'] == ports['ports_listening'], ports
        floor = correctness['methods']['ports_floor/' + route]['counts']
        assert floor['listening/ESTABLISHED'] >= ports['counts']['ESTABLISHED'] - 2, (floor, ports)
    assert entry['max_rss_kib']['ours_all'] > 0
    assert set(entry['interval']) >= {'ours_all', 'native', 'ss_one', 'recipe'}

    assert (out / 'bench.png').read_bytes()[:8] == PNG_MAGIC
    markdown = (out / 'BENCHMARK.md').read_text()
    assert '## Targets (issues 13 and 10), ratios within this run' in markdown
    assert '| ours (all states, 1 call) | via zabbix_get |' in markdown
    assert '| ours, per port (every listening port, 1 call) | via zabbix_get |' in markdown

    # It ran in its own network namespace, and nothing of it is left: not its agent, not its load workers.
    assert results['private_netns'] is True
    pids = [results['agent']['pid']] + entry['loadgen']['pids']
    assert not [pid for pid in pids if _alive(pid)], pids
