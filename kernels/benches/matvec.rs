//! Bandwidth of the decoding matvec against the memory floor: `cargo bench -p fovea-kernels`.
//!
//! Streams the bench checkpoint's `lm_head` shape (100352 × 768 f32, 308 MB) and one of its MLP
//! weights, and prints the achieved GB/s; decode speed is bounded by this number.

use std::time::Instant;

use fovea_kernels::matvec::{bf16_bits, matmul_transposed, matmul_transposed_bf16};

fn measure(name: &str, rows: usize, k: usize, n: usize) {
    let w: Vec<f32> = (0..n * k).map(|i| (i % 97) as f32 * 1e-3).collect();
    let x: Vec<f32> = (0..rows * k).map(|i| (i % 89) as f32 * 1e-3).collect();
    let mut out = vec![0f32; rows * n];
    matmul_transposed(&x, &w, rows, k, n, &mut out);
    let repeats = 20;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        matmul_transposed(&x, &w, rows, k, n, &mut out);
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[repeats / 2];
    let bytes = (n * k * 4) as f64;
    println!(
        "{name:<28} rows={rows} k={k} n={n}: median {:.2} ms, {:.1} GB/s of weights",
        median * 1e3,
        bytes / median / 1e9
    );
}

/// The same stream with bf16 weights (half the bytes).
fn measure_bf16(name: &str, rows: usize, k: usize, n: usize) {
    let w: Vec<u16> = (0..n * k).map(|i| bf16_bits((i % 97) as f32 * 1e-3)).collect();
    let x: Vec<f32> = (0..rows * k).map(|i| (i % 89) as f32 * 1e-3).collect();
    let mut out = vec![0f32; rows * n];
    matmul_transposed_bf16(&x, &w, rows, k, n, &mut out);
    let repeats = 20;
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            matmul_transposed_bf16(&x, &w, rows, k, n, &mut out);
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[repeats / 2];
    println!(
        "{name:<28} rows={rows} k={k} n={n}: median {:.2} ms, {:.1} GB/s of weights",
        median * 1e3,
        (n * k * 2) as f64 / median / 1e9
    );
}

fn main() {
    measure("lm_head (bench preset)", 1, 768, 100_352);
    measure_bf16("lm_head, bf16 weights", 1, 768, 100_352);
    measure("gate_up_proj (bench preset)", 1, 768, 4096);
    measure("lm_head, 4 rows", 4, 768, 100_352);
}
