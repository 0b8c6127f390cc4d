#!/bin/sh
# Gives a fleet host's agent configuration a shape real fleets have, at the host's first boot (boot.sh runs it
# before starting the agent, after Server= and Hostname= are set). Usage: shape.sh SHAPE ROOT
#   el7     the CentOS 7 agent 3.0 package's layout: /etc/zabbix/zabbix_agentd.conf with its paths and a
#           DIRECTORY Include (Include=/etc/zabbix/zabbix_agentd.d/, every regular file loaded, *~ included),
#           the package's userparameter_mysql.conf there, and the seed recipe's script and line in the main file
#   incdir  Debian's file with a directory Include (Include=/etc/zabbix/zabbix_agentd.conf.d/) and the recipe's
#           line in a file of that directory (tcp_connections.conf)
#   psk     the recipe's line in the main file, and TLSAccept=psk/TLSConnect=psk with a PSK file readable only
#           by the agent's user (the key: $ZTS_HOSTDIR/psk.key, made by fleetctl.py at each start)
#   unsafe  UnsafeUserParameters=1; the recipe's line in a file the glob Include loads (tcp_connections.conf),
#           plus the same line in tcp_connections.conf.disabled, which the agent never loads
# The seed files as written are kept in /var/lib/zts-seed/ (outside /etc/zabbix) for the tests to compare.
# Needs: ZTS_SERVER, ZTS_HOSTNAME (and ZTS_HOSTDIR, ZTS_PSK_IDENTITY for psk).
set -eu
SHAPE=$1
R=$2
IN_ROOT="env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot $R"
CONF=$R/etc/zabbix/zabbix_agentd.conf
RECIPE_LINE='UserParameter=tcp.status[*],/etc/zabbix/tcp_connections.sh $1 $2'

recipe_script() {
    # The seed recipe's script, as molecule/shared/prepare.yml writes it (straight quotes).
    cat > "$R/etc/zabbix/tcp_connections.sh" <<'EOF'
#!/bin/bash
# The seed recipe's script (straight quotes), as found on hosts the role migrates.
ARGS=1
if [ $# -ne "$ARGS" ];then
echo "Please input one arguement:"
fi
case $1 in
ESTABLISHED|TIME_WAIT|LISTEN)
result=`netstat -an | awk '/^tcp/ {++S[$NF]} END {for(a in S) print a, S[a]}' | grep -w "$1" |cut -d" " -f2`
echo $result
;;
*)
echo "Usage:$0(TIME_WAIT|ESTABLISHED|LISTEN)"
;;
esac
EOF
    chmod 0755 "$R/etc/zabbix/tcp_connections.sh"
}

keep_seed() {
    mkdir -p "$R/var/lib/zts-seed"
    for f in "$@"; do
        cp -p "$R$f" "$R/var/lib/zts-seed/$(echo "$f" | tr / _)"
    done
}

case "$SHAPE" in
el7)
    # zabbix-agent-3.0 from repo.zabbix.com for RHEL/CentOS 7: the same settings in the same order (its long
    # comments shortened), Server=/Hostname= set for this fleet, no active checks (no server runs here).
    cat > "$CONF" <<EOF
# This is a configuration file for Zabbix agent daemon (Unix)
# To get more information about Zabbix, visit http://www.zabbix.com

############ GENERAL PARAMETERS #################

### Option: PidFile
#	Name of PID file.
#
# Mandatory: no
# Default:
# PidFile=/tmp/zabbix_agentd.pid

PidFile=/var/run/zabbix/zabbix_agentd.pid

### Option: LogFile
#	Log file name for LogType 'file' parameter.
#
# Mandatory: no
# Default:
# LogFile=

LogFile=/var/log/zabbix/zabbix_agentd.log

### Option: LogFileSize
#	Maximum size of log file in MB.
#	0 - disable automatic log rotation.
#
# Mandatory: no
# Range: 0-1024
# Default:
# LogFileSize=1

LogFileSize=0

##### Passive checks related

### Option: Server
#	List of comma delimited IP addresses (or hostnames) of Zabbix servers.
#	Incoming connections will be accepted only from the hosts listed here.
#
# Mandatory: no
# Default:
# Server=

Server=$ZTS_SERVER

##### Active checks related

### Option: ServerActive
#	List of comma delimited IP:port (or hostname:port) pairs of Zabbix servers for active checks.
#
# Mandatory: no
# Default:
# ServerActive=

# ServerActive=127.0.0.1

### Option: Hostname
#	Unique, case sensitive hostname.
#	Required for active checks and must match hostname as configured on the server.
#
# Mandatory: no
# Default:
# Hostname=

Hostname=$ZTS_HOSTNAME

############ ADVANCED PARAMETERS #################

### Option: Include
#	You may include individual files or all files in a directory in the configuration file.
#	Installing Zabbix will create include directory in /usr/local/etc, unless modified during the compile time.
#
# Mandatory: no
# Default:
# Include=

Include=/etc/zabbix/zabbix_agentd.d/

#	Include=/usr/local/etc/zabbix_agentd.userparams.conf
#	Include=/usr/local/etc/zabbix_agentd.conf.d/
#	Include=/usr/local/etc/zabbix_agentd.conf.d/*.conf

####### USER-DEFINED MONITORED PARAMETERS #######

### Option: UnsafeUserParameters
#	Allow all characters to be passed in arguments to user-defined parameters.
#	0 - do not allow
#	1 - allow
#
# Mandatory: no
# Range: 0-1
# Default:
# UnsafeUserParameters=0

### Option: UserParameter
#	User-defined parameter to monitor. There can be several user-defined parameters.
#	Format: UserParameter=<key>,<shell command>
#	See 'zabbix_agentd' directory for examples.
#
# Mandatory: no
# Default:
# UserParameter=
$RECIPE_LINE
EOF
    # The package's include directory and the file it ships there; Debian's directory goes (EL has none).
    rm -rf "$R/etc/zabbix/zabbix_agentd.conf.d"
    mkdir -p "$R/etc/zabbix/zabbix_agentd.d"
    cat > "$R/etc/zabbix/zabbix_agentd.d/userparameter_mysql.conf" <<'EOF'
# For all the following commands HOME should be set to the directory that has .my.cnf file with password information.

# Flexible parameter to grab global variables. On the frontend side, use keys like mysql.status[Com_insert].
# Key syntax is mysql.status[variable].
UserParameter=mysql.status[*],echo "show global status where Variable_name='$1';" | HOME=/var/lib/zabbix mysql -N | awk '{print $$2}'

# Flexible parameter to determine database or table size. On the frontend side, use keys like mysql.size[zabbix,history,data].
# Key syntax is mysql.size[<database>,<table>,<type>].
# Database may be a database name or "all". Default is "all".
# Table may be a table name or "all". Default is "all".
# Type may be "data", "index", "free" or "both". Both is a sum of data and index. Default is "both".
# Database is mandatory if a table is specified. Type may be specified always.
# Returns value in bytes.
# 'sum' on data_length or index_length alone needed when we are getting this information for whole database instead of a single table
UserParameter=mysql.size[*],bash -c 'echo "select sum($(case "$3" in both|"") echo "data_length+index_length";; data|index) echo "$3_length";; free) echo "data_free";; esac)) from information_schema.tables$([[ "$1" = "all" || ! "$1" ]] || echo " where table_schema=\"$1\"")$([[ "$2" = "all" || ! "$2" ]] || echo "and table_name=\"$2\"");" | HOME=/var/lib/zabbix mysql -N'

UserParameter=mysql.ping,HOME=/var/lib/zabbix mysqladmin ping | grep -c alive
UserParameter=mysql.version,mysql -V
EOF
    chmod 0644 "$CONF" "$R/etc/zabbix/zabbix_agentd.d/userparameter_mysql.conf"
    # The package's log directory (Debian's is /var/log/zabbix-agent); /var/run is /run, as on EL 7.
    mkdir -p "$R/var/log/zabbix"
    $IN_ROOT chown zabbix:zabbix /var/log/zabbix
    recipe_script
    keep_seed /etc/zabbix/zabbix_agentd.conf /etc/zabbix/zabbix_agentd.d/userparameter_mysql.conf
    ;;
incdir)
    sed -i 's|^Include=.*|Include=/etc/zabbix/zabbix_agentd.conf.d/|' "$CONF"
    grep -qx 'Include=/etc/zabbix/zabbix_agentd.conf.d/' "$CONF"
    printf '# The old recipe, in its own file.\n%s\n' "$RECIPE_LINE" > "$R/etc/zabbix/zabbix_agentd.conf.d/tcp_connections.conf"
    recipe_script
    keep_seed /etc/zabbix/zabbix_agentd.conf /etc/zabbix/zabbix_agentd.conf.d/tcp_connections.conf
    ;;
psk)
    install -m 0400 "$ZTS_HOSTDIR/psk.key" "$R/etc/zabbix/zabbix_agentd.psk"
    $IN_ROOT chown zabbix:zabbix /etc/zabbix/zabbix_agentd.psk
    printf '%s\nTLSConnect=psk\nTLSAccept=psk\nTLSPSKIdentity=%s\nTLSPSKFile=/etc/zabbix/zabbix_agentd.psk\n' \
        "$RECIPE_LINE" "$ZTS_PSK_IDENTITY" >> "$CONF"
    recipe_script
    keep_seed /etc/zabbix/zabbix_agentd.conf
    ;;
unsafe)
    printf 'UnsafeUserParameters=1\n' >> "$CONF"
    grep -qx 'Include=/etc/zabbix/zabbix_agentd.conf.d/\*.conf' "$CONF"
    printf '# The old recipe, in its own file.\n%s\n' "$RECIPE_LINE" > "$R/etc/zabbix/zabbix_agentd.conf.d/tcp_connections.conf"
    printf '# Switched off by hand long ago: the glob Include never loads it.\n%s\n' "$RECIPE_LINE" \
        > "$R/etc/zabbix/zabbix_agentd.conf.d/tcp_connections.conf.disabled"
    recipe_script
    keep_seed /etc/zabbix/zabbix_agentd.conf /etc/zabbix/zabbix_agentd.conf.d/tcp_connections.conf \
        /etc/zabbix/zabbix_agentd.conf.d/tcp_connections.conf.disabled
    ;;
*)
    echo "shape.sh: unknown shape '$SHAPE'" >&2
    exit 2
    ;;
esac
