"""Regenerates the preprocessing test fixtures in this folder with Pillow 13.0 and NumPy.

Pillow 13, like the golden reference: it runs the resize's vertical pass first when the height
loses more than twice as many pixels as the width (earlier versions always start horizontally),
which moves some pixels by a level.

Run from this folder: `python make_fixtures.py`. Outputs are deterministic for a given Pillow.

- cmyk_16x8.jpg: an Adobe CMYK JPEG (two flat 8x8 blocks), and cmyk_16x8_pil_rgb.png: what
  `Image.open(...).convert("RGB")` makes of it.
- jpeg_*.jpg: one small picture saved as baseline 4:2:0, 4:2:2 and 4:4:4, progressive, with
  restart markers, with optimized Huffman tables, as grayscale, and a 2x9 4:2:0 one (chroma one
  sample wide, which libjpeg upsamples by replication), and jpeg_cases.safetensors: what
  `Image.open(...).convert("RGB")` (libjpeg-turbo) decodes from each (`{name}`, u8 [h,w,3]).
- palette_trns_4x1.png: a palette PNG with a transparent entry (PIL's RGB ignores transparency).
- formats_6x4.{png,bmp,webp,gif}: one 6x4 picture in each container (WebP lossless; the GIF has a
  second, different frame, which must be ignored).
- pil_resize_cases.safetensors: a random 17x23 RGB image (`source`, u8 [17,23,3]) and
  `Image.resize((w, h), Image.BILINEAR)` of it for several sizes (`resized_{h}x{w}`, u8 [h,w,3]);
  3x200 and 8x21 take the vertical pass first.
- position_grid.safetensors: a random (2, 16, 16) float32 grid (`source`) and, per size, laid
  out (h*w, 2): PIL's float-image (mode "F") bilinear resize of each channel (`resized_{h}x{w}`),
  the same antialiased triangle filter computed in f64, so PyTorch's f32 kernel agrees to ~1e-6;
  and `aten_{h}x{w}`, a float32 NumPy transcription of PyTorch's CPU kernel
  (`_upsample_bilinear2d_aa`, UpSampleKernel.cpp) with its float/double promotions, which the Rust
  code must match bit for bit. (Torch itself was not available to generate these.)
"""

import json
import struct

import numpy as np
from PIL import Image


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        dtype = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def cmyk_jpeg():
    cmyk = np.zeros((8, 16, 4), dtype=np.uint8)
    cmyk[:, :8] = (200, 30, 90, 40)
    cmyk[:, 8:] = (10, 180, 20, 100)
    Image.fromarray(cmyk, "CMYK").save("cmyk_16x8.jpg", quality=100)
    Image.open("cmyk_16x8.jpg").convert("RGB").save("cmyk_16x8_pil_rgb.png")


def jpeg_cases():
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:23, 0:37]
    smooth = np.stack([x * 6, y * 10, (x + y) * 4], axis=-1)
    picture = Image.fromarray(np.clip(smooth + rng.integers(-40, 40, size=(23, 37, 3)), 0, 255).astype(np.uint8))
    tiny = Image.fromarray(rng.integers(0, 256, size=(9, 2, 3), dtype=np.uint8))
    variants = {
        "baseline_420": (picture, {"subsampling": 2}),
        "baseline_422": (picture, {"subsampling": 1}),
        "baseline_444": (picture, {"subsampling": 0}),
        "progressive_420": (picture, {"progressive": True}),
        "restart_420": (picture, {"restart_marker_blocks": 3}),
        "optimized_420": (picture, {"optimize": True}),
        "gray": (picture.convert("L"), {}),
        "tiny_420_2x9": (tiny, {"subsampling": 2}),
    }
    expected = {}
    for name, (image, options) in variants.items():
        image.save(f"jpeg_{name}.jpg", quality=90, **options)
        expected[name] = np.asarray(Image.open(f"jpeg_{name}.jpg").convert("RGB"))
    save_safetensors("jpeg_cases.safetensors", expected)


def palette_png():
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 - 4) * 3)
    image.putdata([0, 1, 2, 3])
    image.save("palette_trns_4x1.png", transparency=3)


def formats():
    image = Image.new("P", (6, 4))
    colours = [(250, 10, 10), (10, 200, 30), (20, 40, 220), (255, 255, 255), (0, 0, 0), (128, 64, 32)]
    image.putpalette([v for c in colours for v in c] + [0] * (256 - len(colours)) * 3)
    image.putdata([(x + 2 * y) % len(colours) for y in range(4) for x in range(6)])
    rgb = image.convert("RGB")
    rgb.save("formats_6x4.png")
    rgb.save("formats_6x4.bmp")
    rgb.save("formats_6x4.webp", lossless=True)
    second = Image.new("P", (6, 4), 4)
    second.putpalette(image.getpalette())
    image.save("formats_6x4.gif", save_all=True, append_images=[second], duration=100)


def resize_cases():
    rng = np.random.default_rng(7)
    source = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    tensors = {"source": source}
    for h, w in [(17, 40), (17, 9), (50, 23), (5, 23), (34, 11), (1, 1), (3, 200), (16, 16), (8, 21)]:
        tensors[f"resized_{h}x{w}"] = np.asarray(Image.fromarray(source).resize((w, h), Image.BILINEAR))
    save_safetensors("pil_resize_cases.safetensors", tensors)


def aten_axis_weights(in_size, out_size):
    """`_compute_index_ranges_weights` + `_compute_indices_min_size_weights_aa` for float32."""
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1.0 else f32(1.0)
    max_taps = int(np.ceil(support)) * 2 + 1
    inverse = f32(1.0 / f64(scale)) if scale >= 1.0 else f32(1.0)
    taps = []
    for i in range(out_size):
        center = f32(f64(scale) * (i + 0.5))
        first = max(int(f64(center - support) + 0.5), 0)
        count = min(max(min(int(f64(center + support) + 0.5), in_size) - first, 0), max_taps)
        weights, total = [], f32(0.0)
        for j in range(count):
            x = abs(f32((f64(f32(j + first) - center) + 0.5) * f64(inverse)))
            w = f32(1.0 - f64(x)) if x < 1.0 else f32(0.0)
            weights.append(w)
            total = f32(total + w)
        if total != 0.0:
            weights = [f32(w / total) for w in weights]
        taps.append((first, weights))
    return taps


def aten_resample_last_axis(x, out_size):
    taps = aten_axis_weights(x.shape[-1], out_size)
    out = np.zeros(x.shape[:-1] + (out_size,), np.float32)
    for index in np.ndindex(x.shape[:-1]):
        for o, (first, weights) in enumerate(taps):
            acc = np.float32(0.0)
            for j, w in enumerate(weights):
                acc = np.float32(acc + np.float32(x[index + (first + j,)] * w))
            out[index + (o,)] = acc
    return out


def aten_resize(grid, h, w):
    """Width pass, then height pass, each skipped when its size is unchanged."""
    if grid.shape[2] != w:
        grid = aten_resample_last_axis(grid, w)
    if grid.shape[1] != h:
        grid = aten_resample_last_axis(grid.transpose(0, 2, 1), h).transpose(0, 2, 1)
    return grid


def position_grid():
    rng = np.random.default_rng(11)
    source = rng.standard_normal((2, 16, 16)).astype(np.float32)
    tensors = {"source": source}
    for h, w in [(45, 80), (38, 6), (14, 18), (15, 20), (16, 16), (7, 7), (1, 256), (16, 9), (20, 16)]:
        planes = [np.asarray(Image.fromarray(c, "F").resize((w, h), Image.BILINEAR)) for c in source]
        tensors[f"resized_{h}x{w}"] = np.stack(planes).reshape(2, h * w).T.copy()
        tensors[f"aten_{h}x{w}"] = np.ascontiguousarray(aten_resize(source, h, w)).reshape(2, h * w).T.copy()
    save_safetensors("position_grid.safetensors", tensors)


if __name__ == "__main__":
    cmyk_jpeg()
    jpeg_cases()
    palette_png()
    formats()
    resize_cases()
    position_grid()
