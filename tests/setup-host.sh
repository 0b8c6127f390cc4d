#!/bin/sh
# Installs the Debian packages the tests run against. Idempotent; needs root.
set -eu
packages="zabbix-agent zabbix-agent2 zabbix-proxy-sqlite3 net-tools iproute2 procps util-linux debootstrap bc time checkpolicy semodule-utils"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
# Debian's maintainer scripts may not start services here (policy-rc.d); the tests start what they need.
for service in zabbix-agent zabbix-agent2 zabbix-proxy; do
    service "$service" stop >/dev/null 2>&1 || true
done
