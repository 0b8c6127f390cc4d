#!/bin/sh
# Rerun the whole benchmark (1k to 1M sockets, about 8 minutes here), or a 1k-socket smoke version:
#   bench/run.sh [--smoke] [--out DIR] [--markdown PATH] [--agent-port PORT] [--sizes 1000,10000]
# Uses the project's venv (VENV=... to choose another) and installs the pinned
# matplotlib from bench/requirements.txt into it if it is missing. Run as root.
#
# The run happens in a private network namespace (unshare --net, loopback only):
# other jobs' sockets neither enter the counts nor get touched, and the port range
# the load generator widens is that namespace's own. The namespace ends with the run.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ "${ZTS_BENCH_NETNS:-}" != 1 ]; then
    venv=${VENV:-$here/../.venv}
    if [ ! -x "$venv/bin/python" ]; then
        echo "bench/run.sh: no Python venv at $venv (create it, or set VENV=...)" >&2
        exit 2
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "bench/run.sh: run as root (network namespace, port range, private agent with AllowRoot=1)" >&2
        exit 2
    fi
    if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
    fi
    ZTS_BENCH_NETNS=1 VENV=$venv exec unshare --net -- "$here/run.sh" "$@"
fi
ip link set lo up
# As a module from the repository root: bench.* and zabbix.* as packages, the counter as the role's module_utils.
repo=$(cd "$here/.." && pwd)
cd "$repo"
PYTHONPATH="$repo:$repo/roles/zabbix_tcp_status/module_utils${PYTHONPATH:+:$PYTHONPATH}" \
    exec "$VENV/bin/python" -m bench.run "$@"
