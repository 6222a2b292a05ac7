//! The bridge from candle CUDA tensors to `fovea_kernels::cuda` (feature `cuda`): a kernel reads
//! a tensor's device buffer in place and writes a fresh buffer that becomes the output tensor.
//!
//! Kernels are launched on the stream of the tensor's candle device, the stream every candle
//! operation on that device runs on, so they are ordered after the ops that produced their input
//! and before the ops that read their output without any extra synchronisation.

use std::sync::Arc;

use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Shape, Storage, Tensor};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use fovea_kernels::cuda::{CudaKernelError, KernelFloat};
use half::{bf16, f16};

use crate::error::{ModelError, Result};

/// A GPU kernel from one device buffer to another of the same element type.
pub trait ElementwiseKernel {
    /// Launches the kernel on `stream`, reading `input` and writing every element of `out`.
    fn launch<T: KernelFloat>(
        &self,
        stream: &Arc<CudaStream>,
        input: &CudaView<T>,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), CudaKernelError>;
}

/// Applies `kernel` to CUDA tensor `input` (f32, bf16 or f16) and returns its output, of
/// `out_shape` and `input`'s dtype, on the same device.
pub fn map_cuda(
    input: &Tensor,
    out_shape: impl Into<Shape>,
    kernel: &impl ElementwiseKernel,
) -> Result<Tensor> {
    let out_shape = out_shape.into();
    match input.dtype() {
        DType::F32 => map_typed::<f32>(input, out_shape, kernel),
        DType::BF16 => map_typed::<bf16>(input, out_shape, kernel),
        DType::F16 => map_typed::<f16>(input, out_shape, kernel),
        other => Err(ModelError::BadInput(format!(
            "the CUDA kernels take f32, bf16 or f16 tensors, not {other:?}"
        ))),
    }
}

fn map_typed<T: KernelFloat + CudaDType>(
    input: &Tensor,
    out_shape: Shape,
    kernel: &impl ElementwiseKernel,
) -> Result<Tensor> {
    let input = input.contiguous()?;
    let (storage, layout) = input.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        return Err(ModelError::BadInput(
            "CUDA kernels need CUDA tensors".into(),
        ));
    };
    let start = layout.start_offset();
    let view = cuda
        .as_cuda_slice::<T>()?
        .slice(start..start + input.elem_count());
    let stream = cuda.device.cuda_stream();
    // SAFETY: the kernel writes every element of `out` before anything reads it.
    let mut out = unsafe { cuda.device.alloc::<T>(out_shape.elem_count()) }?;
    kernel
        .launch(&stream, &view, &mut out.as_view_mut())
        .map_err(|e| ModelError::Gpu(e.to_string()))?;
    let out = CudaStorage::wrap_cuda_slice(out, cuda.device.clone());
    Ok(Tensor::from_storage(
        Storage::Cuda(out),
        out_shape,
        BackpropOp::none(),
        false,
    ))
}
