#!/bin/bash
# Scale figures: for each N, start a fleet of N agent hosts (plus the server host), time a converge of
# playbook.yml and an idempotent rerun from the repo's controller venv, then stop the fleet.
#   tests/fleet/scale.sh 1 4 16        # prints one Markdown table row per N; logs in $ZTS_SCALE_LOGS
# Settings are the repo's ansible.cfg (forks, pipelining), printed with the results.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
FLEETCTL=$REPO/tests/fleet/fleetctl.py
LOGS=${ZTS_SCALE_LOGS:-/tmp/zts-fleet-scale}
ANSIBLE_PLAYBOOK=${ANSIBLE_PLAYBOOK:-$REPO/.venv/bin/ansible-playbook}
mkdir -p "$LOGS"
trap '"$FLEETCTL" down >/dev/null 2>&1 || true' EXIT
cd "$REPO"
export ANSIBLE_NOCOLOR=1
echo "ansible: $("$ANSIBLE_PLAYBOOK" --version | head -n 1); forks=$("$REPO/.venv/bin/ansible-config" dump 2>/dev/null | sed -n 's/^DEFAULT_FORKS.*= //p'); pipelining(ssh)=$(sed -n 's/^pipelining *= *//p' "$REPO/ansible.cfg"); cpus=$(nproc)"
echo "| agent hosts | converge (s) | rerun (s) | tasks/host (ok+changed, rerun) | changed on rerun | failed |"
echo "|---|---|---|---|---|---|"
for n in "$@"; do
    inv=$LOGS/inv-$n
    "$FLEETCTL" up --agents "$n" --inventory "$inv" 2>"$LOGS/up-$n.log"
    times=()
    for run in converge rerun; do
        t0=$(date +%s.%N)
        "$ANSIBLE_PLAYBOOK" -i "$inv/fleet.yml" playbook.yml >"$LOGS/$run-$n.log" 2>&1 || true
        t1=$(date +%s.%N)
        times+=("$(echo "$t1 - $t0" | bc)")
    done
    recap=$(grep -E '^\S+\s+: ok=' "$LOGS/rerun-$n.log")
    changed=$(echo "$recap" | sed -n 's/.*changed=\([0-9]*\).*/\1/p' | paste -sd+ | bc)
    failed=$(grep -hE '^\S+\s+: ok=' "$LOGS/converge-$n.log" "$LOGS/rerun-$n.log" | sed -n 's/.*failed=\([0-9]*\).*/\1/p' | paste -sd+ | bc)
    tasks=$(echo "$recap" | head -n 1 | sed -n 's/.*ok=\([0-9]*\).*/\1/p')
    printf '| %s | %.1f | %.1f | %s | %s | %s |\n' "$n" "${times[0]}" "${times[1]}" "$tasks" "$changed" "$failed"
    "$FLEETCTL" down 2>>"$LOGS/up-$n.log"
done
