//! Decoding-step matmuls of the bench checkpoint, new kernel against the old path:
//! `cargo bench -p fovea-kernels --bench matvec`.
//!
//! For every weight a decoding step reads (bench preset: hidden 768, 12 query heads and 4 KV heads
//! of 64, MLP 2048, 100352-token vocabulary) and 1 to 512 rows (a step of 512 tokens), times
//! `matmul_transposed` (what `Linear::forward` runs up to `MAX_ROWS` rows) against what it ran
//! before: the row-dot kernel up to 8 rows, candle's GEMM above (the `gemm` crate called with
//! candle's arguments; bf16 weights widened to f32 first, as candle did). The two alternate call
//! by call in one run, so machine load hits both alike, each call on a weight copy that is not in
//! the cache. Prints the median time per call, the ratio, and the weights' effective read
//! bandwidth against the machine's ~28 GB/s; then the whole step (12 layers + `lm_head`) against
//! its memory floor.

use std::cell::Cell;
use std::time::{Duration, Instant};

use fovea_kernels::matvec::{
    bf16_bits, bf16_value, matmul_transposed, matmul_transposed_bf16,
    matmul_transposed_bf16_row_dots, matmul_transposed_row_dots,
};
use gemm::{Parallelism, gemm};

/// Read bandwidth of this machine measured by the streaming kernel (README, "The model alone").
const MACHINE_GB_PER_S: f64 = 28.3;

/// Rows up to which the old path streamed the weights (the old `MAX_ROWS`).
const OLD_STREAMING_ROWS: usize = 8;

const ROW_COUNTS: [usize; 9] = [1, 4, 8, 16, 32, 64, 128, 256, 512];

const DECODER_LAYERS: usize = 12;

/// Bytes of weight copies a measurement cycles through, four times the 32 MiB L3: each call
/// reads its weights from memory, as in a decoding step, not from the cache the previous call
/// filled.
const ROTATED_BYTES: usize = 128 << 20;

/// A weight of the decoding step: `[n, k]`, used `per_step` times.
struct Weight {
    name: &'static str,
    n: usize,
    k: usize,
    per_step: usize,
}

const WEIGHTS: [Weight; 5] = [
    Weight {
        name: "qkv_proj",
        n: 768 + 2 * 256,
        k: 768,
        per_step: DECODER_LAYERS,
    },
    Weight {
        name: "o_proj",
        n: 768,
        k: 768,
        per_step: DECODER_LAYERS,
    },
    Weight {
        name: "gate_up_proj",
        n: 2 * 2048,
        k: 768,
        per_step: DECODER_LAYERS,
    },
    Weight {
        name: "down_proj",
        n: 768,
        k: 2048,
        per_step: DECODER_LAYERS,
    },
    Weight {
        name: "lm_head",
        n: 100_352,
        k: 768,
        per_step: 1,
    },
];

#[derive(Clone, Copy, PartialEq)]
enum WeightType {
    F32,
    Bf16,
}

impl WeightType {
    fn bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::Bf16 => 2,
        }
    }
}

/// Median seconds per call of the new kernel and of the old path.
struct Timing {
    new: f64,
    old: f64,
}

fn main() {
    // `cargo bench -p fovea-kernels --bench matvec -- lm_head` measures only the weights whose
    // names contain one of the arguments (the step totals then cover only those).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let selected: Vec<&Weight> = WEIGHTS
        .iter()
        .filter(|w| filters.is_empty() || filters.iter().any(|f| w.name.contains(f.as_str())))
        .collect();
    for weight_type in [WeightType::F32, WeightType::Bf16] {
        let label = if weight_type == WeightType::F32 {
            "f32"
        } else {
            "bf16"
        };
        println!(
            "\n{label} weights: time per call, new kernel vs old path (row dots <= 8 rows, candle GEMM above)"
        );
        let timings: Vec<Vec<Timing>> = selected
            .iter()
            .map(|weight| measure_weight(weight, weight_type))
            .collect();
        let bytes = step_bytes(&selected, weight_type);
        let what = if selected.len() == WEIGHTS.len() {
            "decoding step (12 layers + lm_head"
        } else {
            "selected weights (per step"
        };
        println!("\n{label} {what}, {:.0} MB of weights):", bytes / 1e6);
        let floor = bytes / (MACHINE_GB_PER_S * 1e9);
        for (index, rows) in ROW_COUNTS.into_iter().enumerate() {
            let step = |time: fn(&Timing) -> f64| -> f64 {
                selected
                    .iter()
                    .zip(&timings)
                    .map(|(w, t)| w.per_step as f64 * time(&t[index]))
                    .sum()
            };
            let (new, old) = (step(|t| t.new), step(|t| t.old));
            println!(
                "  rows {rows:>2}: new {:7.1} ms, old {:7.1} ms, old/new {:5.2}x; memory floor {:.1} ms, new at {:3.0}% of the floor's speed",
                new * 1e3,
                old * 1e3,
                old / new,
                floor * 1e3,
                100.0 * floor / new
            );
        }
    }
}

fn step_bytes(weights: &[&Weight], weight_type: WeightType) -> f64 {
    weights
        .iter()
        .map(|w| (w.per_step * w.n * w.k * weight_type.bytes()) as f64)
        .sum()
}

fn measure_weight(weight: &Weight, weight_type: WeightType) -> Vec<Timing> {
    let Weight { name, n, k, .. } = *weight;
    let bytes = n * k * weight_type.bytes();
    let copies = ROTATED_BYTES.div_ceil(bytes).clamp(1, 64);
    let w: Vec<Vec<f32>> = (0..copies)
        .map(|copy| {
            (0..n * k)
                .map(|i| (((i + copy) % 97) as f32 - 48.0) * 1e-3)
                .collect()
        })
        .collect();
    let w_bf16: Vec<Vec<u16>> = match weight_type {
        WeightType::F32 => Vec::new(),
        WeightType::Bf16 => w
            .iter()
            .map(|w| w.iter().map(|&v| bf16_bits(v)).collect())
            .collect(),
    };
    ROW_COUNTS
        .into_iter()
        .map(|rows| {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i % 89) as f32 - 44.0) * 1e-3).collect();
            let mut out = vec![0f32; rows * n];
            let calls = Cell::new(0);
            let next_copy = || {
                calls.set(calls.get() + 1);
                calls.get() % copies
            };
            let timing = match weight_type {
                WeightType::F32 => alternate(
                    || matmul_transposed(&x, &w[next_copy()], rows, k, n, &mut out),
                    || old_path_f32(&x, &w[next_copy()], rows, k, n),
                ),
                WeightType::Bf16 => alternate(
                    || matmul_transposed_bf16(&x, &w_bf16[next_copy()], rows, k, n, &mut out),
                    || old_path_bf16(&x, &w_bf16[next_copy()], rows, k, n),
                ),
            };
            let old_name = if rows <= OLD_STREAMING_ROWS { "row dots" } else { "GEMM" };
            let gb_per_s = bytes as f64 / timing.new / 1e9;
            println!(
                "  {name:<13} {n:>6}x{k:<4} rows {rows:>2}: new {:8.3} ms ({gb_per_s:5.1} GB/s, {:3.0}% of {MACHINE_GB_PER_S}; {:5.1} GFLOP/s)  old ({old_name:<8}) {:8.3} ms  old/new {:5.2}x",
                timing.new * 1e3,
                100.0 * gb_per_s / MACHINE_GB_PER_S,
                2.0 * (rows * n * k) as f64 / timing.new / 1e9,
                timing.old * 1e3,
                timing.old / timing.new
            );
            timing
        })
        .collect()
}

/// Times `new` and `old` call by call (after one warm-up call each) for at least 5 pairs and
/// about half a second, and returns their medians.
fn alternate<A, B>(mut new: impl FnMut() -> A, mut old: impl FnMut() -> B) -> Timing {
    std::hint::black_box(new());
    std::hint::black_box(old());
    let started = Instant::now();
    let (mut new_times, mut old_times) = (Vec::new(), Vec::new());
    while new_times.len() < 5
        || (started.elapsed() < Duration::from_millis(500) && new_times.len() < 100)
    {
        new_times.push(seconds(&mut new));
        old_times.push(seconds(&mut old));
    }
    Timing {
        new: median(new_times),
        old: median(old_times),
    }
}

fn seconds<R>(f: &mut impl FnMut() -> R) -> f64 {
    let started = Instant::now();
    std::hint::black_box(f());
    started.elapsed().as_secs_f64()
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// What `Linear::forward` ran for f32 weights before: row dots up to 8 rows, else candle's GEMM.
fn old_path_f32(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    if rows <= OLD_STREAMING_ROWS {
        let mut out = vec![0f32; rows * n];
        matmul_transposed_row_dots(x, w, rows, k, n, &mut out);
        out
    } else {
        candle_gemm(x, w, rows, k, n)
    }
}

/// What `Linear::forward` ran for bf16 weights before: row dots up to 8 rows, else the weights
/// widened to f32 (`Tensor::to_dtype`, one thread) and candle's GEMM.
fn old_path_bf16(x: &[f32], w: &[u16], rows: usize, k: usize, n: usize) -> Vec<f32> {
    if rows <= OLD_STREAMING_ROWS {
        let mut out = vec![0f32; rows * n];
        matmul_transposed_bf16_row_dots(x, w, rows, k, n, &mut out);
        out
    } else {
        let widened: Vec<f32> = w.iter().map(|&b| bf16_value(b)).collect();
        candle_gemm(x, &widened, rows, k, n)
    }
}

/// `x · wᵀ` as candle's CPU `matmul` computes `x.matmul(&w.t())`: the `gemm` crate with `w` read
/// through transposed strides, on rayon's threads.
fn candle_gemm(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: `out` is `[rows, n]` (row stride n), `x` `[rows, k]` (row stride k), and `w` `[n, k]`
    // read as the `[k, n]` matrix `wᵀ` (row stride 1, column stride k): every index in bounds.
    unsafe {
        gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    out
}
