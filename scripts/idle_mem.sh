#!/bin/bash
# idle_mem.sh - idle memory per connection, measured the way bench/run's
# rss_run measures it: examples/echo -p 0 -t 1 on CPU 0, then
# bench/echo_load --idle N on CPU 1 (N connections, one round trip on each,
# then idle); figure = (VmRSS after - VmRSS before connecting) / N.
#
#   scripts/idle_mem.sh [-n CONNS] [-b BUILDDIR] [-m] [BACKEND...]
#
# BACKEND: epoll, io_uring (default both).  -m also prints where the RSS
# grew, by mapping (heap, anonymous mmaps such as the io_uring buffer ring),
# from /proc/PID/smaps before and after.  Build first: make && make
# bench/echo_load.
set -u
N=10000
B=$(cd "$(dirname "$0")/.." && pwd)
MAPS=0
while getopts "n:b:m" o; do
    case $o in
    n) N=$OPTARG ;;
    b) B=$OPTARG ;;
    m) MAPS=1 ;;
    *) echo "usage: $0 [-n CONNS] [-b BUILDDIR] [-m] [epoll|io_uring...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] && set -- epoll io_uring
ECHO=$B/examples/echo
LOAD=$B/bench/echo_load
[ -x "$ECHO" ] && [ -x "$LOAD" ] || { echo "$0: build $ECHO and $LOAD first" >&2; exit 1; }
[ -x "$B/examples/.libs/echo" ] && ECHO=$B/examples/.libs/echo     # not the libtool wrapper
export LD_LIBRARY_PATH=$B/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

kib() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }

# Rss (kB) per mapping name: [heap], [anon] for unnamed anonymous maps, else
# the file or the special name.
maps() {
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = $6 == "" ? "[anon]" : $6; next }
         /^Rss:/ { r[name] += $2 }
         END { for (k in r) if (r[k]) printf "%s\t%d\n", k, r[k] }' "/proc/$1/smaps" | sort
}

for be in "$@"; do
    GOEV_BACKEND=$be taskset -c 0 "$ECHO" -p 0 -t 1 -s > /dev/null 2> "$T/srv.err" &
    spid=$!
    port=""
    for _ in $(seq 1 100); do
        port=$(sed -n 's/.*listening on \([0-9][0-9]*\).*/\1/p' "$T/srv.err" | head -n 1)
        [ -n "$port" ] && break
        sleep 0.05
    done
    [ -n "$port" ] || { echo "$be: server did not start: $(cat "$T/srv.err")" >&2; kill "$spid"; continue; }
    sleep 0.2
    base=$(kib $spid VmRSS)
    [ $MAPS = 1 ] && maps $spid > "$T/m0"
    taskset -c 1 "$LOAD" -p "$port" --idle "$N" > "$T/load.out" 2>&1 &
    lpid=$!
    ready=""
    for _ in $(seq 1 900); do
        ready=$(sed -n 's/^idle_ready=\([0-9]*\).*/\1/p' "$T/load.out")
        [ -n "$ready" ] && break
        kill -0 $lpid 2> /dev/null || break
        sleep 0.1
    done
    sleep 1
    rss=$(kib $spid VmRSS)
    [ $MAPS = 1 ] && maps $spid > "$T/m1"
    kill -TERM $lpid 2> /dev/null
    wait $lpid 2> /dev/null
    kill -TERM $spid 2> /dev/null
    wait $spid 2> /dev/null
    if [ -z "$ready" ] || [ "$ready" = 0 ]; then
        echo "$be: the load did not get its connections up: $(head -c 300 "$T/load.out")" >&2
        continue
    fi
    printf '%-8s conns=%d rss_before_kib=%d rss_after_kib=%d bytes_per_conn=%d\n' "$be" "$ready" \
        "$base" "$rss" $(( (rss - base) * 1024 / ready ))
    if [ $MAPS = 1 ]; then
        join -t $'\t' -a 1 -a 2 -e 0 -o 0,1.2,2.2 "$T/m0" "$T/m1" |
            awk -F'\t' -v n="$ready" '$3 != $2 { printf "    %-40s %+8d kB  %+6d B/conn\n", $1, $3 - $2, ($3 - $2) * 1024 / n }'
    fi
done
