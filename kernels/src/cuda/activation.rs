//! The GPU versions of [`crate::activation`]: the gated SiLU over a fused gate|up projection and
//! the tanh-approximated GELU, on f32, bf16 or f16 device buffers (arithmetic in f32).

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{CudaKernelError, KernelFloat, module_cache};

/// `cuda/activation.cu` compiled by the build script.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/activation.ptx"));

/// Threads per block; the kernels loop grid-stride, so the grid is capped at `MAX_BLOCKS`.
const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 65_535;

/// `out[r][i] = silu(gate_up[r][i]) · gate_up[r][inter + i]` for `gate_up` `[rows, 2·inter]`
/// (gate first, as Phi-3's fused projection) and `out` `[rows, inter]`, launched on `stream`.
pub fn silu_mul<T: KernelFloat>(
    stream: &Arc<CudaStream>,
    gate_up: &CudaView<T>,
    inter: usize,
    out: &mut CudaViewMut<T>,
) -> Result<(), CudaKernelError> {
    if inter == 0 || !gate_up.len().is_multiple_of(2 * inter) || out.len() != gate_up.len() / 2 {
        return Err(CudaKernelError::Shape(format!(
            "silu_mul: gate_up has {} elements and out {}, which are not [rows, 2 * {inter}] and [rows, {inter}]",
            gate_up.len(),
            out.len()
        )));
    }
    if out.is_empty() {
        return Ok(());
    }
    let function = module_cache::function(
        stream.context(),
        "activation",
        PTX,
        &format!("silu_mul_{}", T::SUFFIX),
    )?;
    let elements = out.len();
    let (rows, inter) = ((gate_up.len() / (2 * inter)) as u64, inter as u64);
    let mut launch = stream.launch_builder(&function);
    launch.arg(gate_up).arg(out).arg(&rows).arg(&inter);
    // SAFETY: the arguments match the kernel's signature (const T*, T*, u64, u64) and the
    // buffers hold rows·2·inter and rows·inter elements, checked above.
    unsafe { launch.launch(grid_for(elements)) }?;
    Ok(())
}

/// `out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, PyTorch's `gelu(approximate="tanh")`,
/// launched on `stream`.
pub fn gelu_tanh<T: KernelFloat>(
    stream: &Arc<CudaStream>,
    input: &CudaView<T>,
    out: &mut CudaViewMut<T>,
) -> Result<(), CudaKernelError> {
    if input.len() != out.len() {
        return Err(CudaKernelError::Shape(format!(
            "gelu_tanh: input has {} elements and out {}",
            input.len(),
            out.len()
        )));
    }
    if out.is_empty() {
        return Ok(());
    }
    let function = module_cache::function(
        stream.context(),
        "activation",
        PTX,
        &format!("gelu_tanh_{}", T::SUFFIX),
    )?;
    let len = input.len() as u64;
    let mut launch = stream.launch_builder(&function);
    launch.arg(input).arg(out).arg(&len);
    // SAFETY: the arguments match the kernel's signature (const T*, T*, u64) and both buffers
    // hold `len` elements, checked above.
    unsafe { launch.launch(grid_for(len as usize)) }?;
    Ok(())
}

/// One thread per element, up to `MAX_BLOCKS` blocks (the kernels stride over the rest).
fn grid_for(elements: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            elements.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
