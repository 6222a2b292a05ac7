"""Fovea's continuous batching against transformers' `generate` in static batches, measured in one run.

    .venv-bench/bin/python bench/serving_compare.py --model /tmp/fovea-bench --fovea target/release/fovea \
        --out /tmp/serving-compare

Starts `fovea serve --model DIR` (RAYON_NUM_THREADS = --threads), loads the same checkpoint into PyTorch in
this process (bench/static_batch.py, torch.set_num_threads(--threads)), then for every cell -- each `--mixes`
workload at each `--concurrency` C, max(--min-requests, --requests-per-stream * C) requests -- runs, one
after the other on the same machine:

1. `fovea bench --concurrency C --mix MIX ... --dump-workload OUT/MIX-cC/workload` against the server;
2. the static-batch baseline on that dumped workload, in batches of C (its prompt ids are checked against
   Fovea's for every request).

Both sides are warmed up first with a short untimed mixed workload. Every cell's two reports (the same
vLLM-style JSON keys) land in OUT/MIX-cC/{fovea,baseline}.json; the comparison is printed and written to
OUT/summary.json and OUT/summary.md:

- output tokens/s of Fovea / baseline at each concurrency and mix (the serving issue's target: >= 3x at 16);
- p99 ITL of each image-bearing mix / p99 ITL of text at the same concurrency, for both sides (target for
  Fovea: <= 2x under an image-heavy mix).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from static_batch import StaticBatchServer, load_workload, set_up_torch, summarize  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FoveaServer:
    """`fovea serve` in a child process, logging to a file; stopped with SIGTERM on exit."""

    def __init__(self, fovea: str, model: Path, threads: int, log: Path, extra: list[str]):
        self.grpc_port = free_port()
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        cmd = [fovea, "serve", "--model", str(model), "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
               "--http-addr", f"127.0.0.1:{free_port()}", *extra]
        self.log = log
        self.process = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def wait_until_listening(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"fovea serve exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        sys.exit(f"fovea serve did not listen on port {self.grpc_port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Cell:
    """One workload (mix, concurrency, request count, seed) and where its files go. Each cell has its own
    seed, so no cell replays another's prompts and images (which would hit the caches)."""

    def __init__(self, directory: Path, mix: str, concurrency: int, requests: int, max_tokens: int, seed: int):
        self.mix, self.concurrency, self.requests, self.max_tokens = mix, concurrency, requests, max_tokens
        self.seed = seed
        self.dir = directory
        self.workload = self.dir / "workload"


def run_fovea(args, server: FoveaServer, cell: Cell) -> dict:
    """`fovea bench` on the cell's workload, dumping it for the baseline; returns its JSON report."""
    cell.dir.mkdir(parents=True, exist_ok=True)
    report = cell.dir / "fovea.json"
    cmd = [args.fovea, "bench", "--addr", server.address, "--requests", str(cell.requests),
           "--concurrency", str(cell.concurrency), "--mix", cell.mix, "--prompt-tokens", str(args.prompt_tokens),
           "--max-tokens", str(cell.max_tokens), "--image-size", args.image_size, "--seed", str(cell.seed),
           "--json", str(report), "--dump-workload", str(cell.workload)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (cell.dir / "fovea.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"fovea bench failed ({proc.returncode}) on {cell.dir.name}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    result = json.loads(report.read_text())
    if result["failed"]:
        sys.exit(f"fovea bench: {result['failed']} requests failed on {cell.dir.name}: {result['errors']}")
    return result


def run_baseline(baseline: StaticBatchServer, cell: Cell) -> dict:
    """The static-batch baseline on the workload Fovea's run dumped; returns its JSON report."""
    records, duration = baseline.serve(load_workload(cell.workload), cell.concurrency)
    result = summarize(records, duration)
    (cell.dir / "baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def comparison(results: dict[tuple[str, int], dict]) -> dict:
    """Throughput ratios per cell and p99 ITL ratios of image-bearing mixes against text."""
    rows = []
    for (mix, c), cell in results.items():
        f, b = cell["fovea"], cell["baseline"]
        rows.append({"mix": mix, "concurrency": c, "requests": f["completed"],
                     "fovea_output_tok_s": f["output_throughput"], "baseline_output_tok_s": b["output_throughput"],
                     "throughput_ratio": f["output_throughput"] / b["output_throughput"],
                     "fovea_mean_ttft_ms": f["mean_ttft_ms"], "baseline_mean_ttft_ms": b["mean_ttft_ms"],
                     "fovea_p99_itl_ms": f["p99_itl_ms"], "baseline_p99_itl_ms": b["p99_itl_ms"]})
    itl = []
    for (mix, c), cell in results.items():
        text = results.get(("text", c))
        if mix != "text" and text is not None:
            itl.append({"mix": mix, "concurrency": c,
                        "fovea_p99_itl_ratio": cell["fovea"]["p99_itl_ms"] / text["fovea"]["p99_itl_ms"],
                        "baseline_p99_itl_ratio": cell["baseline"]["p99_itl_ms"] / text["baseline"]["p99_itl_ms"]})
    return {"cells": rows, "p99_itl_vs_text": itl}


def markdown(summary: dict) -> str:
    lines = ["| mix | concurrency | requests | Fovea output tok/s | baseline output tok/s | Fovea / baseline "
             "| mean TTFT Fovea / baseline | p99 ITL Fovea / baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["cells"]:
        lines.append(f"| {r['mix']} | {r['concurrency']} | {r['requests']} | {r['fovea_output_tok_s']:.1f} "
                     f"| {r['baseline_output_tok_s']:.1f} | **{r['throughput_ratio']:.2f}x** "
                     f"| {r['fovea_mean_ttft_ms']:.0f} / {r['baseline_mean_ttft_ms']:.0f} ms "
                     f"| {r['fovea_p99_itl_ms']:.0f} / {r['baseline_p99_itl_ms']:.0f} ms |")
    if summary["p99_itl_vs_text"]:
        lines += ["", "| mix | concurrency | p99 ITL / text-only p99 ITL, Fovea | same, baseline |",
                  "|---|---|---|---|"]
        for r in summary["p99_itl_vs_text"]:
            lines.append(f"| {r['mix']} | {r['concurrency']} | **{r['fovea_p99_itl_ratio']:.2f}x** "
                         f"| {r['baseline_p99_itl_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="checkpoint directory, e.g. /tmp/fovea-bench")
    ap.add_argument("--fovea", required=True, help="path to the fovea binary")
    ap.add_argument("--out", type=Path, required=True, help="directory for workloads, reports and the summary")
    ap.add_argument("--threads", type=int, default=2, help="compute threads of each side")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--mixes", nargs="+", choices=["text", "image", "mixed"], default=["text", "image"])
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--requests-per-stream", type=int, default=2, help="requests per cell = this x concurrency")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--image-size", default="448x448", help="generated images, WIDTHxHEIGHT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve-arg", action="append", default=[], help="extra fovea serve argument (repeatable)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    set_up_torch(args.threads)

    started = time.monotonic()
    server = FoveaServer(args.fovea, args.model, args.threads, args.out / "serve.log", args.serve_arg)
    try:
        baseline = StaticBatchServer(args.model)
        server.wait_until_listening()
        print(f"fovea serve on {server.address}; baseline loaded ({time.monotonic() - started:.0f} s)", flush=True)
        warm_up = Cell(args.out / "warm-up", "mixed", 2, 2, 4, args.seed + 999)
        run_fovea(args, server, warm_up)
        run_baseline(baseline, warm_up)

        results = {}
        for mix in args.mixes:
            for c in args.concurrency:
                requests = max(args.min_requests, args.requests_per_stream * c)
                cell = Cell(args.out / f"{mix}-c{c}", mix, c, requests, args.max_tokens, args.seed + c)
                t0 = time.monotonic()
                fovea = run_fovea(args, server, cell)
                t1 = time.monotonic()
                base = run_baseline(baseline, cell)
                results[(mix, c)] = {"fovea": fovea, "baseline": base}
                ratio = fovea["output_throughput"] / base["output_throughput"]
                print(f"{mix:6s} c={c:<3d} n={requests:<4d} output tok/s: Fovea {fovea['output_throughput']:7.1f}"
                      f"  baseline {base['output_throughput']:7.1f}  ratio {ratio:5.2f}x"
                      f"  | p99 ITL {fovea['p99_itl_ms']:7.0f} / {base['p99_itl_ms']:7.0f} ms"
                      f"  [{t1 - t0:.0f} s + {time.monotonic() - t1:.0f} s]", flush=True)
    finally:
        server.stop()

    summary = comparison(results)
    summary["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    summary["settings"]["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    summary["wall_s"] = time.monotonic() - started
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    (args.out / "summary.md").write_text(table)
    print("\n" + table)
    print(f"whole run: {summary['wall_s'] / 60:.1f} min; reports in {args.out}")


if __name__ == "__main__":
    main()
