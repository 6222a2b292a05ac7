//! Fused scaled-dot-product attention on the CPU for one sequence: per (query head, block of
//! queries) one small GEMM for the scores, an in-place softmax, one GEMM into the output.
//!
//! Causal blocks only compute the keys their last query can see, so a long prompt costs about half
//! the work of full attention; scores live in a per-thread buffer of `QUERY_BLOCK` rows, never in
//! an `[L, L]` matrix. Grouped-query heads read their shared KV head in place.

use std::cell::RefCell;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::exp::exp_shifted_in_place;

/// Queries per task: small enough that a block's scores stay in L2 for long prompts.
const QUERY_BLOCK: usize = 128;

/// Which keys each query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Query `i` sits at position `past + i` and sees keys `0..=past + i`.
    Causal { past: usize },
    /// Every query sees every key.
    Full,
}

/// Which KV head each query head reads: query head `h` of a call reads KV head
/// `(first_in_group + h) / per_kv`.
///
/// A whole model's heads form even groups (`per_kv = q_heads / kv_heads`, Hugging Face's
/// `repeat_kv`). A tensor-parallel rank holds a run of query heads that may start inside a group
/// and end inside another, with the KV heads those groups use: `first_in_group` is where its first
/// query head sits in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadGroups {
    /// Query heads per KV head in the whole model.
    pub per_kv: usize,
    /// Position of the call's first query head within its group, `0..per_kv`.
    pub first_in_group: usize,
}

impl HeadGroups {
    /// Even groups: `q_heads / kv_heads` query heads per KV head, starting at a group boundary.
    pub fn even(q_heads: usize, kv_heads: usize) -> Self {
        HeadGroups {
            per_kv: (q_heads / kv_heads.max(1)).max(1),
            first_in_group: 0,
        }
    }

    /// The KV head that query head `q_head` reads.
    pub fn kv_head(&self, q_head: usize) -> usize {
        (self.first_in_group + q_head) / self.per_kv
    }

    /// The query heads, of a call's `q_heads`, that read KV head `kv_head`: the inverse of
    /// [`HeadGroups::kv_head`].
    pub fn query_heads(&self, kv_head: usize, q_heads: usize) -> std::ops::Range<usize> {
        let start = (kv_head * self.per_kv).saturating_sub(self.first_in_group);
        let end = ((kv_head + 1) * self.per_kv).saturating_sub(self.first_in_group);
        start.min(q_heads)..end.min(q_heads)
    }

    /// Whether `q_heads` query heads read exactly `kv_heads` KV heads, each at least once.
    pub fn fits(&self, q_heads: usize, kv_heads: usize) -> bool {
        self.per_kv > 0
            && self.first_in_group < self.per_kv
            && q_heads > 0
            && self.kv_head(q_heads - 1) + 1 == kv_heads
    }
}

/// Shapes and memory layout of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub q_heads: usize,
    pub kv_heads: usize,
    /// Which KV head each query head reads.
    pub groups: HeadGroups,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    /// Distance in elements between the starts of consecutive KV heads in `k` and `v`
    /// (`kv_len · head_dim` when packed; more when the heads sit in a larger cache buffer).
    pub kv_head_stride: usize,
    pub mask: Mask,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[h][i] = softmax(q[h][i] · k[g(h)]ᵀ / √d) · v[g(h)]` with `g` the shape's [`HeadGroups`].
///
/// `q` and `out` are `[q_heads, q_len, head_dim]`; `k` and `v` hold `kv_heads` blocks of
/// `[kv_len, head_dim]`, `kv_head_stride` apart.
///
/// # Panics
/// If the slices are shorter than the shape says, or the groups do not map the query heads onto
/// exactly the KV heads.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape, out: &mut [f32]) {
    let AttentionShape {
        q_heads,
        kv_heads,
        groups,
        q_len,
        kv_len,
        head_dim,
        kv_head_stride,
        mask,
    } = shape;
    assert!(
        groups.fits(q_heads, kv_heads),
        "the head groups do not map q_heads onto kv_heads"
    );
    assert_eq!(
        q.len(),
        q_heads * q_len * head_dim,
        "q is not [q_heads, q_len, head_dim]"
    );
    assert_eq!(out.len(), q.len(), "out is not [q_heads, q_len, head_dim]");
    let kv_needed = (kv_heads - 1) * kv_head_stride + kv_len * head_dim;
    assert!(
        k.len() >= kv_needed && v.len() >= kv_needed,
        "k or v is shorter than the shape"
    );
    if q_len == 0 || head_dim == 0 {
        return;
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.par_chunks_mut(q_len * head_dim)
        .enumerate()
        .for_each(|(head, out_head)| {
            let kv_offset = groups.kv_head(head) * kv_head_stride;
            let (k_head, v_head) = (&k[kv_offset..], &v[kv_offset..]);
            let q_head = &q[head * q_len * head_dim..(head + 1) * q_len * head_dim];
            out_head
                .par_chunks_mut(QUERY_BLOCK * head_dim)
                .enumerate()
                .for_each(|(block, out_block)| {
                    let first_row = block * QUERY_BLOCK;
                    let rows = out_block.len() / head_dim;
                    let q_block = &q_head[first_row * head_dim..(first_row + rows) * head_dim];
                    let block_shape = BlockShape {
                        rows,
                        first_row,
                        kv_len,
                        head_dim,
                        scale,
                        mask,
                    };
                    SCORES.with_borrow_mut(|scores| {
                        attend_block(q_block, k_head, v_head, block_shape, scores, out_block)
                    });
                });
        });
}

#[derive(Clone, Copy)]
struct BlockShape {
    rows: usize,
    first_row: usize,
    kv_len: usize,
    head_dim: usize,
    scale: f32,
    mask: Mask,
}

impl BlockShape {
    /// Keys visible to query row `row` of the block.
    fn visible_keys(&self, row: usize) -> usize {
        match self.mask {
            Mask::Causal { past } => (past + self.first_row + row + 1).min(self.kv_len),
            Mask::Full => self.kv_len,
        }
    }
}

/// One block of queries against one KV head: scores, softmax, weighted sum of values.
fn attend_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: BlockShape,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let BlockShape { rows, head_dim, .. } = shape;
    let keys = shape.visible_keys(rows - 1);
    scores.clear();
    scores.resize(rows * keys, 0.0);
    // SAFETY: every pointer/stride pair addresses inside its slice: q is [rows, head_dim],
    // k and v hold at least `keys` rows of head_dim, scores is [rows, keys], out is [rows, head_dim].
    unsafe {
        // scores = scale · q · kᵀ   (k read as [head_dim, keys]: row stride 1, column stride head_dim)
        gemm(
            rows,
            keys,
            head_dim,
            scores.as_mut_ptr(),
            1,
            keys as isize,
            false,
            q.as_ptr(),
            1,
            head_dim as isize,
            k.as_ptr(),
            head_dim as isize,
            1,
            0.0,
            shape.scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    let mut inverse_sums = [0f32; QUERY_BLOCK];
    for (row, row_scores) in scores.chunks_exact_mut(keys).enumerate() {
        let visible = shape.visible_keys(row);
        let (seen, hidden) = row_scores.split_at_mut(visible);
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        inverse_sums[row] = 1.0 / exp_shifted_in_place(seen, max);
        hidden.fill(0.0);
    }
    unsafe {
        // out = p · v
        gemm(
            rows,
            head_dim,
            keys,
            out.as_mut_ptr(),
            1,
            head_dim as isize,
            false,
            scores.as_ptr(),
            1,
            keys as isize,
            v.as_ptr(),
            1,
            head_dim as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    for (row, out_row) in out.chunks_exact_mut(head_dim).enumerate() {
        let inverse = inverse_sums[row];
        out_row.iter_mut().for_each(|x| *x *= inverse);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::test_values(len, seed, 4.0)
    }

    /// Attention one query at a time in f64, straight from the definition.
    fn reference(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape) -> Vec<f32> {
        let d = shape.head_dim;
        let mut out = vec![0f32; q.len()];
        for h in 0..shape.q_heads {
            let kv =
                ((shape.groups.first_in_group + h) / shape.groups.per_kv) * shape.kv_head_stride;
            for i in 0..shape.q_len {
                let visible = match shape.mask {
                    Mask::Causal { past } => (past + i + 1).min(shape.kv_len),
                    Mask::Full => shape.kv_len,
                };
                let qi = &q[(h * shape.q_len + i) * d..][..d];
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        (0..d)
                            .map(|c| qi[c] as f64 * k[kv + j * d + c] as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for c in 0..d {
                    let value: f64 = exps
                        .iter()
                        .enumerate()
                        .map(|(j, e)| e * v[kv + j * d + c] as f64)
                        .sum();
                    out[(h * shape.q_len + i) * d + c] = (value / total) as f32;
                }
            }
        }
        out
    }

    fn check(shape: AttentionShape) {
        let kv_size = (shape.kv_heads - 1) * shape.kv_head_stride + shape.kv_len * shape.head_dim;
        let q = values(shape.q_heads * shape.q_len * shape.head_dim, 1);
        let k = values(kv_size, 2);
        let v = values(kv_size, 3);
        let mut out = vec![f32::NAN; q.len()];
        attention(&q, &k, &v, shape, &mut out);
        for (got, expected) in out.iter().zip(reference(&q, &k, &v, shape)) {
            assert!(
                (got - expected).abs() < 1e-5,
                "{shape:?}: {got} vs {expected}"
            );
        }
    }

    fn shape(
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        mask: Mask,
    ) -> AttentionShape {
        AttentionShape {
            q_heads,
            kv_heads,
            groups: HeadGroups::even(q_heads, kv_heads),
            q_len,
            kv_len,
            head_dim: 16,
            kv_head_stride: kv_len * 16,
            mask,
        }
    }

    #[test]
    fn causal_prompt_over_several_query_blocks_matches_definition() {
        check(shape(4, 2, 150, 150, Mask::Causal { past: 0 }));
    }

    #[test]
    fn causal_queries_after_a_cached_prefix_see_the_prefix() {
        check(shape(6, 2, 3, 70, Mask::Causal { past: 67 }));
        check(shape(2, 1, 1, 9, Mask::Causal { past: 8 }));
    }

    #[test]
    fn full_attention_sees_every_key() {
        check(shape(2, 2, 70, 70, Mask::Full));
    }

    #[test]
    fn a_run_of_query_heads_may_start_and_end_inside_groups() {
        // Query heads 5..10 of a model with 4 per KV head read KV heads 1, 1, 1, 2, 2.
        let mut uneven = shape(5, 2, 7, 7, Mask::Causal { past: 0 });
        uneven.groups = HeadGroups {
            per_kv: 4,
            first_in_group: 1,
        };
        check(uneven);
        assert_eq!(
            (0..5).map(|h| uneven.groups.kv_head(h)).collect::<Vec<_>>(),
            [0, 0, 0, 1, 1]
        );
        assert_eq!(
            [
                uneven.groups.query_heads(0, 5),
                uneven.groups.query_heads(1, 5)
            ],
            [0..3, 3..5]
        );
        assert!(
            !uneven.groups.fits(5, 3),
            "three KV heads for two groups' heads"
        );
        assert!(
            !HeadGroups {
                per_kv: 4,
                first_in_group: 4
            }
            .fits(4, 1)
        );
    }

    #[test]
    fn kv_heads_may_sit_in_a_larger_buffer() {
        let mut strided = shape(4, 2, 5, 9, Mask::Causal { past: 4 });
        strided.kv_head_stride = 32 * 16;
        check(strided);
    }
}
