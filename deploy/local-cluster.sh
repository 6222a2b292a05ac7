#!/usr/bin/env bash
# A Fovea cluster on loopback: etcd, one coordinator and the workers of a topology, each its own
# process. Waits until every worker is registered and the coordinator answers, prints the
# addresses and a line "cluster ready"; Ctrl-C (or SIGTERM) stops them all.
#
#   deploy/local-cluster.sh [--model DIR] [--topology disaggregated|colocated] [--pin CORE,CORE]
#                           [--coordinator-arg ARG]... [--worker-arg ARG]...
#
# --topology disaggregated (the default): a worker of each role, vision, prefill and decode;
#            colocated: two full workers.
# --pin A,B: runs each worker under `taskset` on one core, computing on one thread
#            (RAYON_NUM_THREADS=1): colocated, the full workers on cores A and B; disaggregated,
#            the prefill worker on A and the decode worker on B, the vision worker sharing A with
#            the prefill worker (both work on image requests, one after the other). etcd and the
#            coordinator stay unpinned.
# --coordinator-arg ARG, --worker-arg ARG: one more argument for the coordinator, or for every
#            worker (e.g. --coordinator-arg --disagg-min-prompt-tokens=2048, --worker-arg --dtype=bf16).
#
# Environment: FOVEA (the fovea binary; default target/release/fovea, built if missing),
# ETCD (default: etcd on PATH, else /usr/bin/etcd), BASE_PORT (default 23790: etcd client and
# peer on BASE_PORT and +1, the coordinator's gRPC on +10 and HTTP on +11, workers on +20, +21,
# ...), READY_TIMEOUT_S (default 300: how long to wait for the workers to register). Needs curl.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 [--model DIR] [--topology disaggregated|colocated] [--pin CORE,CORE]" \
        "[--coordinator-arg ARG]... [--worker-arg ARG]..." >&2
    exit 2
}

model="" topology=disaggregated pin="" coordinator_args=() worker_args=()
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case "$1" in
        --model) model="$2" ;;
        --topology) topology="$2" ;;
        --pin) pin="$2" ;;
        --coordinator-arg) coordinator_args+=("$2") ;;
        --worker-arg) worker_args+=("$2") ;;
        *) usage ;;
    esac
    shift 2
done

# Each worker as ROLE:SLOT; with --pin, slot 0 is the first core given and slot 1 the second.
case "$topology" in
    disaggregated) workers=(vision:0 prefill:0 decode:1) ;;
    colocated) workers=(full:0 full:1) ;;
    *) usage ;;
esac
cores=()
if [ -n "$pin" ]; then
    IFS=, read -r -a cores <<<"$pin"
    [ "${#cores[@]}" -eq 2 ] || { echo "--pin takes two cores, e.g. --pin 0,1" >&2; exit 2; }
fi

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
"$fovea" coordinator --etcd "$etcd_url" --model "$model" --grpc-addr "$grpc" --http-addr "$http" \
    "${coordinator_args[@]}" &
coordinator_pid=$!
worker_lines=()
for i in "${!workers[@]}"; do
    role="${workers[i]%:*}" slot="${workers[i]#*:}"
    addr="127.0.0.1:$((base + 20 + i))"
    launcher=() where=""
    if [ -n "$pin" ]; then
        launcher=(env RAYON_NUM_THREADS=1 taskset -c "${cores[slot]}")
        where="   core ${cores[slot]}, one thread"
    fi
    "${launcher[@]}" "$fovea" worker --role "$role" --etcd "$etcd_url" --model "$model" --addr "$addr" \
        "${worker_args[@]}" &
    worker_pids+=($!)
    worker_lines+=("$(printf '%-8s %s%s' "$role" "$addr" "$where")")
done

# Workers registered under the default key prefix, as etcd's JSON gateway counts them.
registered_workers() {
    local key range_end
    key="$(printf '/fovea/workers/' | base64)" range_end="$(printf '/fovea/workers0' | base64)"
    curl -sf "$etcd_url/v3/kv/range" -d "{\"key\": \"$key\", \"range_end\": \"$range_end\", \"count_only\": true}" |
        sed -n 's/.*"count":"\{0,1\}\([0-9]*\).*/\1/p'
}
deadline=$((SECONDS + ${READY_TIMEOUT_S:-300}))
until [ "$(registered_workers)" = "${#workers[@]}" ] && curl -sf "http://$http/v1/models" >/dev/null; do
    for pid in "$etcd_pid" "$coordinator_pid" "${worker_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "a cluster process exited while starting" >&2; exit 1; }
    done
    [ "$SECONDS" -lt "$deadline" ] || { echo "the workers did not all register in time" >&2; exit 1; }
    sleep 0.5
done

cat <<INFO
etcd         $etcd_url   (data and logs in $run_dir)
coordinator  grpc://$grpc   http://$http   ${coordinator_args[*]}
workers      ($topology)
$(printf '             %s\n' "${worker_lines[@]}")
try:  curl -s $http/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}'
Ctrl-C stops everything.
cluster ready
INFO
wait -n "$etcd_pid" "$coordinator_pid" "${worker_pids[@]}" || true
[ -n "${stopping:-}" ] || echo "a cluster process exited; stopping the rest" >&2
