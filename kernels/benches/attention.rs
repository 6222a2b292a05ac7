//! Attention of the bench checkpoint: `cargo bench -p fovea-kernels --bench attention`.
//!
//! Prefill against its FLOP count: one decoder layer over a 4550-token prompt (12 query heads, 4
//! KV heads, head_dim 64, causal) and one vision layer over a 3600-patch image (6 heads, full), as
//! in the model benchmark.
//!
//! A decoding step against its memory floor: 16 sequences of 560 cached tokens (a 128-token text
//! prompt in the template) attend in all 12 layers, their 16-token blocks scattered through a
//! pool. The in-place kernel ([`paged_attention`]) against what ran before it: each sequence's
//! blocks gathered into a contiguous buffer, then [`attention`] per sequence. The two alternate,
//! so machine load hits both alike.

use std::time::Instant;

use fovea_kernels::attention::{AttentionShape, HeadGroups, Mask, attention};
use fovea_kernels::paged_attention::{BatchQueries, PagedKv, PagedSegment, paged_attention};

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
    decoding_step();
}

/// Read bandwidth of this machine (README, "The model alone").
const MACHINE_GB_PER_S: f64 = 28.3;

const STEP_LAYERS: usize = 12;
const STEP_SEQUENCES: usize = 16;
const STEP_TOKENS: usize = 560;
const BLOCK_SIZE: usize = 16;
const Q_HEADS: usize = 12;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 64;

/// One layer's pool: `[blocks, kv_heads, block_size, head_dim]` keys and values.
struct LayerPool {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl LayerPool {
    fn paged(&self) -> PagedKv<'_> {
        PagedKv {
            keys: &self.keys,
            values: &self.values,
            kv_heads: KV_HEADS,
            block_size: BLOCK_SIZE,
            head_dim: HEAD_DIM,
        }
    }

    /// The old path's copy: positions `0..len` of `blocks` into `[kv_heads, len, head_dim]`.
    fn gather(&self, blocks: &[usize], len: usize, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        keys.resize(KV_HEADS * len * HEAD_DIM, 0.0);
        values.resize(KV_HEADS * len * HEAD_DIM, 0.0);
        for (index, &block) in blocks.iter().enumerate() {
            let filled = BLOCK_SIZE.min(len - index * BLOCK_SIZE) * HEAD_DIM;
            for head in 0..KV_HEADS {
                let src = (block * KV_HEADS + head) * BLOCK_SIZE * HEAD_DIM;
                let dst = (head * len + index * BLOCK_SIZE) * HEAD_DIM;
                keys[dst..dst + filled].copy_from_slice(&self.keys[src..src + filled]);
                values[dst..dst + filled].copy_from_slice(&self.values[src..src + filled]);
            }
        }
    }
}

fn decoding_step() {
    let blocks_per_sequence = STEP_TOKENS.div_ceil(BLOCK_SIZE);
    let pool_blocks = STEP_SEQUENCES * blocks_per_sequence;
    let pool_len = pool_blocks * KV_HEADS * BLOCK_SIZE * HEAD_DIM;
    let layers: Vec<LayerPool> = (0..STEP_LAYERS)
        .map(|layer| LayerPool {
            keys: (0..pool_len)
                .map(|i| ((i * 7 + layer) % 97) as f32 * 1e-2 - 0.48)
                .collect(),
            values: (0..pool_len)
                .map(|i| ((i * 5 + layer) % 89) as f32 * 1e-2 - 0.44)
                .collect(),
        })
        .collect();
    // Sequence s holds blocks s, s + 16, s + 32, ...: neighbours in a sequence lie far apart.
    let tables: Vec<Vec<usize>> = (0..STEP_SEQUENCES)
        .map(|s| {
            (0..blocks_per_sequence)
                .map(|b| b * STEP_SEQUENCES + s)
                .collect()
        })
        .collect();
    let segments: Vec<PagedSegment<'_>> = tables
        .iter()
        .enumerate()
        .map(|(s, blocks)| PagedSegment {
            blocks,
            past: STEP_TOKENS - 1,
            tokens: 1,
            first_row: s,
        })
        .collect();
    let q: Vec<f32> = (0..Q_HEADS * STEP_SEQUENCES * HEAD_DIM)
        .map(|i| ((i % 101) as f32 - 50.0) * 1e-2)
        .collect();
    let queries = BatchQueries {
        q: &q,
        q_heads: Q_HEADS,
        rows: STEP_SEQUENCES,
        groups: HeadGroups::even(Q_HEADS, KV_HEADS),
    };
    let mut out = vec![0f32; q.len()];
    let in_place = || {
        let mut out = vec![0f32; q.len()];
        for layer in &layers {
            paged_attention(queries, layer.paged(), &segments, &mut out);
        }
        out
    };
    let gathered = |out: &mut Vec<f32>| {
        let (mut keys, mut values, mut q_seq, mut out_seq) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            vec![0f32; Q_HEADS * HEAD_DIM],
        );
        for layer in &layers {
            for (s, blocks) in tables.iter().enumerate() {
                layer.gather(blocks, STEP_TOKENS, &mut keys, &mut values);
                q_seq.clear();
                for head in 0..Q_HEADS {
                    q_seq.extend_from_slice(
                        &q[(head * STEP_SEQUENCES + s) * HEAD_DIM..][..HEAD_DIM],
                    );
                }
                let shape = AttentionShape {
                    q_heads: Q_HEADS,
                    kv_heads: KV_HEADS,
                    groups: HeadGroups::even(Q_HEADS, KV_HEADS),
                    q_len: 1,
                    kv_len: STEP_TOKENS,
                    head_dim: HEAD_DIM,
                    kv_head_stride: STEP_TOKENS * HEAD_DIM,
                    mask: Mask::Causal {
                        past: STEP_TOKENS - 1,
                    },
                };
                attention(&q_seq, &keys, &values, shape, &mut out_seq);
                out[s * Q_HEADS * HEAD_DIM..][..Q_HEADS * HEAD_DIM].copy_from_slice(&out_seq);
            }
        }
    };
    gathered(&mut out);
    let expected = in_place();
    let largest_difference = out
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        largest_difference < 1e-4,
        "the two paths differ by {largest_difference}"
    );
    let repeats = 9;
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let started = Instant::now();
        std::hint::black_box(in_place());
        new.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        gathered(&mut out);
        old.push(started.elapsed().as_secs_f64());
    }
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[repeats / 2]
    };
    let (new, old) = (median(new), median(old));
    let bytes = 2.0 * (STEP_LAYERS * STEP_SEQUENCES * STEP_TOKENS * KV_HEADS * HEAD_DIM * 4) as f64;
    let floor = bytes / (MACHINE_GB_PER_S * 1e9);
    println!(
        "decoding step, {STEP_SEQUENCES} x {STEP_TOKENS} tokens, {STEP_LAYERS} layers: in place {:.1} ms, gathered {:.1} ms, \
         gathered/in place {:.2}x; memory floor {:.1} ms ({:.0} MB of keys and values), in place at {:.0}% of the floor's speed",
        new * 1e3,
        old * 1e3,
        old / new,
        floor * 1e3,
        bytes / 1e6,
        100.0 * floor / new
    );
}
