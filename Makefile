# The two commands a newcomer needs:
#   make deploy   run the main job on this machine: ansible-playbook playbook.yml against localhost
#   make test     run every test (installs what it needs: Debian packages, the controller venv)
#   make bench    rerun the whole benchmark (1k to 1M sockets with connection churn, ~8-9 min, ~5 GB free RAM)
#                 and rewrite docs/BENCHMARK.md and its plot
# Both set themselves up on a fresh Debian/Ubuntu machine (run as root).

VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_FORCE_COLOR := 0
export PY_COLORS := 0

.PHONY: deploy test venv host-packages lint unit role molecule fleet zabbix-template zabbix-e2e zabbix-pictures bench \
        bench-smoke

deploy: venv
	$(BIN)/ansible-playbook playbook.yml

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt bench/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r bench/requirements.txt
	touch $@

# The real parts the tests run against: both agents, zabbix_get (Debian ships it in the proxy package), netstat
# for the old recipe, ss.
host-packages:
	tests/setup-host.sh

test: venv host-packages lint unit role molecule zabbix-template zabbix-e2e bench-smoke fleet

lint: venv
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --nocolor

unit: venv
	$(BIN)/python -m pytest -q tests/unit tests/integration tests/test_readme.py

role: venv
	$(BIN)/python -m pytest -q tests/role

# These drive this machine's own agent: hold its lock, as the other tests that do.
molecule: venv
	flock /tmp/zts-system-agent.lock $(BIN)/molecule test -s default
	flock /tmp/zts-system-agent.lock $(BIN)/molecule test -s agent2

# Eleven real hosts (debootstrap images in namespaces, sshd, agents 5.0/6.0/agent2/7.0, a Python 2.7 host, a broken
# one, a server host running zabbix_get, and the EL 7 / directory-include / PSK / UnsafeUserParameters config
# shapes): see docs/FLEET.md. Images are cached in /root/.cache/zts.
fleet: venv
	$(BIN)/molecule test -s fleet

# The template as data (no server), then real Zabbix servers 5.0 (bullseye), 6.0 (bookworm) and 7.0 (trixie), each
# from its suite's Debian packages in its own debootstrapped root (tests/zabbix_server/server_images.py, cached in
# /root/.cache/zts/server-rootfs), with its own PostgreSQL and frontend: registration, values, triggers, pictures.
# See docs/TEMPLATE.md. zabbix-pictures renders docs/pictures/ again from a 7.0 run.
zabbix-template: venv
	$(BIN)/python -m pytest -q tests/zabbix_server/test_template.py

zabbix-e2e: venv
	$(BIN)/python -m pytest -q tests/zabbix_server/test_e2e.py

zabbix-pictures: venv
	ZTS_E2E_VERSIONS=7.0 ZTS_E2E_PICTURES=docs/pictures $(BIN)/python -m pytest -q tests/zabbix_server/test_e2e.py

# The benchmark (docs/BENCHMARK.md): the whole run, and the 1k-socket smoke version that keeps the harness alive.
bench: venv host-packages
	bench/run.sh

bench-smoke: venv host-packages
	$(BIN)/python -m pytest -q tests/test_bench_smoke.py
