//! Compute kernels that the generic tensor library does not do well enough for serving.
//!
//! The CPU kernels pick the widest SIMD the processor has (AVX-512, AVX2+FMA, or portable code) at
//! run time, so one binary runs everywhere. Kernels work on plain slices: they know nothing of
//! tensors, models or scheduling. With feature `cuda`, [`cuda`] holds the GPU versions of the
//! kernels candle has no CUDA equivalent for, on device buffers.

pub mod activation;
pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod exp;
pub mod matvec;
pub mod paged_attention;

/// Deterministic pseudo-random inputs for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32, amplitude: f32) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * amplitude
        })
        .collect()
}
