//! Where sequences' keys and values live between forward passes.
//!
//! The decoder writes each layer's new keys and values through [`KvCache`] and gets back attention
//! of every token over its own sequence; the layout of that memory (contiguous here, paged in the
//! worker) is the cache's business, so the decoder is the same whichever the engine uses.

use candle_core::Tensor;

use crate::attention::{HeadGroups, Visibility, attention};
use crate::batch::BatchLayout;
use crate::error::{ModelError, Result};

/// One layer's projected heads for a batch: queries `q` `[q_heads, T, D]`, new keys and values
/// `k`, `v` `[kv_heads, T, D]`, and which KV head each query head reads.
#[derive(Clone, Copy)]
pub struct AttentionHeads<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub groups: HeadGroups,
}

/// Key/value storage that the decoder attends through.
pub trait KvCache {
    /// Stores the batch's new keys and values `k`, `v` `[kv_heads, T, D]` for `layer` (each
    /// segment's tokens right after its `past` cached ones) and returns causal attention of
    /// `q` `[q_heads, T, D]`, every token over its own sequence, query head `h` reading KV head
    /// `groups.kv_head(h)`, as `[T, q_heads · D]`.
    fn attend(
        &mut self,
        layer: usize,
        batch: &BatchLayout,
        heads: AttentionHeads,
    ) -> Result<Tensor>;
}

/// One growable contiguous buffer per layer for a single sequence: the simplest cache, for
/// `fovea generate` and tests.
pub struct ContiguousKvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl ContiguousKvCache {
    /// An empty cache for a decoder of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        ContiguousKvCache {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Tokens cached so far (the position of the next token).
    pub fn cached_len(&self) -> usize {
        self.len
    }

    /// The layout of a forward pass of `tokens` new tokens after the cached ones.
    pub fn next_batch(&self, tokens: usize) -> BatchLayout {
        BatchLayout::single(self.len, tokens)
    }
}

/// A zeroed `[heads, capacity, D]` buffer holding a copy of `old`'s first `len` positions.
fn grown_buffer(
    old: Option<&Tensor>,
    len: usize,
    like: &Tensor,
    capacity: usize,
) -> Result<Tensor> {
    let (heads, _, head_dim) = like.dims3()?;
    let buffer = Tensor::zeros((heads, capacity, head_dim), like.dtype(), like.device())?;
    if let Some(old) = old
        && len > 0
    {
        buffer.slice_set(&old.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
    }
    Ok(buffer)
}

impl KvCache for ContiguousKvCache {
    fn attend(
        &mut self,
        layer: usize,
        batch: &BatchLayout,
        heads: AttentionHeads,
    ) -> Result<Tensor> {
        let AttentionHeads { q, k, v, groups } = heads;
        let [segment] = batch.segments() else {
            return Err(ModelError::BadInput(
                "a contiguous KV cache holds exactly one sequence".into(),
            ));
        };
        if segment.past > self.len {
            return Err(ModelError::BadInput(format!(
                "batch continues at position {} but only {} tokens are cached",
                segment.past, self.len
            )));
        }
        let past = segment.past;
        let needed = past + segment.tokens;
        let is_last_layer = layer + 1 == self.layers.len();
        let slot = &mut self.layers[layer];
        let capacity = slot
            .as_ref()
            .map_or(0, |(k_buf, _)| k_buf.dim(1).unwrap_or(0));
        if needed > capacity {
            let capacity = needed.max(capacity * 2).max(256);
            let k_buf = grown_buffer(slot.as_ref().map(|(k, _)| k), past, k, capacity)?;
            let v_buf = grown_buffer(slot.as_ref().map(|(_, v)| v), past, v, capacity)?;
            *slot = Some((k_buf, v_buf));
        }
        let (k_buf, v_buf) = slot.as_ref().expect("buffer allocated above");
        k_buf.slice_set(&k.contiguous()?, 1, past)?;
        v_buf.slice_set(&v.contiguous()?, 1, past)?;
        if is_last_layer {
            self.len = needed;
        }
        let keys = k_buf.narrow(1, 0, needed)?;
        let values = v_buf.narrow(1, 0, needed)?;
        attention(q, &keys, &values, groups, Visibility::Causal { past })
    }
}
