//! Compute kernels that the generic tensor library does not do well enough for serving.
//!
//! The CPU kernels pick the widest SIMD the processor has (AVX-512, AVX2+FMA, or portable code) at
//! run time, so one binary runs everywhere. Kernels work on plain slices: they know nothing of
//! tensors, models or scheduling.

pub mod activation;
pub mod attention;
pub mod exp;
pub mod matvec;
