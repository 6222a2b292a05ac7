//! The GPU kernels (feature `cuda`): CUDA C sources in `kernels/cuda/`, compiled to PTX by the
//! build script, loaded once per CUDA context and launched through cudarc.
//!
//! Like the CPU kernels they know nothing of tensors: callers hand in the stream to launch on and
//! device buffers, and get an error (never a panic) when the buffers do not fit or the driver fails.

pub mod activation;
mod module_cache;

pub use cudarc;
/// The crate of the 16-bit element types the kernels take.
pub use half;

use cudarc::driver::DeviceRepr;

/// Why a GPU kernel could not run.
#[derive(Debug, thiserror::Error)]
pub enum CudaKernelError {
    /// The buffers handed in do not have the sizes the kernel's arguments imply.
    #[error("CUDA kernel arguments do not fit: {0}")]
    Shape(String),
    /// The driver refused to load the module or to launch the kernel.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

/// An element type the kernels are instantiated for: `f32`, `bf16` and `f16` (they compute in f32).
pub trait KernelFloat: DeviceRepr {
    /// The suffix of the kernels for this type in the PTX (`silu_mul_bf16`, ...).
    const SUFFIX: &'static str;
}

impl KernelFloat for f32 {
    const SUFFIX: &'static str = "f32";
}

impl KernelFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

impl KernelFloat for half::f16 {
    const SUFFIX: &'static str = "f16";
}
