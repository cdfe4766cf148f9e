#!/usr/bin/env bash
# Hosts made of Linux network namespaces, for the cluster tests and bench/chaos.py (needs root).
#
#   bench/netns.sh up              make the hosts (tears down a previous set first)
#   bench/netns.sh down            kill every process in them, delete them (nothing is left)
#   bench/netns.sh exec HOST CMD   run CMD on host h1..h4 (e.g. `exec h4 kiln status ...`)
#   bench/netns.sh env HOST        the HOME and RAY_TMPDIR of HOST, as shell assignments
#   bench/netns.sh link HOST up|down   plug / unplug a host's cable (its port on the switch)
#   bench/netns.sh status          the hosts, their addresses and their listening sockets
#
# The network: a switch namespace (kiln-sw) holding a bridge, and one namespace per host, each
# wired to the switch by a veth pair, on 10.77.0.0/24:
#
#   kiln-h1 10.77.0.1  the head        kiln-h3 10.77.0.3  a worker
#   kiln-h2 10.77.0.2  a worker        kiln-h4 10.77.0.4  the driver and the gateway
#
# Nothing is added to the machine's own namespace: deleting the namespaces deletes the bridge
# and every veth with them.
#
# A host is more than an address: Ray finds a machine's own raylet by listing its processes
# (`ps`) and reaches it by unix-socket path, so hosts that shared a process table or a /tmp would
# find each other's nodes. Each host therefore has an init process (pid 1 of its own PID
# namespace, in its own mount namespace, where the other hosts' directories are empty tmpfs), and
# `exec` enters its network, PID and mount namespaces. Each host's HOME (Ray's auth token) and
# RAY_TMPDIR (sessions, logs, sockets) live under $ROOT/<host>. Killing a host's init kills every
# process of that host: nothing outlives `down`.
set -euo pipefail

PREFIX=${KILN_NETNS_PREFIX:-kiln}
SUBNET=${KILN_NETNS_SUBNET:-10.77.0}
ROOT=${KILN_NETNS_ROOT:-/tmp/kiln-hosts}
HOSTS=(h1 h2 h3 h4)
SW="$PREFIX-sw"

PYTHON=${KILN_NETNS_PYTHON:-python3}
# pid 1 of a host: reaps every orphan (a process whose parent died), as an init must, so that a
# killed process does not linger as a zombie.
export INIT='import os, time  # kiln-host-init
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)'

ns() { echo "$PREFIX-$1"; }
init_pid() { cat "$ROOT/$1/init.pid"; }

down() {
    local n pids
    for n in "${HOSTS[@]}" sw; do
        ip netns list | grep -qw "$(ns "$n")" || continue
        # Every process in the namespace, whatever started it: SIGKILL until none is left.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(ip netns pids "$(ns "$n")" 2>/dev/null || true)
            [ -z "$pids" ] && break
            kill -9 $pids 2>/dev/null || true
            sleep 0.2
        done
        ip netns del "$(ns "$n")" 2>/dev/null || true
    done
    rm -rf "$ROOT"
}

start_init() {  # HOST: pid 1 of the host's PID namespace, with the other hosts' dirs hidden
    local host=$1 others=() h
    for h in "${HOSTS[@]}"; do [ "$h" != "$host" ] && others+=("$ROOT/$h"); done
    # shellcheck disable=SC2016
    ip netns exec "$(ns "$host")" unshare --pid --mount --fork --mount-proc --propagation private \
        sh -c 'for d in "$@"; do mount -t tmpfs other-host "$d"; done; exec "$0" -c "$INIT"' \
        "$PYTHON" "${others[@]}" </dev/null >/dev/null 2>&1 &
    local unshare=$! child=""
    for _ in $(seq 100); do
        child=$(pgrep -P "$unshare" -f kiln-host-init || true)
        [ -n "$child" ] && break
        sleep 0.05
    done
    [ -n "$child" ] || { echo "init of $host did not start" >&2; exit 1; }
    echo "$child" > "$ROOT/$host/init.pid"
}

up() {
    down
    ip netns add "$SW"
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 up
    ip -n "$SW" link set lo up
    local i=0 n
    for n in "${HOSTS[@]}"; do
        i=$((i + 1))
        ip netns add "$(ns "$n")"
        # The cable: eth0 in the host, port-<host> on the switch.
        ip link add "$PREFIX-$n-eth" type veth peer name "$PREFIX-$n-port"
        ip link set "$PREFIX-$n-eth" netns "$(ns "$n")" name eth0
        ip link set "$PREFIX-$n-port" netns "$SW" name "port-$n"
        ip -n "$SW" link set "port-$n" master br0 up
        ip -n "$(ns "$n")" addr add "$SUBNET.$i/24" dev eth0
        ip -n "$(ns "$n")" link set eth0 up
        ip -n "$(ns "$n")" link set lo up
        mkdir -p "$ROOT/$n/home" "$ROOT/$n/tmp"
    done
    for n in "${HOSTS[@]}"; do start_init "$n"; done
}

link() {  # HOST up|down: the switch's side of the cable, as when a host drops off the network
    ip -n "$SW" link set "port-$1" "$2"
}

status() {
    local i=0 n
    for n in "${HOSTS[@]}"; do
        i=$((i + 1))
        ip netns list | grep -qw "$(ns "$n")" || { echo "$(ns "$n") absent"; continue; }
        echo "== $(ns "$n") $SUBNET.$i"
        ip netns exec "$(ns "$n")" ss -ltnpH || true
    done
}

cmd=${1:-}
shift || true
case "$cmd" in
    up) up ;;
    down) down ;;
    exec) host=$1; shift; cd "$ROOT/$host"
          exec nsenter -t "$(init_pid "$host")" --net --pid --mount -- "$@" ;;
    env) echo "HOME=$ROOT/$1/home RAY_TMPDIR=$ROOT/$1/tmp" ;;
    link) link "$1" "$2" ;;
    status) status ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
esac
