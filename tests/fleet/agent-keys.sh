#!/bin/sh
# Which files the host's Zabbix agent loads and which UserParameter keys they define, as the agent reads them:
# the main file, then every Include= resolved (a directory: every regular file in it, backups "*~" included; a
# pattern: its matches; a relative path: from the main file's directory), recursively. Then the agent's own item
# test of tcp.status[LISTEN] on that configuration. Needs only sh (runs through Ansible's script module, on
# Python 2.7 hosts too). Prints:
#   loaded FILE            each file the agent loads
#   key KEY FILE           each UserParameter key (the name before "[") and the file defining it
#   duplicate KEY          a key defined twice: the agent refuses to start
#   backup FILE            a loaded file whose name ends in "~" (an editor's or Ansible's backup): loaded like
#                          any other, it is a duplicate key waiting for the next change
#   pid PID                the running agent's PID (from its PidFile), or "pid none"
#   test LINE              the item test's answer
# Exit status: 0 when no key is defined twice, no backup is loaded and the item test answers a number; 3 otherwise.
set -u
if [ -e /etc/zabbix/zabbix_agent2.conf ]; then
    CONF=/etc/zabbix/zabbix_agent2.conf BIN=/usr/sbin/zabbix_agent2
else
    CONF=/etc/zabbix/zabbix_agentd.conf BIN=/usr/sbin/zabbix_agentd
fi
LIST=$(mktemp)
trap 'rm -f "$LIST"' EXIT

setting() {  # setting NAME FILE: the values of NAME= in FILE, one a line
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$2" | sed 's/[[:space:]]*$//'
}

load() {  # load FILE: note it, then what its Include= lines load
    [ -f "$1" ] || return 0
    grep -qxF "$1" "$LIST" && return 0
    echo "$1" >> "$LIST"
    setting Include "$1" | while IFS= read -r inc; do
        case "$inc" in
        /*) ;;
        *) inc=$(dirname "$CONF")/$inc ;;
        esac
        if [ -d "$inc" ]; then
            for f in "${inc%/}"/* "${inc%/}"/.[!.]*; do
                [ -f "$f" ] && load "$f"
            done
        else
            # a file or a pattern in the file name part (the agent's rule)
            for f in $inc; do
                [ -f "$f" ] && load "$f"
            done
        fi
    done
}

load "$CONF"
rc=0
while IFS= read -r f; do
    echo "loaded $f"
    setting UserParameter "$f" | sed -e 's/,.*//' -e 's/\[.*//' -e 's/[[:space:]]*$//' | while IFS= read -r key; do
        echo "key $key $f"
    done
done < "$LIST" > "$LIST.out"
cat "$LIST.out"
dups=$(sed -n 's/^key \([^ ]*\) .*/\1/p' "$LIST.out" | sort | uniq -d)
rm -f "$LIST.out"
for key in $dups; do
    echo "duplicate $key"
    rc=3
done
for f in $(grep '~$' "$LIST"); do
    echo "backup $f"
    rc=3
done
pidfile=$(setting PidFile "$CONF" | tail -n 1)
pid=$(cat "${pidfile:-/run/zabbix/$(basename "$BIN").pid}" 2>/dev/null || true)
if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
    echo "pid $pid"
else
    echo "pid none"
fi
answer=$("$BIN" -c "$CONF" -t 'tcp.status[LISTEN]' 2>&1 | tail -n 1)
echo "test $answer"
case "$answer" in
*"|"[0-9]*"]") ;;
*) rc=3 ;;
esac
exit $rc
