//! Prefill attention of the bench checkpoint against its FLOP count: `cargo bench -p fovea-kernels --bench attention`.
//!
//! One decoder layer over a 4550-token prompt (12 query heads, 4 KV heads, head_dim 64, causal) and
//! one vision layer over a 3600-patch image (6 heads, full), as in the model benchmark.

use std::time::Instant;

use fovea_kernels::attention::{AttentionShape, HeadGroups, Mask, attention};

fn measure(name: &str, shape: AttentionShape) {
    let AttentionShape {
        q_heads,
        kv_heads,
        q_len,
        kv_len,
        head_dim,
        ..
    } = shape;
    let q: Vec<f32> = (0..q_heads * q_len * head_dim)
        .map(|i| ((i % 101) as f32 - 50.0) * 1e-2)
        .collect();
    let kv: Vec<f32> = (0..kv_heads * kv_len * head_dim)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-2)
        .collect();
    let mut out = vec![0f32; q.len()];
    attention(&q, &kv, &kv, shape, &mut out);
    let repeats = 7;
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            attention(&q, &kv, &kv, shape, &mut out);
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[repeats / 2];
    let visible_pairs: f64 = match shape.mask {
        Mask::Causal { past } => (0..q_len).map(|i| (past + i + 1) as f64).sum(),
        Mask::Full => (q_len * kv_len) as f64,
    };
    let flops = 4.0 * q_heads as f64 * head_dim as f64 * visible_pairs;
    println!(
        "{name:<34} median {:.1} ms, {:.1} GFLOP/s (useful work)",
        median * 1e3,
        flops / median / 1e9
    );
}

fn main() {
    let decoder = AttentionShape {
        q_heads: 12,
        kv_heads: 4,
        groups: HeadGroups::even(12, 4),
        q_len: 4550,
        kv_len: 4550,
        head_dim: 64,
        kv_head_stride: 4550 * 64,
        mask: Mask::Causal { past: 0 },
    };
    measure("decoder layer, 4550 tokens, causal", decoder);
    let vision = AttentionShape {
        q_heads: 6,
        kv_heads: 6,
        groups: HeadGroups::even(6, 6),
        q_len: 3600,
        kv_len: 3600,
        head_dim: 64,
        kv_head_stride: 3600 * 64,
        mask: Mask::Full,
    };
    measure("vision layer, 3600 patches, full", vision);
}
