#!/usr/bin/env bash
# Disaggregated against colocated serving on an image-heavy mix (issue 5). For each topology it
# starts deploy/local-cluster.sh with each worker pinned to its own core, waits until the cluster
# is ready, warms it up, runs `fovea bench` and stops the cluster; then it prints a markdown
# table of both runs (also written to OUT/table.md), the ratio of the text requests' p99 ITL,
# colocated over disaggregated, and that of goodput, disaggregated over colocated.
#
#   bench/disagg_compare.sh [--model DIR] [--out DIR]
#
# --model: the checkpoint (default /tmp/fovea-bench, made with `fovea demo-model --preset bench`
# if missing); --out: where TOPOLOGY.json (fovea bench --json) and TOPOLOGY.log (the cluster's
# and the benchmark's output) go (default /tmp/disagg-compare).
#
# Environment, with the defaults (estimated 6 minutes on a quiet 2-core machine):
#   TOPOLOGIES="disaggregated colocated"  PIN=0,1 (empty: no pinning)
#   REQUESTS=80 CONCURRENCY=8 (a closed loop of 8 clients: the topology's capacity)
#   REQUEST_RATE= (if set, Poisson arrivals at this many requests per second instead of CONCURRENCY:
#     goodput at an offered load, as DistServe measures it)
#   IMAGE_SHARE=0.05 (4 image requests, every 20th) IMAGES_PER_REQUEST=2
#   IMAGE_SIZE=1280x720 (3600 image tokens each with the bench checkpoint) PROMPT_TOKENS=64
#   MAX_TOKENS=64 TTFT_SLO_MS=45000 TPOT_SLO_MS=200 SEED=0
#   DISAGG_MIN_PROMPT_TOKENS=2048: text prompts (about 490 tokens) run whole on the decode worker,
#     image prompts (about 7630 tokens) are prefilled on the prefill worker and decoded on the
#     decode worker (or, while the prefill worker is busy, wait for it or for an idle decode
#     worker: the coordinator's default conditional disaggregation); in the colocated topology
#     every request runs whole on a full worker.
#   COORDINATOR_ARGS="": more coordinator flags, space-separated (e.g.
#     "--max-prefill-backlog-tokens=18446744073709551615 --idle-decode-prefill=false": the
#     prompts always go to the prefill worker at once, as before conditional disaggregation).
#   WARMUP_IMAGE_SIZE=640x360: the warm-up's one text and one image request (the latter, about
#     2230 tokens, is split as the benchmark's are).
#   WORKER_ARGS="": more flags for every worker, space-separated (e.g.
#     "--max-prefill-tokens-while-decoding=32": prompts prefilled on a worker that is decoding go
#     in smaller chunks between its decoding steps); DISAGGREGATED_WORKER_ARGS="": the same for
#     the workers of the disaggregated topology only.
# FOVEA, ETCD and BASE_PORT are passed on to deploy/local-cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

model=/tmp/fovea-bench out=/tmp/disagg-compare
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: $0 [--model DIR] [--out DIR]" >&2; exit 2 ;;
    esac
done

topologies="${TOPOLOGIES:-disaggregated colocated}"
pin="${PIN-0,1}"
requests="${REQUESTS:-80}" concurrency="${CONCURRENCY:-8}" request_rate="${REQUEST_RATE:-}"
if [ -n "$request_rate" ]; then arrivals=(--request-rate "$request_rate"); else arrivals=(--concurrency "$concurrency"); fi
image_share="${IMAGE_SHARE:-0.05}" images_per_request="${IMAGES_PER_REQUEST:-2}"
image_size="${IMAGE_SIZE:-1280x720}" warmup_image_size="${WARMUP_IMAGE_SIZE:-640x360}"
prompt_tokens="${PROMPT_TOKENS:-64}" max_tokens="${MAX_TOKENS:-64}"
ttft_slo_ms="${TTFT_SLO_MS:-45000}" tpot_slo_ms="${TPOT_SLO_MS:-200}" seed="${SEED:-0}"
disagg_min_prompt_tokens="${DISAGG_MIN_PROMPT_TOKENS:-2048}"
coordinator_args=(--coordinator-arg "--disagg-min-prompt-tokens=$disagg_min_prompt_tokens")
for arg in ${COORDINATOR_ARGS:-}; do coordinator_args+=(--coordinator-arg "$arg"); done
all_worker_args=() disaggregated_worker_args=()
for arg in ${WORKER_ARGS:-}; do all_worker_args+=(--worker-arg "$arg"); done
for arg in ${DISAGGREGATED_WORKER_ARGS:-}; do disaggregated_worker_args+=(--worker-arg "$arg"); done
export FOVEA="${FOVEA:-target/release/fovea}"
base="${BASE_PORT:-23790}"
addr="http://127.0.0.1:$((base + 10))"

[ -x "$FOVEA" ] || cargo build --release -p fovea-cli
[ -d "$model" ] || "$FOVEA" demo-model --preset bench --out "$model"
mkdir -p "$out"

cluster_pid=""
stop_cluster() {
    [ -n "$cluster_pid" ] || return 0
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
    cluster_pid=""
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

# Starts the cluster of topology $1, its output appended to $2, and waits until it is ready.
start_cluster() {
    local log="$2" worker_args=("${all_worker_args[@]}")
    [ "$1" != disaggregated ] || worker_args+=("${disaggregated_worker_args[@]}")
    deploy/local-cluster.sh --model "$model" --topology "$1" ${pin:+--pin "$pin"} \
        "${coordinator_args[@]}" "${worker_args[@]}" >>"$log" 2>&1 &
    cluster_pid=$!
    until grep -q '^cluster ready' "$log"; do
        kill -0 "$cluster_pid" 2>/dev/null || { echo "the $1 cluster did not start; see $log" >&2; exit 1; }
        sleep 1
    done
}

# Runs fovea bench on the image-heavy mix against the cluster:
# run_bench REQUESTS IMAGE_SHARE IMAGE_SIZE MAX_TOKENS SEED [MORE FOVEA BENCH ARGUMENTS...]
run_bench() {
    "$FOVEA" bench --addr "$addr" "${arrivals[@]}" --mix mixed --requests "$1" \
        --image-share "$2" --images-per-request "$images_per_request" --image-size "$3" \
        --prompt-tokens "$prompt_tokens" --max-tokens "$4" --seed "$5" \
        --ttft-slo-ms "$ttft_slo_ms" --tpot-slo-ms "$tpot_slo_ms" "${@:6}"
}

for topology in $topologies; do
    log="$out/$topology.log"
    : >"$log"
    echo "== $topology: starting the cluster (log: $log)"
    start_cluster "$topology" "$log"
    echo "== $topology: warming up"
    run_bench 2 0.5 "$warmup_image_size" 4 1 >>"$log" 2>&1 || { echo "the warm-up failed; see $log" >&2; exit 1; }
    echo "== $topology: $requests requests"
    run_bench "$requests" "$image_share" "$image_size" "$max_tokens" "$seed" --json "$out/$topology.json" |
        tee -a "$log"
    stop_cluster
done

python3 - "$out" $topologies <<'TABLE' | tee "$out/table.md"
import json, sys

out, topologies = sys.argv[1], sys.argv[2:]
runs = {t: json.load(open(f"{out}/{t}.json")) for t in topologies}

def pair(tally, metric):
    return f"{tally[f'median_{metric}_ms']:.0f} / {tally[f'p99_{metric}_ms']:.0f}" if tally else "-"

print("| topology | text TTFT p50 / p99 (ms) | text ITL p50 / p99 (ms) | image TTFT p50 / p99 (ms)"
      " | image ITL p50 / p99 (ms) | output tok/s | goodput (req/s) | completed / failed | duration (s) |")
print("|---|---|---|---|---|---|---|---|---|")
for topology, run in runs.items():
    text, image = run["by_kind"].get("text"), run["by_kind"].get("image")
    goodput = run["request_goodput"]
    print(f"| {topology} | {pair(text, 'ttft')} | {pair(text, 'itl')} | {pair(image, 'ttft')}"
          f" | {pair(image, 'itl')} | {run['output_throughput']:.1f}"
          f" | {'-' if goodput is None else f'{goodput:.3f}'} | {run['completed']} / {run['failed']} | {run['duration']:.0f} |")
if {"disaggregated", "colocated"} <= runs.keys():
    p99 = {t: runs[t]["by_kind"].get("text", {}).get("p99_itl_ms") for t in ("colocated", "disaggregated")}
    if p99["colocated"] and p99["disaggregated"]:
        print(f"\ntext p99 ITL, colocated / disaggregated: {p99['colocated'] / p99['disaggregated']:.2f}x (target: 3x)")
    goodput = {t: runs[t]["request_goodput"] for t in ("colocated", "disaggregated")}
    if goodput["colocated"] and goodput["disaggregated"] is not None:
        print(f"goodput, disaggregated / colocated: {goodput['disaggregated'] / goodput['colocated']:.2f}x (target: 1x or more)")
TABLE
