#!/bin/sh
# Makes sure the ansible-core 2.16 controller venv exists: the last ansible-core that manages Python 2.7 targets
# (CentOS 7). Used by the fleet scenario and by the module tests (tests/integration/conftest.py).
set -eu
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${ZTS_ANSIBLE_CORE_216_VENV:-/root/.cache/zts/venv-ansible-core-2.16}
REQ=$REPO/tests/integration/requirements-ansible-core-2.16.txt
PYTHON=${ZTS_ANSIBLE_CORE_216_PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if ! cmp -s "$REQ" "$VENV/.zts-requirements"; then
    "$PYTHON" -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$VENV/.zts-requirements"
fi
"$VENV/bin/ansible" --version | grep -q 'core 2\.16\.' || { echo "$VENV: not ansible-core 2.16" >&2; exit 1; }
echo "$VENV"
