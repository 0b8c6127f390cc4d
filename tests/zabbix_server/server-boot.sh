#!/bin/sh
# PID 1 of one Zabbix server of the matrix. lab.py starts it as
#   unshare --mount --pid --fork --kill-child --propagation private sh server-boot.sh
# in this machine's network namespace (loopback ports), so that killing it kills every process of the server and
# its mounts go with its private mount namespace. The root is an overlay over the suite's cached image
# (server_images.py); $ZTS_LAB/share is mounted at /zts inside: lab.py writes zabbix_server.conf and
# zabbix.conf.php there beforehand, every log lands there, and the steps are logged with times in /zts/boot.log.
# Environment: ZTS_IMAGE (the image), ZTS_LAB (upper, work, root, share), ZTS_PG_PORT, ZTS_API_PORT.
set -eu
R="$ZTS_LAB/root"
IN_ROOT="env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root chroot $R"
step() { echo "$(date +%s.%N | cut -c1-14) $*"; }

. "$(dirname "$0")/../fleet/root-mounts.sh"

step mount
mount_root "$ZTS_IMAGE" "$ZTS_LAB/upper" "$ZTS_LAB/work" "$R"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mkdir -p "$R/zts"
mount --bind "$ZTS_LAB/share" "$R/zts"
# The frontend reads Debian's path.
cp "$ZTS_LAB/share/zabbix.conf.php" "$R/etc/zabbix/zabbix.conf.php"
chmod 0644 "$R/etc/zabbix/zabbix.conf.php"

step postgresql
$IN_ROOT /bin/sh -eu -c '
pg=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
install -d -o postgres -g postgres -m 0775 /run/postgresql /var/lib/zts-pg
runuser -u postgres -- "$pg/initdb" -D /var/lib/zts-pg -U postgres -A trust -E UTF8 --locale=C --no-sync >/zts/initdb.log
# A throwaway cluster: durability off makes loading the schema several times faster.
runuser -u postgres -- "$pg/pg_ctl" -D /var/lib/zts-pg -l /zts/postgresql.log -w -t 60 \
    -o "-p '"$ZTS_PG_PORT"' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null
psql() { "$pg/psql" -h 127.0.0.1 -p '"$ZTS_PG_PORT"' -q -v ON_ERROR_STOP=1 "$@"; }
psql -U postgres -d postgres -c "CREATE ROLE zabbix LOGIN PASSWORD '\''zts-e2e-only'\''"
psql -U postgres -d postgres -c "CREATE DATABASE zabbix OWNER zabbix"
echo "$(date +%s.%N | cut -c1-14) schema"
d=/usr/share/zabbix-server-pgsql
{ echo "BEGIN;"; for f in schema images data; do zcat "$d/$f.sql.gz"; echo; done; echo "COMMIT;"; } |
    psql -U zabbix -d zabbix >/zts/schema.log
'

step server
$IN_ROOT /bin/sh -eu -c 'install -d -o zabbix -g zabbix /run/zabbix; zabbix_server -c /zts/zabbix_server.conf'

step frontend
# Several workers: a dashboard page asks for many things at once. Stays a child of this PID 1.
$IN_ROOT /usr/bin/env PHP_CLI_SERVER_WORKERS=4 php -d memory_limit=512M -d max_execution_time=300 \
    -d post_max_size=32M -S "127.0.0.1:$ZTS_API_PORT" -t /usr/share/zabbix >>"$ZTS_LAB/share/php.log" 2>&1 &

step up
exec sleep infinity
