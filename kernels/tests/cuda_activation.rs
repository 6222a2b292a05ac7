//! The CUDA activation kernels against the CPU ones, on a real GPU, for f32, bf16 and f16 buffers.
//!
//! These tests need a GPU: where the CUDA driver reports none they print why and return (CI has
//! no GPU; it only compiles them, with `cargo check --features cuda`).

#![cfg(feature = "cuda")]

use std::sync::Arc;

use fovea_kernels::activation;
use fovea_kernels::cuda::cudarc::driver::{CudaContext, CudaStream, ValidAsZeroBits};
use fovea_kernels::cuda::half::{bf16, f16};
use fovea_kernels::cuda::{CudaKernelError, KernelFloat, activation as gpu};

/// A stream on GPU 0, or `None` (with the reason printed) where there is no GPU.
fn gpu_stream() -> Option<Arc<CudaStream>> {
    match CudaContext::device_count() {
        Ok(count) if count > 0 => Some(
            CudaContext::new(0)
                .expect("a context on GPU 0")
                .default_stream(),
        ),
        Ok(_) => {
            eprintln!("skipping: the CUDA driver sees no GPU");
            None
        }
        Err(error) => {
            eprintln!("skipping: the CUDA driver is unusable ({error})");
            None
        }
    }
}

fn inputs(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 2001) as f32 * 0.01 - 10.0)
        .collect()
}

/// The GPU's `silu_mul` of `gate_up` stored as `T`, read back as f32.
fn silu_mul_on_gpu<T: KernelFloat + ValidAsZeroBits + Copy>(
    stream: &Arc<CudaStream>,
    gate_up: &[f32],
    inter: usize,
    (from_f32, to_f32): (fn(f32) -> T, fn(T) -> f32),
) -> Vec<f32> {
    let input = stream
        .clone_htod(&gate_up.iter().map(|&x| from_f32(x)).collect::<Vec<T>>())
        .unwrap();
    let mut out = stream.alloc_zeros::<T>(gate_up.len() / 2).unwrap();
    gpu::silu_mul(stream, &input.as_view(), inter, &mut out.as_view_mut()).unwrap();
    stream
        .clone_dtoh(&out)
        .unwrap()
        .into_iter()
        .map(to_f32)
        .collect()
}

/// The GPU's `gelu_tanh` of f32 `input`.
fn gelu_tanh_on_gpu(stream: &Arc<CudaStream>, input: &[f32]) -> Vec<f32> {
    let device_input = stream.clone_htod(input).unwrap();
    let mut out = stream.alloc_zeros::<f32>(input.len()).unwrap();
    gpu::gelu_tanh(stream, &device_input.as_view(), &mut out.as_view_mut()).unwrap();
    stream.clone_dtoh(&out).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], relative: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= relative * w.abs().max(1.0),
            "{what}[{i}]: {g} vs CPU {w}"
        );
    }
}

/// The CPU kernel's `silu_mul` of `gate_up` rounded through `round` (as a 16-bit type stores it).
fn silu_mul_on_cpu(gate_up: &[f32], inter: usize, round: fn(f32) -> f32) -> Vec<f32> {
    let rounded: Vec<f32> = gate_up.iter().map(|&x| round(x)).collect();
    let mut out = vec![0f32; gate_up.len() / 2];
    activation::silu_mul(&rounded, inter, &mut out);
    out
}

#[test]
fn silu_mul_on_the_gpu_matches_the_cpu_kernel_in_every_dtype() {
    let Some(stream) = gpu_stream() else { return };
    let (rows, inter) = (37, 300);
    let gate_up = inputs(rows * 2 * inter);
    let f32_out = silu_mul_on_gpu(&stream, &gate_up, inter, (|x| x, |x| x));
    assert_close(
        &f32_out,
        &silu_mul_on_cpu(&gate_up, inter, |x| x),
        1e-5,
        "f32",
    );
    // The output is rounded to the 16-bit type too: bf16 keeps 8 bits, f16 11.
    let bf16_out = silu_mul_on_gpu(&stream, &gate_up, inter, (bf16::from_f32, bf16::to_f32));
    assert_close(
        &bf16_out,
        &silu_mul_on_cpu(&gate_up, inter, |x| bf16::from_f32(x).to_f32()),
        8e-3,
        "bf16",
    );
    let f16_out = silu_mul_on_gpu(&stream, &gate_up, inter, (f16::from_f32, f16::to_f32));
    assert_close(
        &f16_out,
        &silu_mul_on_cpu(&gate_up, inter, |x| f16::from_f32(x).to_f32()),
        1e-3,
        "f16",
    );
}

#[test]
fn gelu_tanh_on_the_gpu_matches_the_cpu_kernel_including_tails() {
    let Some(stream) = gpu_stream() else { return };
    // More elements than one grid covers, so the grid-stride loop runs.
    let input = inputs(65_535 * 256 + 1000);
    let mut want = vec![0f32; input.len()];
    activation::gelu_tanh(&input, &mut want);
    assert_close(&gelu_tanh_on_gpu(&stream, &input), &want, 1e-5, "f32");
}

#[test]
fn mismatched_buffers_are_an_error_not_a_launch() {
    let Some(stream) = gpu_stream() else { return };
    let input = stream.alloc_zeros::<f32>(10).unwrap();
    let mut out = stream.alloc_zeros::<f32>(4).unwrap();
    let error = gpu::silu_mul(&stream, &input.as_view(), 3, &mut out.as_view_mut()).unwrap_err();
    assert!(matches!(error, CudaKernelError::Shape(_)), "{error}");
    let error = gpu::gelu_tanh(&stream, &input.as_view(), &mut out.as_view_mut()).unwrap_err();
    assert!(matches!(error, CudaKernelError::Shape(_)), "{error}");
}
