//! The engine's side of disaggregated prefill: a prefill exports a prompt's keys and values in
//! whole blocks ([`PromptKv`]) with its first token, and a decode engine imports them block run by
//! block run ([`KvBlockRun`]) into blocks it reserved, then continues from that first token.
//!
//! Blocks are numbered within the sequence (block `i` holds positions `i · block_size` up to
//! `(i + 1) · block_size - 1`), never by physical id, and hold every KV head of the model in its
//! order, whatever the engine's tensor-parallel size ([`crate::kv_heads`]): the two engines need
//! only the same block size, layers, heads and head size, not the same number of ranks. The wire
//! format lives in the services ([`crate::prefill_service`], [`crate::kv_receiver`]).

use tokio::sync::OwnedSemaphorePermit;

/// How a request's prompt keys and values cross workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvHandoff {
    /// The engine computes the prompt and generates everything itself.
    #[default]
    Local,
    /// Prefill role: compute the prompt, choose the first token, send the prompt's keys and
    /// values as an [`Event::PromptKv`](crate::Event::PromptKv), and end.
    Export,
    /// Decode role: reserve the prompt's blocks at once, take their keys and values from
    /// [`EngineHandle::write_kv`](crate::EngineHandle::write_kv) and the first token from
    /// [`EngineHandle::complete_kv`](crate::EngineHandle::complete_kv), then decode.
    Import,
}

/// A prompt's keys and values as one prefill computed them.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptKv {
    /// Prompt positions held; they fill `ceil(prompt_tokens / block_size)` blocks per layer.
    pub prompt_tokens: usize,
    /// Token slots per block.
    pub block_size: usize,
    /// f32 values per block of one layer's keys (or values):
    /// `total_kv_heads · block_size · head_dim`.
    pub block_len: usize,
    /// Per decoder layer, keys and values of every block in sequence order, each block laid out
    /// `[total_kv_heads, block_size, head_dim]` with the model's KV heads in order (the transfer
    /// layout); slots past `prompt_tokens` are zeros.
    pub layers: Vec<LayerKv>,
}

/// One layer's blocks of a [`PromptKv`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerKv {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

impl LayerKv {
    /// `len` zero keys and values, for the ranks to fill.
    pub fn zeroed(len: usize) -> Self {
        LayerKv {
            keys: vec![0.0; len],
            values: vec![0.0; len],
        }
    }
}

impl PromptKv {
    /// Blocks per layer.
    pub fn blocks(&self) -> usize {
        self.prompt_tokens.div_ceil(self.block_size)
    }
}

/// Keys and values of consecutive blocks of one layer, on their way into a reserved table.
#[derive(Debug)]
pub struct KvBlockRun {
    pub layer: usize,
    /// Index of the first block within the sequence.
    pub first_block: usize,
    /// `blocks · block_len` f32 values, blocks in the transfer layout of [`PromptKv`].
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
    /// Held until the engine has written the run: the receiver's bound on runs in flight, so a
    /// fast sender cannot queue unbounded memory in front of a busy engine.
    pub permit: Option<OwnedSemaphorePermit>,
}
