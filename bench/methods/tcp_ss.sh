#!/bin/bash
# The ss way to do what the recipe's netstat script does (benchmark method 2).
#   tcp_ss.sh STATE   one state, netstat spelling (ESTABLISHED, TIME_WAIT, ...): prints one integer
#   tcp_ss.sh all     every state in one call: "STATE COUNT" lines (ss spelling)
# IPv4 and IPv6 together, like netstat -an.
case "$1" in
ESTABLISHED) state=established ;;
SYN_SENT) state=syn-sent ;;
SYN_RECV) state=syn-recv ;;
FIN_WAIT1) state=fin-wait-1 ;;
FIN_WAIT2) state=fin-wait-2 ;;
TIME_WAIT) state=time-wait ;;
CLOSE) state=closed ;;
CLOSE_WAIT) state=close-wait ;;
LAST_ACK) state=last-ack ;;
LISTEN) state=listening ;;
CLOSING) state=closing ;;
all)
    ss -Htan | awk '{++S[$1]} END {for (s in S) print s, S[s]}'
    exit
    ;;
*)
    echo "usage: $0 STATE|all (STATE in netstat spelling, e.g. ESTABLISHED)" >&2
    exit 2
    ;;
esac
ss -Htan state "$state" | wc -l
