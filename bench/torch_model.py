"""Phi-4-reasoning-vision in plain PyTorch + transformers: an independent reference for Fovea.

Loads a Fovea / Hugging Face checkpoint directory of this family (config.json with the text sizes at the top
level and a `vision_config`; sharded bf16 safetensors with an index) into stock transformers modules:

    pixels -> Siglip2VisionModel (second-to-last layer, no post-layernorm)
           -> projector (Linear, erf-GELU, Linear)
           -> spliced into the token embeddings at the image positions (id 100256)
           -> Phi3ForCausalLM (the Phi-4 decoder)

Weights are upcast to float32 by default (`dtype=torch.bfloat16` keeps them in bf16).
bench/model_speed.py uses this module for the PyTorch side of the speed benchmark.

Self-check against the golden fixture (prefill logits, greedy tokens, image features, resize, prompt ids):

    .venv-bench/bin/python bench/torch_model.py --check testdata/golden
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn
from transformers import Phi3Config, Phi3ForCausalLM, Siglip2VisionConfig, Siglip2VisionModel

IMAGE_TOKEN_ID = 100256  # <|dummy_0|>: one per image patch in input_ids
PATCH_SIZE = 16
IMAGE_MEAN, IMAGE_STD, RESCALE = 0.5, 0.5, 1 / 255  # preprocessor_config.json of the family

# Checkpoint name prefixes: each module's weights are found under exactly one of these.
DECODER_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."


def load_checkpoint(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint, as stored (bf16)."""
    index = model_dir / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    tensors = {}
    for shard in shards:
        with safe_open(model_dir / shard, framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def decoder_config(cfg: dict) -> Phi3Config:
    """The Phi-4 decoder is the Phi-3 architecture; its sizes sit at the top level of config.json."""
    return Phi3Config(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg["max_position_embeddings"],
        original_max_position_embeddings=cfg.get("original_max_position_embeddings",
                                                 cfg["max_position_embeddings"]),
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"],
                         "partial_rotary_factor": cfg.get("partial_rotary_factor", 1.0)},
        sliding_window=cfg.get("sliding_window"),
        tie_word_embeddings=False,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        use_cache=True,
        attn_implementation="sdpa",
    )


def vision_config(cfg: dict) -> Siglip2VisionConfig:
    """SigLIP-2 NaFlex tower, truncated to the layers whose output is used.

    The model takes features from the second-to-last encoder layer (hidden_states[-2]), so the last layer,
    the post-layernorm and the pooling head never contribute: the tower is built without the last layer and
    without the head, and its hidden_states[-1] is read (which is before post_layernorm).
    """
    vc = cfg["vision_config"]
    return Siglip2VisionConfig(
        hidden_size=vc["hidden_size"],
        intermediate_size=vc["intermediate_size"],
        num_hidden_layers=vc["num_hidden_layers"] - 1,
        num_attention_heads=vc["num_attention_heads"],
        patch_size=PATCH_SIZE,
        num_patches=256,
        hidden_act=vc.get("hidden_act", "gelu_pytorch_tanh"),
        layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
        vision_use_head=False,
        attn_implementation="sdpa",
    )


def _load(module: nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype, what: str) -> None:
    """Assigns checkpoint tensors (cast to dtype) to every parameter of module; all must be present."""
    expected = set(module.state_dict().keys())
    missing = expected - tensors.keys()
    if missing:
        raise ValueError(f"{what}: checkpoint lacks {sorted(missing)[:5]} ({len(missing)} in all)")
    module.load_state_dict({k: tensors[k].to(dtype) for k in expected}, strict=True, assign=True)


class PhiVisionModel(nn.Module):
    """Vision tower + projector + Phi-3 decoder, loaded from one checkpoint directory."""

    def __init__(self, model_dir: str | Path, dtype: torch.dtype = torch.float32):
        super().__init__()
        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
            raise ValueError(f"unsupported projector {cfg['mm_projector_type']}")
        if cfg.get("rope_scaling") is not None:
            raise ValueError(f"unsupported rope_scaling {cfg['rope_scaling']}")
        self.config = cfg
        self.dtype_ = dtype
        tensors = load_checkpoint(model_dir)

        self.decoder = Phi3ForCausalLM(decoder_config(cfg)).eval()
        _load(self.decoder, {k: v for k, v in tensors.items() if k.startswith(DECODER_PREFIXES)}, dtype,
              "decoder")

        self.vision = Siglip2VisionModel(vision_config(cfg)).eval()
        _load(self.vision, {k[len(VISION_PREFIX):]: v for k, v in tensors.items() if k.startswith(VISION_PREFIX)},
              dtype, "vision tower")

        text_hidden, vision_hidden = cfg["hidden_size"], cfg["vision_config"]["hidden_size"]
        self.projector = nn.Sequential(nn.Linear(vision_hidden, text_hidden), nn.GELU(),  # erf GELU
                                       nn.Linear(text_hidden, text_hidden)).eval()
        _load(self.projector, {k[len(PROJECTOR_PREFIX):]: v for k, v in tensors.items()
                               if k.startswith(PROJECTOR_PREFIX)}, dtype, "projector")

    @torch.inference_mode()
    def image_features(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Projector output [h*w, text_hidden] for one image: patches [h*w, 16*16*3], grid (h, w)."""
        h, w = grid
        if patches.shape[0] != h * w:
            raise ValueError(f"{patches.shape[0]} patches for a {h}x{w} grid")
        out = self.vision(
            pixel_values=patches[None].to(self.dtype_),
            pixel_attention_mask=torch.ones(1, h * w, dtype=torch.long),
            spatial_shapes=torch.tensor([[h, w]]),
            output_hidden_states=True,
        )
        return self.projector(out.hidden_states[-1][0])

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, images: list[tuple[torch.Tensor, tuple[int, int]]]) -> torch.Tensor:
        """inputs_embeds [1, T, hidden]: token embeddings, with each image's projected features written over
        its run of IMAGE_TOKEN_ID positions, images in order of appearance."""
        embeds = self.decoder.get_input_embeddings()(input_ids[None])
        positions = (input_ids == IMAGE_TOKEN_ID).nonzero().flatten()
        features = [self.image_features(p, g) for p, g in images]
        n = sum(f.shape[0] for f in features)
        if n != positions.numel():
            raise ValueError(f"prompt has {positions.numel()} image positions, images give {n} features")
        if features:
            embeds[0, positions] = torch.cat(features).to(embeds.dtype)
        return embeds

    @torch.inference_mode()
    def prefill(self, inputs_embeds: torch.Tensor):
        """One forward over the whole prompt; returns (last-position logits [vocab], KV cache)."""
        out = self.decoder(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    @torch.inference_mode()
    def greedy(self, logits: torch.Tensor, cache, steps: int) -> tuple[list[int], torch.Tensor]:
        """Greedy continuation from prefill logits, no stop handling: (tokens, logits of the last step)."""
        tokens = [int(logits.argmax())]
        for _ in range(steps - 1):
            out = self.decoder(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[0, -1]
            tokens.append(int(logits.argmax()))
        return tokens, logits


# ---- image preprocessing (SigLIP-2 NaFlex, as in Siglip2ImageProcessor) ----

def resize_image(path: str | Path, resized_hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3], resized with PIL bilinear (antialiased) when the size differs."""
    img = Image.open(path).convert("RGB")
    h, w = resized_hw
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img)


def image_patches(pixels_u8: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """Rescale + normalize [H, W, 3] uint8, then patchify channel-last like HF convert_image_to_patches:
    returns ([h*w, 16*16*3] float32 with (py, px, c) order inside a patch, grid (h, w))."""
    H, W, C = pixels_u8.shape
    if H % PATCH_SIZE or W % PATCH_SIZE:
        raise ValueError(f"image {H}x{W} is not a multiple of the {PATCH_SIZE}-pixel patch")
    x = (pixels_u8.astype(np.float32) * np.float32(RESCALE) - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)
    h, w = H // PATCH_SIZE, W // PATCH_SIZE
    x = x.reshape(h, PATCH_SIZE, w, PATCH_SIZE, C).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)
    return torch.from_numpy(np.ascontiguousarray(x)), (h, w)


def prompt_ids(tokenizer, prompt_text: str, image_tokens: list[int]) -> list[int]:
    """Token ids of a rendered prompt whose `<image>` placeholders become runs of IMAGE_TOKEN_ID."""
    parts = prompt_text.split("<image>")
    if len(parts) != len(image_tokens) + 1:
        raise ValueError(f"{len(parts) - 1} <image> placeholders for {len(image_tokens)} images")
    ids = tokenizer.encode(parts[0], add_special_tokens=False).ids
    for n, part in zip(image_tokens, parts[1:]):
        ids += [IMAGE_TOKEN_ID] * n + tokenizer.encode(part, add_special_tokens=False).ids
    return ids


# ---- self-check against testdata/golden ----

def check(golden_dir: Path, dtype: torch.dtype) -> bool:
    from tokenizers import Tokenizer

    golden = json.loads((golden_dir / "golden.json").read_text())
    t0 = time.perf_counter()
    model = PhiVisionModel(golden_dir / "model", dtype)
    tokenizer = Tokenizer.from_file(str(golden_dir / "model" / "tokenizer.json"))
    print(f"loaded {golden_dir / 'model'} in {time.perf_counter() - t0:.2f}s ({dtype})")
    ref = safe_open(golden_dir / "golden.safetensors", framework="pt")
    results = []

    def record(case: str, what: str, ok: bool, detail: str) -> None:
        results.append(ok)
        print(f"  {'PASS' if ok else 'FAIL'} {case:22s} {what:26s} {detail}")

    for case in golden["cases"]:
        name, spans = case["name"], case["image_spans"]
        t0 = time.perf_counter()
        input_ids = torch.tensor(case["input_ids"])
        ids = prompt_ids(tokenizer, case["prompt_text"], [s["tokens"] for s in spans])
        record(name, "input_ids", ids == case["input_ids"], f"{len(ids)} tokens")

        images = []
        for i, span in enumerate(spans):
            key = f"{name}.image{i}"
            ref_u8 = ref.get_tensor(f"{key}.resized_u8").numpy()
            ours_u8 = resize_image(golden_dir / "images" / span["image"], span["resized_hw"])
            diff = int(np.abs(ours_u8.astype(np.int16) - ref_u8).max()) if ours_u8.shape == ref_u8.shape else 999
            record(name, f"image{i} PIL resize", diff <= 1, f"max |diff| {diff} levels, {ref_u8.shape}")

            patches, grid = image_patches(ref_u8)  # golden pixels: isolates the model from the resize
            if list(grid) != span["grid"]:
                raise ValueError(f"{key}: grid {grid} != golden {span['grid']}")
            images.append((patches, grid))
            feats = model.image_features(patches, grid).float()
            want = ref.get_tensor(f"{key}.features")
            rel = float((feats - want).abs().max() / want.abs().max())
            record(name, f"image{i} features", rel <= 1e-4, f"max rel diff {rel:.2e}, {tuple(feats.shape)}")

        logits, cache = model.prefill(model.embed(input_ids, images))
        d = float((logits.float() - ref.get_tensor(f"{name}.prefill_last_logits")).abs().max())
        record(name, "prefill_last_logits", d <= 1e-3, f"max |diff| {d:.2e}")

        tokens, last = model.greedy(logits, cache, len(case["greedy_tokens"]))
        same = sum(a == b for a, b in zip(tokens, case["greedy_tokens"]))
        record(name, f"greedy {len(tokens)} tokens", tokens == case["greedy_tokens"],
               f"{same}/{len(tokens)} equal (min top-2 gap {case['min_top2_gap']:.3f})")
        d = float((last.float() - ref.get_tensor(f"{name}.greedy_last_logits")).abs().max())
        record(name, "greedy_last_logits", d <= 1e-3, f"max |diff| {d:.2e}  [{time.perf_counter() - t0:.2f}s]")

    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return all(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="GOLDEN_DIR", required=True, help="e.g. testdata/golden")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ok = check(Path(args.check), torch.float32 if args.dtype == "f32" else torch.bfloat16)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
