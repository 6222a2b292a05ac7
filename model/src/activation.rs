//! The fused activations the network uses — the decoder's gated SiLU straight from the fused
//! `gate_up` projection and the encoder's tanh GELU — on the device their input lives on: the
//! slice kernels of `fovea_kernels::activation` on the CPU and, with feature `cuda`, their CUDA
//! versions on the GPU (candle has no fused equivalent of either).

use candle_core::{Device, Tensor};
use fovea_kernels::activation;

use crate::cpu::map_f32;
use crate::error::{ModelError, Result};

/// `silu(gate) · up` for `gate_up` `[rows, 2·inter]` (gate first), giving `[rows, inter]`.
pub fn silu_mul(gate_up: &Tensor, inter: usize) -> Result<Tensor> {
    let rows = gate_up.dim(0)?;
    if gate_up.dims() != [rows, 2 * inter] {
        return Err(ModelError::BadInput(format!(
            "gate_up has shape {:?}, not [rows, 2 * {inter}]",
            gate_up.dims()
        )));
    }
    match gate_up.device() {
        Device::Cpu => map_f32(gate_up, (rows, inter), |gate_up, out| {
            activation::silu_mul(gate_up, inter, out)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            crate::gpu::map_cuda(gate_up, (rows, inter), &gpu_kernels::SiluMul { inter })
        }
        other => Err(unsupported(other)),
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` element-wise, PyTorch's `gelu(approximate="tanh")`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => map_f32(x, x.shape(), activation::gelu_tanh),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => crate::gpu::map_cuda(x, x.shape(), &gpu_kernels::GeluTanh),
        other => Err(unsupported(other)),
    }
}

fn unsupported(device: &Device) -> ModelError {
    ModelError::BadInput(format!(
        "no fused activation kernels for {:?}",
        device.location()
    ))
}

/// The CUDA kernels of `fovea_kernels::cuda::activation` as [`crate::gpu::ElementwiseKernel`]s.
#[cfg(feature = "cuda")]
mod gpu_kernels {
    use std::sync::Arc;

    use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
    use fovea_kernels::cuda::{CudaKernelError, KernelFloat, activation};

    use crate::gpu::ElementwiseKernel;

    pub(super) struct SiluMul {
        pub(super) inter: usize,
    }

    impl ElementwiseKernel for SiluMul {
        fn launch<T: KernelFloat>(
            &self,
            stream: &Arc<CudaStream>,
            input: &CudaView<T>,
            out: &mut CudaViewMut<T>,
        ) -> Result<(), CudaKernelError> {
            activation::silu_mul(stream, input, self.inter, out)
        }
    }

    pub(super) struct GeluTanh;

    impl ElementwiseKernel for GeluTanh {
        fn launch<T: KernelFloat>(
            &self,
            stream: &Arc<CudaStream>,
            input: &CudaView<T>,
            out: &mut CudaViewMut<T>,
        ) -> Result<(), CudaKernelError> {
            activation::gelu_tanh(stream, input, out)
        }
    }
}
