"""The serving baseline: a `fovea bench` workload served the way a transformers user would serve it.

    fovea bench ... --concurrency 16 --dump-workload /tmp/w        # Fovea's run; writes its requests
    .venv-bench/bin/python bench/static_batch.py --model /tmp/fovea-bench --workload /tmp/w \
        --concurrency 16 --threads 2 --json baseline.json

It replays the exact requests `fovea bench --dump-workload DIR` sent (DIR/workload.json and its image
files) through stock PyTorch + transformers (the model of bench/torch_model.py), as the simplest script a
user would write: requests are taken in arrival order in static batches of `--concurrency`; each batch is
tokenized with the model's chat template (transformers' `apply_chat_template`, then each text piece between
`<image>` markers tokenized on its own, one placeholder per image patch), images are resized by the
checkpoint's NaFlex rule (transformers' `get_image_size_for_max_num_patches`, no upscaling past the native
patch count), embedded (vision tower + projector spliced into the token embeddings), left-padded with an
attention mask, and run through one `model.generate(inputs_embeds=...)`: greedy, `max_new_tokens`, EOS
ignored when the request says so. The next batch starts when the whole batch is done.

Every request's prompt ids are checked against the ids Fovea's server gave it (`prompt_token_ids` in the
dump): a difference is an error, so both sides always run the same prompts.

Timing is that of a closed loop of `--concurrency` clients, like `fovea bench --concurrency C`: the requests
of a batch are sent when the batch starts (the previous batch's answers all arrive at its end). A streamer
records when generate() emits each step's tokens. TTFT = first step's time - batch start (so preprocessing,
vision and prefill of the whole batch count); ITL = gaps between a request's steps; end-to-end latency = its
last token's time - batch start; duration = first batch start to last batch end. The report has the same
metrics, layout and JSON keys as `fovea bench` (vLLM's `benchmark_serving` names).

Threads: torch.set_num_threads(--threads) and one inter-op thread, the same as Fovea's RAYON_NUM_THREADS.
On a machine that other jobs load, set OMP_WAIT_POLICY=PASSIVE: OpenMP's spin-waiting threads then lose their
cores to the other jobs, and torch ran ~8x slower per decoding step in a test here (1.6 s against 0.19 s).
"""

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import GenerationConfig, PreTrainedTokenizerFast
from transformers.generation.streamers import BaseStreamer
from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_model import IMAGE_TOKEN_ID, PATCH_SIZE, PhiVisionModel, image_patches  # noqa: E402

IMAGE_MARKER = "<image>"
# What each reasoning mode appends after the chat template's generation prompt (Fovea's text/mode.rs).
MODE_SUFFIX = {"auto": "", "think": "<think>", "nothink": "<|dummy_84|>"}
WORKLOAD_FILE = "workload.json"  # written by `fovea bench --dump-workload DIR`


@dataclass
class WorkloadRequest:
    """One request of a dumped workload, as `fovea bench` sent it."""
    messages: list[dict]  # role + content parts: {"type": "text", "text"} or {"type": "image", "data": bytes}
    mode: str
    max_tokens: int
    ignore_eos: bool
    fovea_prompt_ids: list[int]  # what Fovea's Tokenize made of it


def load_workload(directory: Path) -> list[WorkloadRequest]:
    """The requests of `fovea bench --dump-workload DIR`, in sending order, image bytes read into memory."""
    path = directory / WORKLOAD_FILE
    if not path.exists():
        sys.exit(f"{path} not found: write it with `fovea bench ... --dump-workload {directory}`")
    requests = []
    for index, raw in enumerate(json.loads(path.read_text())["requests"]):
        if raw["temperature"] != 0:
            sys.exit(f"request {index}: temperature {raw['temperature']}; this baseline runs greedy requests only")
        if raw["max_tokens"] is None:
            sys.exit(f"request {index}: no max_tokens; the baseline needs one per request")
        messages = []
        for message in raw["messages"]:
            content = [{"type": "image", "data": (directory / part["file"]).read_bytes()} if part["type"] == "image"
                       else part for part in message["content"]]
            messages.append({"role": message["role"], "content": content})
        requests.append(WorkloadRequest(messages, raw["mode"], raw["max_tokens"], raw["ignore_eos"],
                                        raw["prompt_token_ids"]))
    if len({r.ignore_eos for r in requests}) > 1:
        sys.exit("requests disagree on ignore_eos; one generate() call per batch needs one setting for all")
    return requests


class Preprocessor:
    """Chat template, tokenizer and image preprocessing of one checkpoint, through transformers.

    The tokenizer is loaded as PreTrainedTokenizerFast, which runs tokenizer.json as written. AutoTokenizer
    would pick the class tokenizer_config.json names (GPT2Tokenizer), which in transformers 5 rebuilds
    GPT-2's pre-tokenizer and splits e.g. ".\n\n" into three tokens instead of cl100k's one."""

    def __init__(self, model_dir: Path):
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
        preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text())
        self.min_patches, self.max_patches = preprocessor["min_num_patches"], preprocessor["max_num_patches"]

    def image(self, data: bytes) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patches [h*w, 16*16*3] and grid (h, w): the native patch count clamped into the budget, the size
        transformers picks for it, PIL bilinear resize (Siglip2ImageProcessorNoUpscale)."""
        img = Image.open(io.BytesIO(data)).convert("RGB")
        width, height = img.size
        native = max((width // PATCH_SIZE) * (height // PATCH_SIZE), 1)
        budget = min(max(native, self.min_patches), self.max_patches)
        h, w = get_image_size_for_max_num_patches(height, width, PATCH_SIZE, budget)
        if (w, h) != img.size:
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        return image_patches(np.asarray(img))

    def prompt(self, request: WorkloadRequest) -> tuple[list[int], list[tuple[torch.Tensor, tuple[int, int]]]]:
        """Prompt ids (a run of IMAGE_TOKEN_ID per image) and the images' patches, in order."""
        chat, images = [], []
        for message in request.messages:
            text = ""
            for part in message["content"]:
                if part["type"] == "image":
                    images.append(self.image(part["data"]))
                    text += IMAGE_MARKER
                else:
                    text += part["text"]
            chat.append({"role": message["role"], "content": text})
        rendered = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        pieces = (rendered + MODE_SUFFIX[request.mode]).split(IMAGE_MARKER)
        ids = self.tokenizer.encode(pieces[0], add_special_tokens=False)
        for (patches, _), piece in zip(images, pieces[1:]):
            ids += [IMAGE_TOKEN_ID] * patches.shape[0] + self.tokenizer.encode(piece, add_special_tokens=False)
        return ids, images


def check_prompt_ids(index: int, ours: list[int], fovea: list[int]) -> None:
    """Exits when this script's prompt differs from the one Fovea ran."""
    if ours != fovea:
        at = next((i for i, (a, b) in enumerate(zip(ours, fovea)) if a != b), min(len(ours), len(fovea)))
        sys.exit(f"request {index}: prompt ids differ from Fovea's at position {at} "
                 f"({len(ours)} vs {len(fovea)} tokens): ours {ours[at:at + 8]}, Fovea's {fovea[at:at + 8]}")


class StepClock(BaseStreamer):
    """Records when generate() emits each step's new tokens (1-D puts; the prompt, when put, is 2-D)."""

    def __init__(self):
        self.step_times: list[float] = []

    def put(self, value):
        if value.dim() == 1:
            self.step_times.append(time.perf_counter())

    def end(self):
        pass


@dataclass
class RequestRecord:
    """What one request measured, from the moment its batch started."""
    prompt_tokens: int
    output_tokens: int
    ttft: float
    itls: list[float]
    latency: float
    token_ids: list[int] = field(default_factory=list)


class StaticBatchServer:
    """A loaded model that serves batches of requests with one `generate` call each."""

    def __init__(self, model_dir: Path, dtype: torch.dtype = torch.float32):
        self.model = PhiVisionModel(model_dir, dtype)
        self.preprocessor = Preprocessor(model_dir)
        self.pad_token_id = self.model.config["pad_token_id"]
        self.eos_token_id = self.model.config["eos_token_id"]
        # EOS is handled per request below; generate() must not fill it in from the model's own config.
        self.model.decoder.generation_config.eos_token_id = None

    @torch.inference_mode()
    def run_batch(self, batch: list[WorkloadRequest], first_index: int) -> list[RequestRecord]:
        """Serves one static batch; times are relative to the call."""
        started = time.perf_counter()
        embeds = []
        for offset, request in enumerate(batch):
            ids, images = self.preprocessor.prompt(request)
            check_prompt_ids(first_index + offset, ids, request.fovea_prompt_ids)
            embeds.append(self.model.embed(torch.tensor(ids), images)[0])
        inputs_embeds, attention_mask = self.left_pad(embeds)
        stop_at_eos = not batch[0].ignore_eos  # the same for every request (load_workload)
        clock = StepClock()
        out = self.model.decoder.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, streamer=clock,
            generation_config=GenerationConfig(
                do_sample=False, max_new_tokens=max(r.max_tokens for r in batch), pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_id if stop_at_eos else None))
        records = []
        for row, (request, prompt) in enumerate(zip(batch, embeds)):
            tokens = out[row, -len(clock.step_times):].tolist()[:request.max_tokens]
            if not request.ignore_eos and self.eos_token_id in tokens:
                tokens = tokens[:tokens.index(self.eos_token_id) + 1]
            times = [t - started for t in clock.step_times[:len(tokens)]]
            records.append(RequestRecord(prompt_tokens=prompt.shape[0], output_tokens=len(tokens), ttft=times[0],
                                         itls=list(np.diff(times)), latency=times[-1], token_ids=tokens))
        return records

    def left_pad(self, embeds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, hidden] with each prompt right-aligned after pad-token embeddings, and its [B, T] mask."""
        length = max(e.shape[0] for e in embeds)
        pad = self.model.decoder.get_input_embeddings()(torch.tensor([self.pad_token_id]))[0]
        batch = pad.expand(len(embeds), length, -1).clone()
        mask = torch.zeros(len(embeds), length, dtype=torch.long)
        for row, e in enumerate(embeds):
            batch[row, length - e.shape[0]:] = e
            mask[row, length - e.shape[0]:] = 1
        return batch, mask

    def warm_up(self, request: WorkloadRequest) -> None:
        """One short untimed generation, so that the first timed batch pays no one-time costs."""
        short = WorkloadRequest(request.messages, request.mode, 2, True, request.fovea_prompt_ids)
        self.run_batch([short], 0)

    def serve(self, requests: list[WorkloadRequest], concurrency: int) -> tuple[list[RequestRecord], float]:
        """Serves `requests` in arrival order, `concurrency` at a time; returns the records and the duration."""
        started = time.perf_counter()
        records = []
        for first in range(0, len(requests), concurrency):
            records += self.run_batch(requests[first:first + concurrency], first)
        return records, time.perf_counter() - started


# ---- report: the same metrics, names and layout as `fovea bench` (cli/src/bench/metrics.rs) ----

def latency_stats(values_s: list[float]) -> dict:
    """Mean, median and 99th percentile (numpy's linear interpolation) in milliseconds."""
    if not values_s:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ms = np.array(values_s) * 1000
    return {"mean": float(ms.mean()), "median": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def summarize(records: list[RequestRecord], duration: float) -> dict:
    """`fovea bench`'s JSON report for these records."""
    input_tokens = sum(r.prompt_tokens for r in records)
    output_tokens = sum(r.output_tokens for r in records)
    summary = {
        "completed": len(records), "failed": 0, "duration": duration, "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens, "request_throughput": len(records) / duration,
        "request_goodput": None, "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
    }
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in records if r.output_tokens > 1]
    for name, values in (("ttft", [r.ttft for r in records]), ("tpot", tpots),
                         ("itl", [gap for r in records for gap in r.itls]), ("e2el", [r.latency for r in records])):
        stats = latency_stats(values)
        for key in ("mean", "median", "p99"):
            summary[f"{key}_{name}_ms"] = stats[key]
    summary["errors"] = []
    return summary


def format_report(s: dict) -> str:
    """The report in `fovea bench`'s (vLLM's) layout."""
    def rule(fill: str, title: str) -> str:
        side = max(50 - len(title), 0)
        return fill * (side // 2) + title + fill * (side - side // 2)

    def row(label: str, value) -> str:
        return f"{label + ':':<40} {value}"

    lines = [rule("=", " Static Batch Baseline Result "), row("Successful requests", s["completed"]),
             row("Failed requests", s["failed"]), row("Benchmark duration (s)", f"{s['duration']:.2f}"),
             row("Total input tokens", s["total_input_tokens"]),
             row("Total generated tokens", s["total_output_tokens"]),
             row("Request throughput (req/s)", f"{s['request_throughput']:.2f}"),
             row("Output token throughput (tok/s)", f"{s['output_throughput']:.2f}"),
             row("Total Token throughput (tok/s)", f"{s['total_token_throughput']:.2f}")]
    for title, name, short in (("Time to First Token", "ttft", "TTFT"),
                               ("Time per Output Token (excl. 1st token)", "tpot", "TPOT"),
                               ("Inter-token Latency", "itl", "ITL"), ("End-to-end Latency", "e2el", "E2EL")):
        lines.append(rule("-", title))
        for key, label in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            lines.append(row(f"{label} {short} (ms)", f"{s[f'{key}_{name}_ms']:.2f}"))
    lines.append(rule("=", ""))
    return "\n".join(lines)


def set_up_torch(threads: int) -> None:
    """`threads` compute threads and one inter-op thread; transformers' warnings about the checkpoint's
    custom model type silenced."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    transformers.logging.set_verbosity_error()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="checkpoint directory (the one fovea serve ran)")
    ap.add_argument("--workload", type=Path, required=True, help="directory written by fovea bench --dump-workload")
    ap.add_argument("--concurrency", type=int, required=True, help="static batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--json", type=Path, help="also write the report here (with each request's token ids)")
    args = ap.parse_args()
    if args.concurrency < 1:
        ap.error("--concurrency must be at least 1")
    set_up_torch(args.threads)
    requests = load_workload(args.workload)
    server = StaticBatchServer(args.model, torch.float32 if args.dtype == "f32" else torch.bfloat16)
    server.warm_up(requests[0])
    records, duration = server.serve(requests, args.concurrency)
    summary = summarize(records, duration)
    print(format_report(summary))
    if args.json:
        summary["token_ids"] = [r.token_ids for r in records]
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
