#!/usr/bin/env bash
# A Fovea cluster on loopback: etcd, one coordinator and two full workers, each its own process.
# Prints the addresses; Ctrl-C (or SIGTERM) stops them all.
#
#   deploy/local-cluster.sh [--model DIR]
#
# Environment: FOVEA (the fovea binary; default target/release/fovea, built if missing),
# ETCD (default: etcd on PATH, else /usr/bin/etcd), BASE_PORT (default 23790: etcd client and
# peer on BASE_PORT and +1, the coordinator's gRPC on +10 and HTTP on +11, workers on +20, +21).
set -euo pipefail
cd "$(dirname "$0")/.."

model=""
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        *) echo "usage: $0 [--model DIR]" >&2; exit 2 ;;
    esac
done

fovea="${FOVEA:-target/release/fovea}"
etcd="${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"
base="${BASE_PORT:-23790}"
[ -x "$etcd" ] || { echo "etcd not found (Debian: apt-get install etcd-server)" >&2; exit 1; }
[ -x "$fovea" ] || cargo build --release -p fovea-cli
run_dir="$(mktemp -d -t fovea-cluster.XXXXXX)"
if [ -z "$model" ]; then
    model="$run_dir/model"
    "$fovea" demo-model --preset tiny --out "$model" 2>/dev/null
fi

etcd_pid="" coordinator_pid="" worker_pids=()
# Stops and waits for each of the given processes.
stop() {
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
stop_all() {
    trap - INT TERM EXIT
    stopping=1
    echo "stopping the cluster"
    # Workers first (they deregister while etcd is up, and drain), then the coordinator, then etcd.
    stop "${worker_pids[@]}"
    stop $coordinator_pid
    stop $etcd_pid
    rm -rf "$run_dir"
}
trap stop_all INT TERM EXIT

etcd_url="http://127.0.0.1:$base"
peer_url="http://127.0.0.1:$((base + 1))"
"$etcd" --name fovea-local --data-dir "$run_dir/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "fovea-local=$peer_url" >"$run_dir/etcd.log" 2>&1 &
etcd_pid=$!

grpc="127.0.0.1:$((base + 10))"
http="127.0.0.1:$((base + 11))"
"$fovea" coordinator --etcd "$etcd_url" --model "$model" --grpc-addr "$grpc" --http-addr "$http" &
coordinator_pid=$!
for i in 0 1; do
    "$fovea" worker --role full --etcd "$etcd_url" --model "$model" --addr "127.0.0.1:$((base + 20 + i))" &
    worker_pids+=($!)
done

cat <<INFO
etcd         $etcd_url   (data and logs in $run_dir)
coordinator  grpc://$grpc   http://$http
workers      127.0.0.1:$((base + 20)), 127.0.0.1:$((base + 21))   (role full)
try:  curl -s $http/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}'
Ctrl-C stops everything.
INFO
wait -n "$etcd_pid" "$coordinator_pid" "${worker_pids[@]}" || true
[ -n "${stopping:-}" ] || echo "a cluster process exited; stopping the rest" >&2
