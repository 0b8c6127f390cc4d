# Sourced (POSIX sh) by tests/fleet/boot.sh (a fleet host) and tests/zabbix_server/server-boot.sh (a Zabbix server of
# the matrix), each PID 1 of its own mount namespace: the mounts of a root filesystem made of a cached image (read
# only, below) and the instance's writable layer (above). They live in that private mount namespace and go with it.
#   mount_root LOWER UPPER WORK ROOT
mount_root() {
    mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
    mount -t proc proc "$4/proc"
    mount -t sysfs sysfs "$4/sys"
    mount -t tmpfs -o mode=0755,size=8m tmpfs "$4/dev"
    for node in null zero full random urandom tty; do
        touch "$4/dev/$node"
        mount --bind "/dev/$node" "$4/dev/$node"
    done
    mkdir -p "$4/dev/pts" "$4/dev/shm"
    mount -t tmpfs -o mode=1777 tmpfs "$4/dev/shm"
    ln -s /proc/self/fd "$4/dev/fd"
    mount -t tmpfs -o mode=0755 tmpfs "$4/run"
}
