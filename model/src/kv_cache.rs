//! Where a sequence's keys and values live between decoding steps.
//!
//! The decoder writes each layer's new keys and values through [`KvCache`] and gets back attention
//! over everything cached; the layout of that memory (contiguous here, paged in the worker) is the
//! cache's business, so the decoder stays the same whichever the engine uses.

use candle_core::Tensor;

use crate::attention::{Visibility, attention};
use crate::error::Result;

/// Per-sequence key/value storage that the decoder attends through.
pub trait KvCache {
    /// Tokens already cached (the position of the next token).
    fn cached_len(&self) -> usize;

    /// Stores `k`, `v` `[kv_heads, L, D]` for `layer` after the cached tokens, then returns causal
    /// attention of `q` `[q_heads, L, D]` over all the layer's keys, as `[L, q_heads · D]`.
    fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor>;

    /// Marks the `L` tokens written by the last forward pass as cached.
    fn advance(&mut self, tokens: usize);
}

/// One growable contiguous buffer per layer: the simplest cache, for single-sequence generation.
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
}

/// A zeroed `[heads, capacity, D]` buffer holding a copy of `old`'s first `len` positions.
fn grown_buffer(old: Option<&Tensor>, len: usize, like: &Tensor, capacity: usize) -> Result<Tensor> {
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
    fn cached_len(&self) -> usize {
        self.len
    }

    fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let new = k.dim(1)?;
        let needed = self.len + new;
        let slot = &mut self.layers[layer];
        let capacity = slot.as_ref().map_or(0, |(k_buf, _)| k_buf.dim(1).unwrap_or(0));
        if needed > capacity {
            let capacity = needed.max(capacity * 2).max(256);
            let k_buf = grown_buffer(slot.as_ref().map(|(k, _)| k), self.len, k, capacity)?;
            let v_buf = grown_buffer(slot.as_ref().map(|(_, v)| v), self.len, v, capacity)?;
            *slot = Some((k_buf, v_buf));
        }
        let (k_buf, v_buf) = slot.as_ref().expect("buffer allocated above");
        k_buf.slice_set(&k.contiguous()?, 1, self.len)?;
        v_buf.slice_set(&v.contiguous()?, 1, self.len)?;
        let keys = k_buf.narrow(1, 0, needed)?;
        let values = v_buf.narrow(1, 0, needed)?;
        attention(q, &keys, &values, Visibility::Causal { past: self.len })
    }

    fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}
