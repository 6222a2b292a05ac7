//! Matrix products `Y = X · Wᵀ` for the 1–512 rows of an engine step (decoding sequences plus
//! prompt chunks): a stream over `W` that reads every weight from memory exactly once per call,
//! split across threads by output columns, with f32 accumulation.
//!
//! General GEMM libraries pack `W` into tiles first, a second pass over memory that costs more
//! than the whole product when `X` has a few rows. With AVX-512 the register-blocked kernel
//! (`register_blocked`) reuses each loaded weight vector for 6 rows of `X` from registers, so the
//! product is bound by memory up to about 8–12 rows and by the multiply-add rate beyond; without
//! it, one dot product per output (`row_dots`).

mod column_bands;
#[cfg(target_arch = "x86_64")]
mod register_blocked;
mod row_dots;

use column_bands::for_each_column_band;

/// Rows of `X` up to which [`matmul_transposed`] beats a tiled GEMM (which packs `W` every call):
/// measured by `cargo bench -p fovea-kernels --bench matvec`, 1.1–1.8× in f32 and 2–6× with bf16
/// weights at 64–512 rows. An engine step of up to this many tokens streams its weights.
pub const MAX_ROWS: usize = 512;

/// `out[i][j] = Σₖ x[i][k] · w[j][k]` with `x` `[rows, k]`, `w` `[n, k]`, `out` `[rows, n]`, all
/// row-major: the register-blocked kernel where the processor has AVX-512, otherwise
/// [`matmul_transposed_row_dots`].
///
/// # Panics
/// If the slice lengths do not match `rows`, `k` and `n`.
pub fn matmul_transposed(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    check_shapes(x.len(), w.len(), out.len(), rows, k, n);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        for_each_column_band(rows, n, register_blocked::TILE_COLUMNS, out, |band| {
            // SAFETY: AVX-512F was detected just above.
            unsafe { register_blocked::fill_band_f32(x, w, rows, k, band) }
        });
        return;
    }
    matmul_transposed_row_dots(x, w, rows, k, n, out);
}

/// As [`matmul_transposed`] with bf16 weights (`w` holds their bit patterns): `x` is rounded to
/// bf16 and the products accumulate in f32, with AVX-512 BF16 dot-product instructions where the
/// processor has them. Half the bytes of f32 weights, so about twice the decoding speed.
///
/// # Panics
/// If the slice lengths do not match `rows`, `k` and `n`.
pub fn matmul_transposed_bf16(
    x: &[f32],
    w: &[u16],
    rows: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    check_shapes(x.len(), w.len(), out.len(), rows, k, n);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
    {
        let x_bf16 = to_bf16(x);
        for_each_column_band(rows, n, register_blocked::TILE_COLUMNS, out, |band| {
            // SAFETY: AVX-512F, AVX-512BW and AVX-512 BF16 were detected just above.
            unsafe { register_blocked::fill_band_bf16(&x_bf16, w, rows, k, band) }
        });
        return;
    }
    matmul_transposed_bf16_row_dots(x, w, rows, k, n, out);
}

/// The same product as [`matmul_transposed`] with one dot product per output (AVX-512, AVX2+FMA
/// or portable): what processors without AVX-512 run, and the baseline the benchmark compares
/// the register-blocked kernel with (it was the only kernel up to 8 rows before).
///
/// # Panics
/// If the slice lengths do not match `rows`, `k` and `n`.
pub fn matmul_transposed_row_dots(
    x: &[f32],
    w: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    check_shapes(x.len(), w.len(), out.len(), rows, k, n);
    let dot = row_dots::best_dot();
    for_each_column_band(rows, n, 1, out, |band| {
        row_dots::fill_band(x, w, rows, k, band, dot)
    });
}

/// The same product as [`matmul_transposed_bf16`] with one dot product per output (AVX-512 BF16
/// or portable); see [`matmul_transposed_row_dots`].
///
/// # Panics
/// If the slice lengths do not match `rows`, `k` and `n`.
pub fn matmul_transposed_bf16_row_dots(
    x: &[f32],
    w: &[u16],
    rows: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    check_shapes(x.len(), w.len(), out.len(), rows, k, n);
    let x_bf16 = to_bf16(x);
    let dot = row_dots::best_bf16_dot();
    for_each_column_band(rows, n, 1, out, |band| {
        row_dots::fill_band(&x_bf16, w, rows, k, band, dot)
    });
}

fn check_shapes(x_len: usize, w_len: usize, out_len: usize, rows: usize, k: usize, n: usize) {
    assert_eq!(x_len, rows * k, "x is not [rows, k]");
    assert_eq!(w_len, n * k, "w is not [n, k]");
    assert_eq!(out_len, rows * n, "out is not [rows, n]");
}

/// `values` rounded to bf16 (the inputs of the bf16 kernels).
fn to_bf16(values: &[f32]) -> Vec<u16> {
    values.iter().map(|&v| bf16_bits(v)).collect()
}

/// Round-to-nearest-even f32 → bf16 bits (NaN stays NaN).
pub fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    ((bits + rounding) >> 16) as u16
}

/// The f32 value of bf16 bits.
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::test_values(len, seed, 1.0)
    }

    fn naive(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    /// `(k, n)` pairs with `k` off the 16- and 32-value vector widths and `n` below, at and off the
    /// 4-column tile, and one layer wide enough for several column bands.
    const AWKWARD_SHAPES: [(usize, usize); 8] = [
        (1, 1),
        (5, 3),
        (16, 4),
        (17, 5),
        (32, 7),
        (33, 8),
        (100, 257),
        (775, 6),
    ];

    fn assert_close(got: &[f32], expected: &[f32], what: &str) {
        for (j, (got, expected)) in got.iter().zip(expected).enumerate() {
            assert!(
                (got - expected).abs() < 1e-4,
                "{what}, output {j}: {got} vs {expected}"
            );
        }
    }

    /// Every row count of a decoding step over up to 64 sequences, then a few up to `MAX_ROWS`.
    fn row_counts() -> impl Iterator<Item = usize> {
        (1..=64).chain([65, 127, 128, 257, MAX_ROWS - 1, MAX_ROWS])
    }

    #[test]
    fn f32_kernels_match_the_naive_product_for_1_to_512_rows() {
        for (k, n) in AWKWARD_SHAPES {
            let w = values(n * k, 2);
            for rows in row_counts() {
                let x = values(rows * k, rows as u32);
                let expected = naive(&x, &w, rows, k, n);
                let mut out = vec![f32::NAN; rows * n];
                matmul_transposed(&x, &w, rows, k, n, &mut out);
                assert_close(&out, &expected, &format!("best kernel, {rows}x{k}x{n}"));
                let mut out = vec![f32::NAN; rows * n];
                matmul_transposed_row_dots(&x, &w, rows, k, n, &mut out);
                assert_close(&out, &expected, &format!("row dots, {rows}x{k}x{n}"));
            }
        }
    }

    #[test]
    fn bf16_kernels_match_the_product_of_rounded_values_for_1_to_512_rows() {
        let rounded = |values: &[f32]| -> Vec<f32> {
            values.iter().map(|&v| bf16_value(bf16_bits(v))).collect()
        };
        for (k, n) in AWKWARD_SHAPES {
            let w = to_bf16(&values(n * k, 6));
            let w_values: Vec<f32> = w.iter().map(|&b| bf16_value(b)).collect();
            for rows in row_counts() {
                let x = values(rows * k, 100 + rows as u32);
                let expected = naive(&rounded(&x), &w_values, rows, k, n);
                let mut out = vec![f32::NAN; rows * n];
                matmul_transposed_bf16(&x, &w, rows, k, n, &mut out);
                assert_close(
                    &out,
                    &expected,
                    &format!("best bf16 kernel, {rows}x{k}x{n}"),
                );
                let mut out = vec![f32::NAN; rows * n];
                matmul_transposed_bf16_row_dots(&x, &w, rows, k, n, &mut out);
                assert_close(&out, &expected, &format!("bf16 row dots, {rows}x{k}x{n}"));
            }
        }
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        let mut out = vec![f32::NAN; 3 * 5];
        matmul_transposed(&[], &[], 3, 0, 5, &mut out);
        assert_eq!(out, vec![0.0; 15]);
        let mut out = vec![f32::NAN; 3 * 5];
        matmul_transposed_row_dots(&[], &[], 3, 0, 5, &mut out);
        assert_eq!(out, vec![0.0; 15]);
        let mut out = vec![f32::NAN; 3 * 5];
        matmul_transposed_bf16(&[], &[], 3, 0, 5, &mut out);
        assert_eq!(out, vec![0.0; 15]);
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0); // halfway: to even
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }
}
