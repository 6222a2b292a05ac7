"""Model speed benchmark: Fovea against PyTorch + transformers, same checkpoint, same thread count.

    .venv-bench/bin/python bench/model_speed.py --model DIR --fovea target/release/fovea --threads 2 --out r.json
    .venv-bench/bin/python bench/model_speed.py --model testdata/golden/model --torch-only --threads 1

Two workloads, each run `--warmup` times untimed, then `--reps` times; the median is reported:

- prefill: a ~512-token user text plus one 1280x720 image (3600 image tokens, no resize needed), inside the
  model's chat template. Time = vision tower + projector + one decoder forward over the whole prompt that fills
  the KV cache and yields the first token's logits (last position only, as generate() does).
  Fovea: timings.vision_ms + timings.prefill_ms. tokens/s = prompt tokens (text + image) / time.
- decode: a short text prompt, then `--decode-tokens` greedy tokens with EOS ignored. The first token comes from
  the prefill logits, so decode = generated_tokens - 1 single-token steps; tokens/s = steps / decode time.
  PyTorch runs `model.generate()` (greedy, KV cache: how people run transformers), timed from the first to
  the last streamed token, so prefill is excluded and generate's per-step overhead is included.
  Fovea: (generated_tokens - 1) / timings.decode_ms, assuming decode_ms covers exactly those steps.

Both sides run the identical prompt: PyTorch is fed the `prompt_token_ids` Fovea reports (image positions
= 100256), and the same image pixels. Threads: torch.set_num_threads(N) (+ 1 inter-op thread);
Fovea runs with RAYON_NUM_THREADS=N and OMP_NUM_THREADS=N. Model load time is excluded on both sides.
Fovea is run as `fovea generate --model DIR --prompt TEXT [--image PATH] --max-new-tokens N --temperature 0
--ignore-eos --json`, one process per run. With --torch-only the prompt is tokenized here instead.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_model import IMAGE_TOKEN_ID, PhiVisionModel, image_patches, prompt_ids  # noqa: E402

IMAGE_W, IMAGE_H = 1280, 720  # 80 x 45 patches of 16 px = 3600, the family's patch budget: no resize
DECODE_PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def make_image(path: Path) -> None:
    """A deterministic 1280x720 RGB test image: colour gradients over a 16-pixel checkerboard."""
    y, x = np.mgrid[0:IMAGE_H, 0:IMAGE_W]
    checker = ((x // 16 + y // 16) % 2) * 64
    rgb = np.stack([x * 255 // (IMAGE_W - 1), y * 255 // (IMAGE_H - 1), 96 + checker], axis=-1)
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def prefill_text(tokenizer: Tokenizer, target_tokens: int = 512) -> str:
    """A deterministic user text of about target_tokens tokens that asks about the image."""
    text = "Describe the image in detail, then answer the questions below."
    i = 0
    while len(tokenizer.encode(text, add_special_tokens=False).ids) < target_tokens:
        i += 1
        text += (f" Question {i}: what colour is the region in row {i % 45} and column {(7 * i) % 80},"
                 f" and how does it compare with its neighbours?")
    return text


def render_chat(model_dir: Path, user_content: str) -> str:
    """The family's chat template for one user turn plus the generation prompt (what Fovea renders)."""
    system = (model_dir / "chat_template.jinja").read_text().split("{%")[0].rstrip("\n")
    return f"{system}\n<|im_start|>user<|im_sep|>{user_content}<|im_end|>\n<|im_start|>assistant<|im_sep|>\n"


def median_ms(runs: list[float]) -> float:
    return statistics.median(runs) * 1000


# ---- Fovea side ----

def run_fovea(fovea: str, model_dir: Path, threads: int, prompt: str, image: Path | None, new_tokens: int) -> dict:
    cmd = [fovea, "generate", "--model", str(model_dir), "--prompt", prompt, "--max-new-tokens", str(new_tokens),
           "--temperature", "0", "--ignore-eos", "--json"]
    if image is not None:
        cmd += ["--image", str(image)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"fovea failed ({proc.returncode}): {' '.join(cmd[:4])} ...\n{proc.stderr[-4000:]}")
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:  # tolerate log lines before a one-line JSON object
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["timings"]["generated_tokens"] != new_tokens:
        sys.exit(f"fovea generated {out['timings']['generated_tokens']} tokens, asked for {new_tokens}")
    return out


def bench_fovea(args, prompt: str, image: Path | None, runs: int, new_tokens: int) -> list[dict]:
    outs = [run_fovea(args.fovea, args.model, args.threads, prompt, image, new_tokens) for _ in range(runs)]
    return outs[args.warmup:]


# ---- PyTorch side ----

class TokenClock(BaseStreamer):
    """Records when generate() emits each new token (the first put() is the prompt)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def torch_prefill(model: PhiVisionModel, ids: list[int], image, runs: int) -> dict:
    input_ids = torch.tensor(ids)
    total, vision = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        embeds = model.embed(input_ids, [image])  # vision tower + projector + splice
        t1 = time.perf_counter()
        model.prefill(embeds)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        vision.append(t1 - t0)
    return {"total": total, "vision": vision}


def torch_decode(model: PhiVisionModel, ids: list[int], new_tokens: int, runs: int) -> tuple[list[float], list[int]]:
    # Ignore EOS without masking it: generate() fills an unset eos_token_id from the model's own
    # generation_config, so clear it there.
    model.decoder.generation_config.eos_token_id = None
    gen = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, pad_token_id=model.config.get("pad_token_id"))
    times = []
    for _ in range(runs):
        clock = TokenClock()
        with torch.inference_mode():
            out = model.decoder.generate(torch.tensor([ids]), generation_config=gen, streamer=clock)
        tokens = out[0, len(ids):].tolist()
        if len(tokens) != new_tokens or len(clock.times) != new_tokens + 1:
            sys.exit(f"transformers generated {len(tokens)} tokens, asked for {new_tokens}")
        times.append(clock.times[-1] - clock.times[1])  # token 1 (from prefill) .. token N
    return times, tokens


# ---- report ----

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    ap.add_argument("--fovea", help="path to the fovea binary")
    ap.add_argument("--torch-only", action="store_true", help="measure the PyTorch side alone")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="PyTorch compute dtype")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if not args.torch_only and not args.fovea:
        ap.error("--fovea is required unless --torch-only")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    runs = args.warmup + args.reps

    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    tmp = tempfile.TemporaryDirectory(prefix="fovea-bench-")
    image_path = Path(tmp.name) / "gradient_1280x720.png"
    make_image(image_path)
    image = image_patches(np.asarray(Image.open(image_path).convert("RGB")))
    text = prefill_text(tokenizer)

    fovea = {}
    if args.torch_only:
        prefill_ids = prompt_ids(tokenizer, render_chat(args.model, "<image>\n" + text), [image[0].shape[0]])
        decode_ids = prompt_ids(tokenizer, render_chat(args.model, DECODE_PROMPT), [])
    else:
        print(f"fovea: prefill x{runs} ...", flush=True)
        fp = bench_fovea(args, text, image_path, runs, 1)
        print(f"fovea: decode x{runs} ...", flush=True)
        fd = bench_fovea(args, DECODE_PROMPT, None, runs, args.decode_tokens)
        prefill_ids, decode_ids = fp[0]["prompt_token_ids"], fd[0]["prompt_token_ids"]
        fovea = {
            "prefill_s": [(o["timings"]["vision_ms"] + o["timings"]["prefill_ms"]) / 1000 for o in fp],
            "vision_s": [o["timings"]["vision_ms"] / 1000 for o in fp],
            "decode_s": [o["timings"]["decode_ms"] / 1000 for o in fd],
            "load_s": [o["timings"]["load_ms"] / 1000 for o in fp + fd],
            "decode_token_ids": fd[0]["token_ids"],
        }
    n_image = prefill_ids.count(IMAGE_TOKEN_ID)
    if n_image != image[0].shape[0]:
        sys.exit(f"prefill prompt has {n_image} image positions, the image gives {image[0].shape[0]} patches")

    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    t0 = time.perf_counter()
    model = PhiVisionModel(args.model, dtype)
    load_s = time.perf_counter() - t0
    print(f"torch: loaded in {load_s:.1f}s; prefill x{runs} ...", flush=True)
    tp = torch_prefill(model, prefill_ids, image, runs)
    print(f"torch: decode x{runs} ...", flush=True)
    td, torch_tokens = torch_decode(model, decode_ids, args.decode_tokens, runs)
    steps = args.decode_tokens - 1

    result = {
        "model": str(args.model), "threads": args.threads, "torch_dtype": args.dtype, "reps": args.reps,
        "warmup": args.warmup, "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "prefill": {"prompt_tokens": len(prefill_ids), "image_tokens": n_image,
                    "torch": {"ms": median_ms(tp["total"][args.warmup:]),
                              "vision_ms": median_ms(tp["vision"][args.warmup:]),
                              "runs_ms": [t * 1000 for t in tp["total"][args.warmup:]]}},
        "decode": {"prompt_tokens": len(decode_ids), "new_tokens": args.decode_tokens, "steps": steps,
                   "torch": {"ms": median_ms(td[args.warmup:]), "runs_ms": [t * 1000 for t in td[args.warmup:]]}},
        "torch_load_s": load_s,
    }
    if fovea:
        result["prefill"]["fovea"] = {"ms": median_ms(fovea["prefill_s"]), "vision_ms": median_ms(fovea["vision_s"]),
                                      "runs_ms": [t * 1000 for t in fovea["prefill_s"]]}
        result["decode"]["fovea"] = {"ms": median_ms(fovea["decode_s"]),
                                     "runs_ms": [t * 1000 for t in fovea["decode_s"]]}
        result["fovea_load_s_median"] = statistics.median(fovea["load_s"])
        same = next((i for i, (a, b) in enumerate(zip(fovea["decode_token_ids"], torch_tokens)) if a != b),
                    len(torch_tokens))
        result["decode"]["greedy_tokens_agree"] = same  # identical leading tokens, Fovea vs PyTorch
    for name, work in (("prefill", result["prefill"]["prompt_tokens"]), ("decode", steps)):
        for side in ("fovea", "torch"):
            if side in result[name]:
                result[name][side]["tok_s"] = work / (result[name][side]["ms"] / 1000)
        if "fovea" in result[name]:
            result[name]["fovea_over_torch"] = result[name]["fovea"]["tok_s"] / result[name]["torch"]["tok_s"]

    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


def print_table(r: dict) -> None:
    p, d = r["prefill"], r["decode"]
    print(f"\n{r['model']}  threads={r['threads']}  torch {r['torch_version']} ({r['torch_dtype']}), "
          f"transformers {r['transformers_version']}  median of {r['reps']} after {r['warmup']} warm-up")
    print(f"{'':44s}{'Fovea':>12s}{'PyTorch':>12s}{'Fovea/PyTorch':>15s}")

    def row(section: dict, label: str, key: str, fmt: str, ratio: float | None = None) -> None:
        vals = [f"{section[side][key]:{fmt}}" if side in section else "-" for side in ("fovea", "torch")]
        print(f"{label:44s}{vals[0]:>12s}{vals[1]:>12s}{(f'{ratio:.2f}x' if ratio else '-'):>15s}")

    row(p, f"prefill tok/s ({p['prompt_tokens']} tok, {p['image_tokens']} image)", "tok_s", ".0f",
        p.get("fovea_over_torch"))
    row(p, "  prefill ms (incl. vision)", "ms", ".1f")
    row(p, "  vision tower + projector ms", "vision_ms", ".1f")
    row(d, f"decode tok/s ({d['steps']} steps, {d['prompt_tokens']}-tok prompt)", "tok_s", ".1f",
        d.get("fovea_over_torch"))
    row(d, "  decode ms", "ms", ".1f")
    if "greedy_tokens_agree" in d:
        print(f"greedy decode tokens identical for the first {d['greedy_tokens_agree']} of {d['new_tokens']}")


if __name__ == "__main__":
    main()
