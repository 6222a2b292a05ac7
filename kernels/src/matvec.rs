//! Skinny matrix products `Y = X · Wᵀ` for a few rows of `X` (decoding steps): a memory-bound
//! stream over `W` that reads every weight exactly once, split across threads by output rows.
//!
//! General GEMM libraries pack `W` into tiles first, which costs a second pass over memory when
//! `X` has one row; here each weight row is dotted with every input row straight from memory.

use rayon::prelude::*;

/// Rows of `X` up to which [`matmul_transposed`] beats a tiled GEMM.
pub const MAX_ROWS: usize = 8;

/// Output columns per parallel task: enough work to amortise scheduling, small enough to balance.
const COLUMNS_PER_TASK: usize = 256;

/// `out[i][j] = Σₖ x[i][k] · w[j][k]` with `x` `[rows, k]`, `w` `[n, k]`, `out` `[rows, n]`, all row-major.
///
/// # Panics
/// If the slice lengths do not match `rows`, `k` and `n`.
pub fn matmul_transposed(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), rows * k, "x is not [rows, k]");
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    assert_eq!(out.len(), rows * n, "out is not [rows, n]");
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let dot = best_dot();
    // Each task owns a band of columns; it writes them for every row into a local buffer.
    let bands: Vec<(usize, Vec<f32>)> = w
        .par_chunks(COLUMNS_PER_TASK * k)
        .enumerate()
        .map(|(band, w_band)| {
            let columns = w_band.len() / k;
            let mut local = vec![0f32; rows * columns];
            for (c, w_row) in w_band.chunks_exact(k).enumerate() {
                for (r, x_row) in x.chunks_exact(k).enumerate() {
                    local[r * columns + c] = dot(w_row, x_row);
                }
            }
            (band * COLUMNS_PER_TASK, local)
        })
        .collect();
    for (first_column, local) in bands {
        let columns = local.len() / rows.max(1);
        for r in 0..rows {
            out[r * n + first_column..r * n + first_column + columns]
                .copy_from_slice(&local[r * columns..(r + 1) * columns]);
        }
    }
}

type DotFn = fn(&[f32], &[f32]) -> f32;

/// The fastest dot product this processor supports.
fn best_dot() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return dot_avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return dot_avx2;
        }
    }
    dot_portable
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// AVX-512: four independent 16-lane accumulators hide the FMA latency.
#[cfg(target_arch = "x86_64")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    #[target_feature(enable = "avx512f")]
    fn inner(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let len = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): `i + 16 <= len` before each 16-float load from either slice.
        while i + 64 <= len {
            for (j, acc) in acc.iter_mut().enumerate() {
                let offset = i + 16 * j;
                let (x, y) = unsafe { (_mm512_loadu_ps(pa.add(offset)), _mm512_loadu_ps(pb.add(offset))) };
                *acc = _mm512_fmadd_ps(x, y, *acc);
            }
            i += 64;
        }
        while i + 16 <= len {
            let (x, y) = unsafe { (_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i))) };
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
        let total = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut sum = _mm512_reduce_add_ps(total);
        for k in i..len {
            sum += a[k] * b[k];
        }
        sum
    }
    // SAFETY: chosen by `best_dot` only after detecting AVX-512F.
    unsafe { inner(a, b) }
}

/// AVX2 + FMA: four independent 8-lane accumulators.
#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    #[target_feature(enable = "avx2,fma")]
    fn inner(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let len = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): `i + 8 <= len` before each 8-float load from either slice.
        while i + 32 <= len {
            for (j, acc) in acc.iter_mut().enumerate() {
                let offset = i + 8 * j;
                let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(offset)), _mm256_loadu_ps(pb.add(offset))) };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= len {
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let halves = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        let single = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
        let mut sum = _mm_cvtss_f32(single);
        for k in i..len {
            sum += a[k] * b[k];
        }
        sum
    }
    // SAFETY: chosen by `best_dot` only after detecting AVX2 and FMA.
    unsafe { inner(a, b) }
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
                out[r * n + j] = (0..k).map(|i| x[r * k + i] as f64 * w[j * k + i] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_product_for_odd_sizes_and_several_rows() {
        for (rows, k, n) in [(1, 768, 1000), (3, 77, 513), (8, 33, 257), (1, 5, 1)] {
            let x = values(rows * k, 1);
            let w = values(n * k, 2);
            let mut out = vec![f32::NAN; rows * n];
            matmul_transposed(&x, &w, rows, k, n, &mut out);
            for (got, expected) in out.iter().zip(naive(&x, &w, rows, k, n)) {
                assert!((got - expected).abs() < 1e-4, "{rows}x{k}x{n}: {got} vs {expected}");
            }
        }
    }

    #[test]
    fn every_dot_variant_agrees_with_the_portable_one() {
        let a = values(1000, 3);
        let b = values(1000, 4);
        let reference = dot_portable(&a, &b);
        assert!((best_dot()(&a, &b) - reference).abs() < 1e-4);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                assert!((dot_avx2(&a, &b) - reference).abs() < 1e-4);
                assert!((dot_avx2(&a[..13], &b[..13]) - dot_portable(&a[..13], &b[..13])).abs() < 1e-5);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert!((dot_avx512(&a, &b) - reference).abs() < 1e-4);
                assert!((dot_avx512(&a[..37], &b[..37]) - dot_portable(&a[..37], &b[..37])).abs() < 1e-5);
            }
        }
    }
}
