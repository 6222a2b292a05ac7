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
    stream_rows(x, w, rows, k, n, out, best_dot());
}

/// As [`matmul_transposed`] with bf16 weights (`w` holds their bit patterns): `x` is rounded to
/// bf16 and the products accumulate in f32, with AVX-512 BF16 dot-product instructions where the
/// processor has them. Half the bytes of f32 weights, so about twice the decoding speed.
///
/// # Panics
/// If the slice lengths do not match `rows`, `k` and `n`.
pub fn matmul_transposed_bf16(x: &[f32], w: &[u16], rows: usize, k: usize, n: usize, out: &mut [f32]) {
    let x_bf16: Vec<u16> = x.iter().map(|&v| bf16_bits(v)).collect();
    stream_rows(&x_bf16, w, rows, k, n, out, best_bf16_dot());
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

/// Each task owns a band of output columns and dots every weight row of it with every input row.
fn stream_rows<T: Sync>(x: &[T], w: &[T], rows: usize, k: usize, n: usize, out: &mut [f32], dot: fn(&[T], &[T]) -> f32) {
    assert_eq!(x.len(), rows * k, "x is not [rows, k]");
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    assert_eq!(out.len(), rows * n, "out is not [rows, n]");
    if k == 0 {
        out.fill(0.0);
        return;
    }
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

type Bf16DotFn = fn(&[u16], &[u16]) -> f32;

/// The fastest bf16 dot product this processor supports.
fn best_bf16_dot() -> Bf16DotFn {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512f") {
        return dot_bf16_avx512;
    }
    dot_bf16_portable
}

fn dot_bf16_portable(a: &[u16], b: &[u16]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| bf16_value(x) * bf16_value(y)).sum()
}

/// AVX-512 BF16: `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16 f32 lanes.
#[cfg(target_arch = "x86_64")]
fn dot_bf16_avx512(a: &[u16], b: &[u16]) -> f32 {
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn inner(a: &[u16], b: &[u16]) -> f32 {
        use std::arch::x86_64::*;
        let len = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY (all loads): `i + 32 <= len` before each 32-value (64-byte) load from either slice;
        // the transmutes reinterpret 512 bits of bf16 values as the bf16 vector type.
        while i + 64 <= len {
            for (j, acc) in acc.iter_mut().enumerate() {
                let offset = i + 32 * j;
                let (x, y) = unsafe {
                    (
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pa.add(offset).cast())),
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pb.add(offset).cast())),
                    )
                };
                *acc = _mm512_dpbf16_ps(*acc, x, y);
            }
            i += 64;
        }
        while i + 32 <= len {
            let (x, y) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pa.add(i).cast())),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(pb.add(i).cast())),
                )
            };
            acc[0] = _mm512_dpbf16_ps(acc[0], x, y);
            i += 32;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        for k in i..len {
            sum += bf16_value(a[k]) * bf16_value(b[k]);
        }
        sum
    }
    // SAFETY: chosen by `best_bf16_dot` only after detecting AVX-512F and AVX-512 BF16.
    unsafe { inner(a, b) }
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
    fn bf16_product_matches_the_product_of_rounded_values() {
        let (rows, k, n) = (2, 100, 300);
        let x = values(rows * k, 5);
        let w: Vec<u16> = values(n * k, 6).iter().map(|&v| bf16_bits(v)).collect();
        let x_rounded: Vec<f32> = x.iter().map(|&v| bf16_value(bf16_bits(v))).collect();
        let w_values: Vec<f32> = w.iter().map(|&b| bf16_value(b)).collect();
        let mut out = vec![f32::NAN; rows * n];
        matmul_transposed_bf16(&x, &w, rows, k, n, &mut out);
        for (got, expected) in out.iter().zip(naive(&x_rounded, &w_values, rows, k, n)) {
            assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            let (a, b) = (&w[..77], &w[100..177]);
            assert!((dot_bf16_avx512(a, b) - dot_bf16_portable(a, b)).abs() < 1e-5);
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0); // halfway: to even
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
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
