//! PIL's antialiased bilinear resize (`Image.resize(size, Image.BILINEAR)`), reproduced bit for bit.
//!
//! This is `ImagingResample` from Pillow's `libImaging/Resample.c` for 8-bit images: per axis a
//! triangle filter whose support widens with the downscale factor (`precompute_coeffs`, in f64),
//! coefficients normalized to sum 1 and then rounded to fixed point with 22 fractional bits
//! (`normalize_coeffs_8bpc`). The two passes are separable, and the first one's result is rounded
//! and clipped to u8 before the second, so their order matters by up to a level:
//! - Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by
//!   more than twice as many pixels as the width (`in_h - out_h > 2 * (in_w - out_w)`); the golden
//!   reference was made this way (its 97x611 JPEG goes to 96x608 vertically first) and this
//!   module does the same. The rule was established by probing Pillow 13.0.
//! - Otherwise, as in every earlier Pillow, the horizontal pass runs first, over only the source
//!   rows the vertical pass will read.
//!
//! A pass is skipped when its dimension does not change, and equal sizes return a copy.
//! Integer sums are exact, so the loops may be ordered for speed without changing a bit.

use super::rgb_image::RgbImage;

/// Fractional bits of the fixed-point coefficients (`32 - 8 - 2` in Pillow).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Added before the final shift, to round to nearest.
const ROUNDING_BIAS: i32 = 1 << (PRECISION_BITS - 1);
/// Bytes per RGB pixel.
const CHANNELS: usize = 3;

/// Resizes to `height` x `width` exactly as PIL's `Image.resize((width, height), Image.BILINEAR)`.
///
/// A zero target dimension gives an empty image of that size; an empty source gives black, as in PIL.
///
/// ```
/// use fovea_model::preprocess::{resize_bilinear, RgbImage};
/// let gray = RgbImage::from_raw(4, 2, vec![100; 4 * 2 * 3]).expect("4x2 RGB");
/// let resized = resize_bilinear(&gray, 3, 5);
/// assert_eq!((resized.height(), resized.width()), (3, 5));
/// assert!(resized.pixels().iter().all(|&v| v == 100));
/// ```
pub fn resize_bilinear(image: &RgbImage, height: usize, width: usize) -> RgbImage {
    let (src_h, src_w) = (image.height(), image.width());
    if src_h == 0 || src_w == 0 || height == 0 || width == 0 {
        return RgbImage::from_produced(width, height, vec![0; width * height * CHANNELS]);
    }
    let horizontal = AxisTaps::new(src_w, width);
    let vertical = AxisTaps::new(src_h, height);

    // Rows of the source the vertical pass reads (all of them when it is skipped).
    let first_row = vertical.spans.first().map_or(0, |&(start, _)| start);
    let end_row = vertical.spans.last().map_or(0, |&(start, len)| start + len);

    if vertical_pass_first(src_h, src_w, height, width) {
        let columns = resample_columns(image.pixels(), src_w * CHANNELS, &vertical, 0);
        let pixels = if width != src_w {
            resample_rows(&columns, src_w, &horizontal)
        } else {
            columns
        };
        return RgbImage::from_produced(width, height, pixels);
    }
    let (pixels, row_offset) = if width != src_w {
        let rows = &image.pixels()[first_row * src_w * CHANNELS..end_row * src_w * CHANNELS];
        (resample_rows(rows, src_w, &horizontal), first_row)
    } else {
        (image.pixels().to_vec(), 0)
    };
    let pixels = if height != src_h {
        resample_columns(&pixels, width * CHANNELS, &vertical, row_offset)
    } else {
        pixels
    };
    RgbImage::from_produced(width, height, pixels)
}

/// Pillow 13's choice of pass order: vertical first when the height loses more than twice as many
/// pixels as the width.
fn vertical_pass_first(src_h: usize, src_w: usize, height: usize, width: usize) -> bool {
    let (height_loss, width_loss) = (src_h as i64 - height as i64, src_w as i64 - width as i64);
    height_loss > 0 && height_loss > 2 * width_loss
}

/// One axis's filter taps in PIL's fixed point: for each output index, the first source index,
/// the number of source samples and their coefficients.
struct AxisTaps {
    /// `(first source index, number of taps)` per output index.
    spans: Vec<(usize, usize)>,
    /// `stride` coefficients per output index; only the first `number of taps` are used.
    coefficients: Vec<i32>,
    stride: usize,
}

impl AxisTaps {
    /// Pillow's `precompute_coeffs` for the bilinear filter (support 1) followed by
    /// `normalize_coeffs_8bpc`, for the full box `[0, in_size)`.
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle's support (1) times the filter scale
        let stride = support.ceil() as usize * 2 + 1;
        let inverse_filter_scale = 1.0 / filter_scale;

        let mut spans = Vec::with_capacity(out_size);
        let mut coefficients = vec![0; out_size * stride];
        let mut weights = vec![0.0f64; stride];
        for (out_index, fixed) in coefficients.chunks_exact_mut(stride).enumerate() {
            let center = (out_index as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero.
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let taps = usize::try_from(end - first).unwrap_or(0).min(stride);

            let mut total = 0.0;
            for (tap, weight) in weights[..taps].iter_mut().enumerate() {
                *weight =
                    triangle(((tap as i64 + first) as f64 - center + 0.5) * inverse_filter_scale);
                total += *weight;
            }
            for (weight, fixed) in weights[..taps].iter().zip(fixed.iter_mut()) {
                let normalized = if total != 0.0 {
                    weight / total
                } else {
                    *weight
                };
                *fixed = to_fixed_point(normalized);
            }
            spans.push((first as usize, taps));
        }
        Self {
            spans,
            coefficients,
            stride,
        }
    }

    /// First source index and coefficients of output index `out_index`.
    fn taps(&self, out_index: usize) -> (usize, &[i32]) {
        let (first, taps) = self.spans[out_index];
        let start = out_index * self.stride;
        (first, &self.coefficients[start..start + taps])
    }
}

/// Pillow's `bilinear_filter`.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Rounds half away from zero, truncating like C's `(int)` cast.
fn to_fixed_point(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    if scaled < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Pillow's `clip8`: from fixed point back to a byte, saturating (its lookup table spells out
/// exactly this clamp of `sum >> PRECISION_BITS`).
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `ImagingResampleHorizontal_8bpc`: every row of `rows` (`src_w` pixels wide) resampled
/// to `taps.spans.len()` pixels.
fn resample_rows(rows: &[u8], src_w: usize, taps: &AxisTaps) -> Vec<u8> {
    let out_row_len = taps.spans.len() * CHANNELS;
    let mut out = vec![0u8; rows.len() / (src_w * CHANNELS) * out_row_len];
    for (row, out_row) in rows
        .chunks_exact(src_w * CHANNELS)
        .zip(out.chunks_exact_mut(out_row_len))
    {
        for (out_x, out_pixel) in out_row.chunks_exact_mut(CHANNELS).enumerate() {
            let (first, coefficients) = taps.taps(out_x);
            let source = &row[first * CHANNELS..(first + coefficients.len()) * CHANNELS];
            let mut sums = [ROUNDING_BIAS; CHANNELS];
            for (pixel, &k) in source.chunks_exact(CHANNELS).zip(coefficients) {
                sums[0] += i32::from(pixel[0]) * k;
                sums[1] += i32::from(pixel[1]) * k;
                sums[2] += i32::from(pixel[2]) * k;
            }
            out_pixel.copy_from_slice(&sums.map(clip8));
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc`: the columns of `pixels` (rows of `row_len` bytes, the
/// first being source row `row_offset`) resampled to `taps.spans.len()` rows.
fn resample_columns(pixels: &[u8], row_len: usize, taps: &AxisTaps, row_offset: usize) -> Vec<u8> {
    let mut out = vec![0u8; taps.spans.len() * row_len];
    let mut sums = vec![0i32; row_len];
    for (out_y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (first, coefficients) = taps.taps(out_y);
        let first = first - row_offset;
        sums.fill(ROUNDING_BIAS);
        let source = &pixels[first * row_len..(first + coefficients.len()) * row_len];
        for (row, &k) in source.chunks_exact(row_len).zip(coefficients) {
            for (sum, &value) in sums.iter_mut().zip(row) {
                *sum += i32::from(value) * k;
            }
        }
        for (target, &sum) in out_row.iter_mut().zip(&sums) {
            *target = clip8(sum);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::decode_rgb;
    use crate::preprocess::test_support::{golden_images, read_safetensors};

    /// Largest per-sample difference and how many samples differ.
    fn compare(actual: &[u8], expected: &[u8]) -> (u8, usize) {
        assert_eq!(actual.len(), expected.len());
        let diffs = actual.iter().zip(expected).map(|(a, b)| a.abs_diff(*b));
        diffs.fold((0, 0), |(max, count), d| {
            (max.max(d), count + usize::from(d > 0))
        })
    }

    #[test]
    fn resize_matches_pil_on_every_golden_image() {
        for golden in golden_images() {
            let image = decode_rgb(&golden.bytes()).expect("golden image");
            let (height, width) = golden.resized_hw;
            let resized = resize_bilinear(&image, height, width);
            let (max_diff, differing) = compare(resized.pixels(), &golden.resized_u8());
            println!(
                "{}: max diff {max_diff}, {differing} samples differ",
                golden.file
            );
            assert!(
                max_diff <= 1,
                "{}: max diff {max_diff} ({differing} samples differ)",
                golden.file
            );
        }
    }

    #[test]
    fn resize_is_bit_exact_to_pil_for_one_axis_both_axes_and_either_pass_order() {
        let cases = read_safetensors("pil_resize_cases.safetensors");
        let (_, shape, pixels) = cases
            .iter()
            .find(|(name, ..)| name == "source")
            .expect("source");
        let source = RgbImage::from_raw(shape[1], shape[0], pixels.clone()).expect("source image");
        let mut checked = 0;
        for (name, shape, expected) in cases
            .iter()
            .filter(|(name, ..)| name.starts_with("resized_"))
        {
            let resized = resize_bilinear(&source, shape[0], shape[1]);
            assert_eq!(compare(resized.pixels(), expected), (0, 0), "{name}");
            checked += 1;
        }
        assert_eq!(checked, 9);
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        assert!(vertical_pass_first(611, 97, 608, 96)); // the golden JPEG: loses 3 rows, 1 column
        assert!(!vertical_pass_first(40, 40, 36, 38)); // exactly twice: horizontal first
        assert!(vertical_pass_first(40, 40, 35, 38));
        assert!(vertical_pass_first(17, 23, 3, 200)); // width grows
        assert!(!vertical_pass_first(30, 30, 40, 41)); // height grows
        assert!(!vertical_pass_first(780, 1400, 720, 1280));
    }

    #[test]
    fn same_size_returns_the_pixels_unchanged() {
        let pixels: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let image = RgbImage::from_raw(5, 4, pixels).expect("5x4 RGB");
        assert_eq!(resize_bilinear(&image, 4, 5), image);
    }

    #[test]
    fn empty_source_or_target_gives_black_or_empty_images() {
        let empty = RgbImage::from_raw(0, 3, Vec::new()).expect("0x3 image");
        let resized = resize_bilinear(&empty, 2, 2);
        assert_eq!(resized.pixels(), &[0; 12]);
        let image = RgbImage::from_raw(1, 1, vec![1, 2, 3]).expect("1x1 RGB");
        assert!(resize_bilinear(&image, 0, 5).pixels().is_empty());
    }

    #[test]
    fn downscale_weights_follow_the_widened_triangle() {
        // 4 -> 2: scale 2, support 2; output 0 reads inputs 0..3 with weights 3/7, 3/7, 1/7.
        let taps = AxisTaps::new(4, 2);
        let (first, coefficients) = taps.taps(0);
        assert_eq!(first, 0);
        let unit = f64::from(1u32 << PRECISION_BITS);
        let expected: Vec<i32> = [3.0 / 7.0, 3.0 / 7.0, 1.0 / 7.0]
            .iter()
            .map(|w| (w * unit + 0.5) as i32)
            .collect();
        assert_eq!(coefficients, expected.as_slice());
    }
}
