#!/bin/sh
# Rerun the whole benchmark (about 5 minutes here), or a 1k-socket smoke version:
#   bench/run.sh [--smoke] [--out DIR] [--markdown PATH] [--agent-port PORT]
# Uses the project's venv (VENV=... to choose another) and installs the pinned
# matplotlib from bench/requirements.txt into it if it is missing. Run as root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${VENV:-$here/../.venv}
if [ ! -x "$venv/bin/python" ]; then
    echo "bench/run.sh: no Python venv at $venv (create it, or set VENV=...)" >&2
    exit 2
fi
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
fi
exec "$venv/bin/python" "$here/run.py" "$@"
