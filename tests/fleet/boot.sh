#!/bin/sh
# PID 1 of one fleet host. fleetctl.py starts it as
#   ip netns exec zts-h-NAME unshare --uts --ipc --mount --pid --fork --kill-child --propagation private boot.sh
# so the host has its own network, hostname, PIDs and mounts. Every mount below lives in the host's private
# mount namespace and disappears with it; killing this process (PID 1) kills every process of the host.
# Environment: ZTS_HOSTNAME, ZTS_LOWER (the cached image), ZTS_HOSTDIR (upper/work/root dirs, authorized_keys,
# psk.key or psk/), ZTS_SERVER (the agent's Server= allowlist), ZTS_SHAPE and ZTS_SHAPE_SCRIPT (the agent
# configuration's shape, applied by shape.sh), ZTS_PSK_IDENTITY, ZTS_SERVER_PSK_DIR.
set -eu
R="$ZTS_HOSTDIR/root"
IN_ROOT="env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot $R"

. "$(dirname "$0")/root-mounts.sh"

hostname "$ZTS_HOSTNAME"
mount_root "$ZTS_LOWER" "$ZTS_HOSTDIR/upper" "$ZTS_HOSTDIR/work" "$R"
# A terminal for ssh sessions, and the standard streams.
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mkdir -p "$R/run/sshd" "$R/run/lock"

if [ ! -e "$R/etc/zts-host" ]; then
    # First boot of this instance: identity, ssh access, the agent's allowlist.
    echo "$ZTS_HOSTNAME" > "$R/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$ZTS_HOSTNAME" > "$R/etc/hosts"
    mkdir -p -m 0700 "$R/root/.ssh"
    install -m 0600 "$ZTS_HOSTDIR/authorized_keys" "$R/root/.ssh/authorized_keys"
    $IN_ROOT ssh-keygen -A >/dev/null
    for conf in "$R/etc/zabbix/zabbix_agentd.conf" "$R/etc/zabbix/zabbix_agent2.conf"; do
        [ -e "$conf" ] || continue
        sed -i -e "s/^Server=.*/Server=$ZTS_SERVER/" -e "s/^ServerActive=/# ServerActive=/" \
            -e "s/^Hostname=.*/Hostname=$ZTS_HOSTNAME/" "$conf"
    done
    if [ -n "${ZTS_SHAPE:-}" ]; then
        "$ZTS_SHAPE_SCRIPT" "$ZTS_SHAPE" "$R"
    fi
    if [ -d "$ZTS_HOSTDIR/psk" ]; then
        # The server host: the PSK of every psk-shaped agent, for zabbix_get --tls-psk-file (root only).
        mkdir -p -m 0700 "$R$ZTS_SERVER_PSK_DIR"
        for key in "$ZTS_HOSTDIR"/psk/*.psk; do
            install -m 0600 "$key" "$R$ZTS_SERVER_PSK_DIR/"
        done
    fi
    echo "$ZTS_HOSTNAME" > "$R/etc/zts-host"
fi

for agent in zabbix-agent zabbix-agent2; do
    if [ -x "$R/etc/init.d/$agent" ]; then
        $IN_ROOT "/etc/init.d/$agent" start
    fi
done
# sshd -D stays PID 1 and reaps every orphan (daemons restarted by the role are reparented to it).
exec $IN_ROOT /usr/sbin/sshd -D -e
