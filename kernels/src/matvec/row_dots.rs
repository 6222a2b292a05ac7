//! One dot product per output element: every weight row of a band is dotted with every row of
//! `X` straight from memory. The kernel for processors without AVX-512 (and the benchmark's
//! baseline); it streams each weight once too, but reloads `X` for every weight row.

use super::bf16_value;
use super::column_bands::ColumnBand;

/// A dot product of two equally long slices.
pub(super) type DotFn<T> = fn(&[T], &[T]) -> f32;

/// Fills `band` with `dot(w[j], x[r])` for its columns `j` and every row `r`.
pub(super) fn fill_band<T>(
    x: &[T],
    w: &[T],
    rows: usize,
    k: usize,
    band: &mut ColumnBand<'_>,
    dot: DotFn<T>,
) {
    for (c, j) in band.columns().enumerate() {
        let w_row = &w[j * k..(j + 1) * k];
        for r in 0..rows {
            band.row(r)[c] = dot(w_row, &x[r * k..(r + 1) * k]);
        }
    }
}

/// The fastest f32 dot product this processor supports.
pub(super) fn best_dot() -> DotFn<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return dot_avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return dot_avx2;
        }
    }
    dot_portable
}

/// The fastest bf16 dot product this processor supports.
pub(super) fn best_bf16_dot() -> DotFn<u16> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        return dot_bf16_avx512;
    }
    dot_bf16_portable
}

fn dot_bf16_portable(a: &[u16], b: &[u16]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| bf16_value(x) * bf16_value(y))
        .sum()
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
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            pa.add(offset).cast(),
                        )),
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            pb.add(offset).cast(),
                        )),
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
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_ps(pa.add(offset)),
                        _mm512_loadu_ps(pb.add(offset)),
                    )
                };
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
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(offset)),
                        _mm256_loadu_ps(pb.add(offset)),
                    )
                };
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
        let halves = _mm_add_ps(
            _mm256_castps256_ps128(total),
            _mm256_extractf128_ps(total, 1),
        );
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
    use crate::matvec::bf16_bits;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::test_values(len, seed, 1.0)
    }

    #[test]
    fn every_dot_variant_agrees_with_the_portable_one() {
        let a = values(1000, 3);
        let b = values(1000, 4);
        let reference = dot_portable(&a, &b);
        assert!((best_dot()(&a, &b) - reference).abs() < 1e-4);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert!((dot_avx2(&a, &b) - reference).abs() < 1e-4);
                assert!(
                    (dot_avx2(&a[..13], &b[..13]) - dot_portable(&a[..13], &b[..13])).abs() < 1e-5
                );
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert!((dot_avx512(&a, &b) - reference).abs() < 1e-4);
                assert!(
                    (dot_avx512(&a[..37], &b[..37]) - dot_portable(&a[..37], &b[..37])).abs()
                        < 1e-5
                );
            }
        }
    }

    #[test]
    fn every_bf16_dot_variant_agrees_with_the_portable_one() {
        let a: Vec<u16> = values(1000, 5).iter().map(|&v| bf16_bits(v)).collect();
        let b: Vec<u16> = values(1000, 6).iter().map(|&v| bf16_bits(v)).collect();
        for len in [77, 1000] {
            let reference = dot_bf16_portable(&a[..len], &b[..len]);
            assert!((best_bf16_dot()(&a[..len], &b[..len]) - reference).abs() < 1e-4);
        }
    }
}
