//! The bridge from candle tensors to `fovea_kernels`' slice kernels: read a CPU tensor's f32
//! values in place, and run a kernel that produces a new f32 tensor.

use candle_core::{DType, Device, Shape, Storage, Tensor};

use crate::error::{ModelError, Result};

/// Runs `f` on the f32 values of CPU tensor `t`, from its first element to the end of its storage
/// (callers that need a packed view make `t` contiguous first).
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(ModelError::BadInput("CPU kernels need CPU tensors".into()));
    };
    Ok(f(&cpu.as_slice::<f32>()?[layout.start_offset()..]))
}

/// Applies `kernel(input, output)` to `input` (converted to packed f32) and returns the output,
/// of `out_shape`, converted back to `input`'s dtype.
pub fn map_f32(
    input: &Tensor,
    out_shape: impl Into<Shape>,
    kernel: impl FnOnce(&[f32], &mut [f32]),
) -> Result<Tensor> {
    let out_shape = out_shape.into();
    let packed = input.to_dtype(DType::F32)?.contiguous()?;
    let mut out = vec![0f32; out_shape.elem_count()];
    with_f32_slice(&packed, |values| {
        kernel(&values[..packed.elem_count()], &mut out)
    })?;
    Ok(Tensor::from_vec(out, out_shape, &Device::Cpu)?.to_dtype(input.dtype())?)
}
