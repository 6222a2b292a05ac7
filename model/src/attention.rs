//! Scaled dot-product attention over one sequence's keys and values, computed in query chunks so
//! that a 4000-token multimodal prompt never materialises a full `[heads, L, L]` score matrix.
//!
//! Grouped-query attention is handled without copying keys: the query heads that share a KV head
//! are stacked along the row dimension of one matrix product.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::layers::softmax_f32;

/// Upper bound on the attention-score elements held at once (4 Mi f32 = 16 MiB): small enough
/// that the allocator reuses the buffers instead of mapping fresh zeroed pages for every chunk.
const MAX_SCORE_ELEMENTS: usize = 4 << 20;

/// Which keys each query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Query `i` sits at position `past + i` and sees keys `0..=past + i` (the decoder).
    Causal { past: usize },
    /// Every query sees every key (the vision encoder, within one image).
    Full,
}

/// Attention of `q` `[q_heads, L, D]` over `k`, `v` `[kv_heads, S, D]`, giving `[L, q_heads · D]`.
///
/// `q_heads` must be a multiple of `kv_heads`; query head `h` reads KV head `h / (q_heads / kv_heads)`,
/// as Hugging Face's `repeat_kv` does.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, visibility: Visibility) -> Result<Tensor> {
    attention_in_chunks(q, k, v, visibility, MAX_SCORE_ELEMENTS)
}

fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    visibility: Visibility,
    max_score_elements: usize,
) -> Result<Tensor> {
    let (q_heads, q_len, head_dim) = q.dims3()?;
    let (kv_heads, kv_len, _) = k.dims3()?;
    let group = q_heads / kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = (q * scale)?.reshape((kv_heads, group, q_len, head_dim))?;
    let k_t = k.t()?;
    let chunk = (max_score_elements / (q_heads * kv_len)).max(1);
    let mut outputs = Vec::with_capacity(q_len.div_ceil(chunk));
    for start in (0..q_len).step_by(chunk) {
        let rows = chunk.min(q_len - start);
        let q_chunk = q
            .narrow(2, start, rows)?
            .contiguous()?
            .reshape((kv_heads, group * rows, head_dim))?;
        let scores = q_chunk.matmul(&k_t)?.to_dtype(DType::F32)?;
        let scores = match causal_mask(visibility, start, rows, kv_len, q.device())? {
            Some(mask) => scores
                .reshape((kv_heads, group, rows, kv_len))?
                .broadcast_add(&mask)?
                .reshape((kv_heads, group * rows, kv_len))?,
            None => scores,
        };
        let probs = softmax_f32(&scores, v.dtype())?;
        outputs.push(probs.matmul(v)?.reshape((kv_heads, group, rows, head_dim))?);
    }
    let out = Tensor::cat(&outputs, 2)?;
    Ok(out
        .reshape((q_heads, q_len, head_dim))?
        .transpose(0, 1)?
        .reshape((q_len, q_heads * head_dim))?)
}

/// The additive mask `[rows, kv_len]` for query rows `start..start + rows`, or `None` when every
/// row may see every key.
fn causal_mask(
    visibility: Visibility,
    start: usize,
    rows: usize,
    kv_len: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let Visibility::Causal { past } = visibility else {
        return Ok(None);
    };
    let first_position = past + start;
    // The chunk's first row is its most restricted: if it sees every key, all rows do.
    if first_position + 1 >= kv_len {
        return Ok(None);
    }
    let mut mask = vec![0f32; rows * kv_len];
    for (row, row_mask) in mask.chunks_mut(kv_len).enumerate() {
        let last_visible = first_position + row;
        for value in row_mask.iter_mut().skip(last_visible + 1) {
            *value = f32::NEG_INFINITY;
        }
    }
    Ok(Some(Tensor::from_vec(mask, (rows, kv_len), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention computed naively, one head and one query at a time.
    fn reference(q: &[Vec<Vec<f32>>], k: &[Vec<Vec<f32>>], v: &[Vec<Vec<f32>>], past: Option<usize>) -> Vec<Vec<f32>> {
        let group = q.len() / k.len();
        let d = q[0][0].len();
        let mut out = vec![vec![0f32; q.len() * d]; q[0].len()];
        for (h, q_head) in q.iter().enumerate() {
            let (k_head, v_head) = (&k[h / group], &v[h / group]);
            for (i, qi) in q_head.iter().enumerate() {
                let visible = past.map_or(k_head.len(), |p| p + i + 1);
                let scores: Vec<f32> = k_head[..visible]
                    .iter()
                    .map(|kj| qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f32::MIN, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    for c in 0..d {
                        out[i][h * d + c] += e / total * v_head[j][c];
                    }
                }
            }
        }
        out
    }

    fn pseudo_random(shape: (usize, usize, usize), seed: u32) -> Vec<Vec<Vec<f32>>> {
        let mut state = seed;
        (0..shape.0)
            .map(|_| {
                (0..shape.1)
                    .map(|_| {
                        (0..shape.2)
                            .map(|_| {
                                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    fn to_tensor(x: &[Vec<Vec<f32>>]) -> Tensor {
        let dims = (x.len(), x[0].len(), x[0][0].len());
        let flat: Vec<f32> = x.iter().flatten().flatten().copied().collect();
        Tensor::from_vec(flat, dims, &Device::Cpu).unwrap()
    }

    fn assert_matches_reference(
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        visibility: Visibility,
        max_score_elements: usize,
    ) {
        let q = pseudo_random((q_heads, q_len, 8), 1);
        let k = pseudo_random((kv_heads, kv_len, 8), 2);
        let v = pseudo_random((kv_heads, kv_len, 8), 3);
        let past = match visibility {
            Visibility::Causal { past } => Some(past),
            Visibility::Full => None,
        };
        let expected = reference(&q, &k, &v, past);
        let (q, k, v) = (to_tensor(&q), to_tensor(&k), to_tensor(&v));
        let got = attention_in_chunks(&q, &k, &v, visibility, max_score_elements)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row_got, row_expected) in got.iter().zip(&expected) {
            for (a, b) in row_got.iter().zip(row_expected) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn causal_grouped_query_attention_matches_naive_loop() {
        assert_matches_reference(4, 2, 7, 7, Visibility::Causal { past: 0 }, MAX_SCORE_ELEMENTS);
    }

    #[test]
    fn causal_attention_with_cached_prefix_sees_the_prefix() {
        assert_matches_reference(6, 2, 3, 10, Visibility::Causal { past: 7 }, MAX_SCORE_ELEMENTS);
    }

    #[test]
    fn full_attention_sees_every_key() {
        assert_matches_reference(2, 2, 5, 5, Visibility::Full, MAX_SCORE_ELEMENTS);
    }

    #[test]
    fn chunked_queries_give_the_same_result_as_one_chunk() {
        // 4 heads x 9 keys x 2 rows per chunk: 5 chunks, the last one partial.
        assert_matches_reference(4, 1, 9, 9, Visibility::Causal { past: 0 }, 4 * 9 * 2);
        assert_matches_reference(2, 2, 5, 5, Visibility::Full, 2 * 5);
    }
}
