//! Resizing SigLIP-2's learned position-embedding grid to an image's patch grid.
//!
//! Reproduces PyTorch's CPU kernel for `F.interpolate(x, size, mode="bilinear",
//! align_corners=False, antialias=True)` on float32 (aten `_upsample_bilinear2d_aa`, the generic
//! separable path of `UpSampleKernel.cpp`), which was ported from PIL: per axis a triangle filter
//! whose support is `max(scale, 1)` with `scale = in / out` in f32, weights normalized to sum 1.
//! The weight arithmetic follows the kernel's mixed float/double promotions term by term (centers
//! and `1 / scale` computed in f64 and stored as f32, the filter argument evaluated in f64, weights
//! and their sum in f32). The width pass runs first, then the height pass; each is skipped when its
//! size does not change. Each output is `t0·w0 + t1·w1 + ...` accumulated in f32 in tap order,
//! without fused multiply-adds (the reference may be compiled with FMA contraction, which can move
//! the last bit).
//!
//! What was verified (torch itself was not available): identity, hand-computed weights, bit-exact
//! agreement with a float32 NumPy transcription of the aten kernel, and agreement within 3e-6 with
//! PIL's float-image bilinear resize (the same filter computed in f64, an independent
//! implementation) on a 16x16 grid resized to the golden grids and others. PyTorch's CUDA kernel
//! computes its weights differently; this is the CPU one.

/// Resizes a `(channels, src_h, src_w)` grid to `dst_h` x `dst_w` and returns it as
/// `(dst_h * dst_w, channels)`: one row per patch, raster order, as SigLIP-2 NaFlex's
/// `reshape(D, h * w).T`.
///
/// A zero source dimension gives zeros; a zero destination dimension gives an empty vector.
///
/// # Panics
///
/// If `src.len() != channels * src_h * src_w` (a caller bug: the grid comes from the checkpoint).
///
/// ```
/// use fovea_model::preprocess::resize_position_grid;
/// // One channel, 1x2 -> 1x4: plain bilinear when upsampling.
/// let resized = resize_position_grid(&[0.0, 1.0], 1, 1, 2, 1, 4);
/// assert_eq!(resized, vec![0.0, 0.25, 0.75, 1.0]);
/// ```
pub fn resize_position_grid(
    src: &[f32],
    channels: usize,
    src_h: usize,
    src_w: usize,
    dst_h: usize,
    dst_w: usize,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        channels * src_h * src_w,
        "position grid of {} values is not {channels} x {src_h} x {src_w}",
        src.len()
    );
    if src_h == 0 || src_w == 0 || dst_h == 0 || dst_w == 0 {
        return vec![0.0; dst_h * dst_w * channels];
    }
    // Work position-major, (h, w, channels): both passes then add contiguous channel vectors, and
    // the result is already one row per position. Each value's sum is unchanged by the layout.
    let plane = src_h * src_w;
    let mut grid = vec![0.0f32; plane * channels];
    for (channel, values) in src.chunks_exact(plane).enumerate() {
        for (position, &value) in values.iter().enumerate() {
            grid[position * channels + channel] = value;
        }
    }
    if dst_w != src_w {
        grid = resample_axis(&grid, src_w, channels, &AxisWeights::new(src_w, dst_w));
    }
    if dst_h != src_h {
        grid = resample_axis(
            &grid,
            src_h,
            dst_w * channels,
            &AxisWeights::new(src_h, dst_h),
        );
    }
    grid
}

/// One axis's antialiased triangle-filter weights, as `_compute_index_ranges_weights` makes them.
struct AxisWeights {
    /// `(first source index, number of taps)` per output index.
    spans: Vec<(usize, usize)>,
    /// `stride` weights per output index; only the first `number of taps` are used.
    weights: Vec<f32>,
    stride: usize,
}

impl AxisWeights {
    /// Weights for resampling `in_size` samples to `out_size` (nonzero).
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f32 / out_size as f32;
        // support = (interp_size * 0.5) * scale, interp_size = 2, stored as f32.
        let support: f32 = if scale >= 1.0 { scale } else { 1.0 };
        let stride = support.ceil() as usize * 2 + 1;
        let inverse_scale: f32 = if scale >= 1.0 {
            (1.0 / f64::from(scale)) as f32
        } else {
            1.0
        };

        let mut spans = Vec::with_capacity(out_size);
        let mut weights = vec![0.0f32; out_size * stride];
        for (out_index, row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (f64::from(scale) * (out_index as f64 + 0.5)) as f32;
            let first = ((f64::from(center - support) + 0.5) as i64).max(0);
            let end = ((f64::from(center + support) + 0.5) as i64).min(in_size as i64);
            let taps = usize::try_from(end - first).unwrap_or(0).min(stride);

            let mut total = 0.0f32;
            for (tap, weight) in row[..taps].iter_mut().enumerate() {
                let offset = (tap as i64 + first) as f32 - center;
                *weight = triangle(((f64::from(offset) + 0.5) * f64::from(inverse_scale)) as f32);
                total += *weight;
            }
            if total != 0.0 {
                row[..taps].iter_mut().for_each(|weight| *weight /= total);
            }
            spans.push((first as usize, taps));
        }
        Self {
            spans,
            weights,
            stride,
        }
    }

    /// First source index and weights of output index `out_index`.
    fn taps(&self, out_index: usize) -> (usize, &[f32]) {
        let (first, taps) = self.spans[out_index];
        let start = out_index * self.stride;
        (first, &self.weights[start..start + taps])
    }
}

/// `HelperInterpLinear::aa_filter<float>`: `1 - |x|` computed in f64, returned as f32.
fn triangle(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        (1.0 - f64::from(x)) as f32
    } else {
        0.0
    }
}

/// One pass: `values` is `(outer, len, inner)` row-major and axis `len` is resampled to
/// `weights.spans.len()`, each output the tap-ordered f32 sum of `value * weight`. The width pass
/// is `(src_h, src_w, channels)`, the height pass `(1, src_h, dst_w * channels)`.
fn resample_axis(values: &[f32], len: usize, inner: usize, weights: &AxisWeights) -> Vec<f32> {
    let out_len = weights.spans.len();
    let outer = values.len() / (len * inner);
    let mut out = vec![0.0f32; outer * out_len * inner];
    for (source, target) in values
        .chunks_exact(len * inner)
        .zip(out.chunks_exact_mut(out_len * inner))
    {
        for (index, target) in target.chunks_exact_mut(inner).enumerate() {
            let (first, taps) = weights.taps(index);
            let rows = &source[first * inner..(first + taps.len()) * inner];
            for (row, &weight) in rows.chunks_exact(inner).zip(taps) {
                for (sum, &value) in target.iter_mut().zip(row) {
                    *sum += value * weight;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::test_support::read_safetensors;

    fn as_f32(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn equal_sizes_only_transpose_to_one_row_per_position() {
        let grid: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.5 - 3.0).collect();
        let resized = resize_position_grid(&grid, 2, 3, 4, 3, 4);
        for position in 0..12 {
            assert_eq!(resized[position * 2], grid[position]);
            assert_eq!(resized[position * 2 + 1], grid[12 + position]);
        }
    }

    #[test]
    fn downsampling_by_two_uses_the_widened_normalized_triangle() {
        // 4 -> 2: output 0 = (3a + 3b + c) / 7, output 1 = (b + 3c + 3d) / 7.
        let resized = resize_position_grid(&[7.0, 0.0, 14.0, 21.0], 1, 1, 4, 1, 2);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
        assert!(
            close(resized[0], 3.0 * 7.0 / 7.0 + 14.0 / 7.0),
            "{resized:?}"
        );
        assert!(
            close(resized[1], (14.0 * 3.0 + 21.0 * 3.0) / 7.0),
            "{resized:?}"
        );
    }

    #[test]
    fn height_pass_weights_match_the_width_pass() {
        let row = resize_position_grid(&[1.0, -2.0, 5.0, 0.5, 3.0], 1, 1, 5, 1, 3);
        let column = resize_position_grid(&[1.0, -2.0, 5.0, 0.5, 3.0], 1, 5, 1, 3, 1);
        assert_eq!(row, column);
    }

    /// `(name, (dst_h, dst_w), values)` of every `{prefix}_{h}x{w}` tensor in the fixture.
    fn fixture_grids(
        tensors: &[(String, Vec<usize>, Vec<u8>)],
        prefix: &str,
    ) -> Vec<(String, (usize, usize), Vec<f32>)> {
        tensors
            .iter()
            .filter_map(|(name, _, raw)| {
                let (h, w) = name.strip_prefix(prefix)?.split_once('x')?;
                Some((
                    name.clone(),
                    (h.parse().ok()?, w.parse().ok()?),
                    as_f32(raw),
                ))
            })
            .collect()
    }

    #[test]
    fn resized_grids_match_the_aten_transcription_bit_for_bit_and_pil_to_1e5() {
        let tensors = read_safetensors("position_grid.safetensors");
        let (_, shape, raw) = tensors
            .iter()
            .find(|(name, ..)| name == "source")
            .expect("source");
        let (channels, src_h, src_w) = (shape[0], shape[1], shape[2]);
        let source = as_f32(raw);
        let resize =
            |(h, w): (usize, usize)| resize_position_grid(&source, channels, src_h, src_w, h, w);

        let aten = fixture_grids(&tensors, "aten_");
        assert_eq!(aten.len(), 9);
        for (name, size, expected) in aten {
            let resized = resize(size);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&resized), bits(&expected), "{name}");
        }
        let pil = fixture_grids(&tensors, "resized_");
        assert_eq!(pil.len(), 9);
        for (name, size, expected) in pil {
            let resized = resize(size);
            let max_diff = resized
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!("{name}: max diff to PIL {max_diff}");
            assert!(max_diff < 1e-5, "{name}: max diff {max_diff}");
        }
    }

    #[test]
    fn empty_grids_give_zeros_or_nothing() {
        assert_eq!(resize_position_grid(&[], 3, 0, 16, 2, 2), vec![0.0; 12]);
        assert!(resize_position_grid(&[1.0], 1, 1, 1, 0, 4).is_empty());
    }

    #[test]
    #[should_panic(expected = "is not 2 x 3 x 3")]
    fn wrongly_sized_grid_is_a_caller_bug() {
        resize_position_grid(&[0.0; 17], 2, 3, 3, 4, 4);
    }
}
