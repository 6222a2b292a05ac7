//! `eˣ` over a slice, fast enough that softmax never dominates attention: the Cephes single-
//! precision polynomial (about 1 ulp), vectorised with AVX-512 where available.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split into a part exact in few bits and the remainder, for an exact range reduction.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this the result is under f32's normal range; clamping keeps the exponent arithmetic valid.
const MIN_INPUT: f32 = -87.0;
const MAX_INPUT: f32 = 88.0;
const POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.0e-1,
];

/// Replaces each `x` of `values` by `e^(x − shift)` and returns their sum.
pub fn exp_shifted_in_place(values: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected just above.
        return unsafe { exp_shifted_avx512(values, shift) };
    }
    values.iter_mut().fold(0.0, |sum, x| {
        *x = exp(*x - shift);
        sum + *x
    })
}

/// Scalar `eˣ` with the same polynomial as the vector path.
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(MIN_INPUT, MAX_INPUT);
    let n = (x * LOG2_E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = POLY.iter().fold(0.0, |acc, c| acc * r + c);
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_shifted_avx512(values: &mut [f32], shift: f32) -> f32 {
    use std::arch::x86_64::*;
    let len = values.len();
    let ptr = values.as_mut_ptr();
    let shift_v = _mm512_set1_ps(shift);
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i + 16 <= len {
        // SAFETY: `i + 16 <= len`.
        let x = unsafe { _mm512_loadu_ps(ptr.add(i)) };
        let x = _mm512_min_ps(
            _mm512_max_ps(_mm512_sub_ps(x, shift_v), _mm512_set1_ps(MIN_INPUT)),
            _mm512_set1_ps(MAX_INPUT),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_setzero_ps();
        for c in POLY {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(
            _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
            _mm512_set1_ps(1.0),
        );
        let e = _mm512_scalef_ps(y, n);
        // SAFETY: as for the load.
        unsafe { _mm512_storeu_ps(ptr.add(i), e) };
        sum = _mm512_add_ps(sum, e);
        i += 16;
    }
    let mut total = _mm512_reduce_add_ps(sum);
    for x in &mut values[i..] {
        *x = exp(*x - shift);
        total += *x;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std_on_the_softmax_range() {
        for i in 0..=20_000 {
            let x = -87.0 + i as f32 * 87.0 / 20_000.0;
            let (got, expected) = (exp(x), x.exp());
            assert!(
                (got - expected).abs() <= 2.5e-7 * expected,
                "exp({x}) = {got}, std {expected}"
            );
        }
    }

    #[test]
    fn vector_path_matches_scalar_path_and_sums() {
        let mut values: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 5.0).collect();
        let expected: Vec<f32> = values.iter().map(|x| exp(x - 2.0)).collect();
        let sum = exp_shifted_in_place(&mut values, 2.0);
        for (got, want) in values.iter().zip(&expected) {
            assert!(
                (got - want).abs() <= 1e-7 * want.max(1e-30),
                "{got} vs {want}"
            );
        }
        assert!((sum - expected.iter().sum::<f32>()).abs() < 1e-5);
    }

    #[test]
    fn far_below_the_maximum_gives_zero_or_tiny_not_garbage() {
        let mut values = [-1.0e30, -200.0, 0.0];
        exp_shifted_in_place(&mut values, 0.0);
        assert!(values[0] >= 0.0 && values[0] < 1e-37);
        assert!(values[1] >= 0.0 && values[1] < 1e-37);
        assert_eq!(values[2], 1.0);
    }
}
