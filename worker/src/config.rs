//! The engine's settings: KV cache size, block size, per-step limits, image cache size.

use fovea_model::config::TextConfig;

use crate::error::EngineError;
use crate::kv_pool::KvPoolShape;

/// How much memory the engine takes and how much work one step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Blocks in the KV cache (the `--kv-blocks` capacity): `kv_blocks · block_size` tokens over
    /// all running sequences.
    pub kv_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Tokens per forward pass: decoding steps plus prefill chunks. Smaller keeps decoding steps
    /// fast while long prompts prefill; larger prefills faster.
    pub max_batch_tokens: usize,
    /// Prompt tokens per forward pass while some sequence is decoding: bounds how much a long
    /// (image) prompt lengthens the decoding sequences' time between tokens.
    pub max_prefill_tokens_while_decoding: usize,
    /// Sequences holding KV blocks at once.
    pub max_running: usize,
    /// Bytes of image features kept for images sent again (0 disables the cache).
    pub image_cache_bytes: usize,
    /// Keep the blocks of finished sequences and reuse them for requests that start with the same
    /// tokens and images.
    pub prefix_caching: bool,
}

impl EngineConfig {
    /// `kv_blocks` blocks of 16 tokens, 512 tokens per step (128 prompt tokens while anything
    /// decodes), 64 running sequences, 256 MiB of image features, prefix caching on.
    ///
    /// ```
    /// let config = fovea_worker::EngineConfig { max_batch_tokens: 1024, ..fovea_worker::EngineConfig::new(4096) };
    /// assert_eq!(config.block_size, 16);
    /// ```
    pub fn new(kv_blocks: usize) -> Self {
        EngineConfig {
            kv_blocks,
            block_size: 16,
            max_batch_tokens: 512,
            max_prefill_tokens_while_decoding: 128,
            max_running: 64,
            image_cache_bytes: 256 << 20,
            prefix_caching: true,
        }
    }

    /// Checks the settings and gives the KV pool they make for a decoder of `text`.
    pub fn pool_shape(&self, text: &TextConfig) -> Result<KvPoolShape, EngineError> {
        let positive = [
            ("kv_blocks", self.kv_blocks),
            ("block_size", self.block_size),
            ("max_batch_tokens", self.max_batch_tokens),
            (
                "max_prefill_tokens_while_decoding",
                self.max_prefill_tokens_while_decoding,
            ),
            ("max_running", self.max_running),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(EngineError::Config(format!("{name} must be at least 1")));
        }
        if u32::try_from(self.kv_blocks).is_err() {
            return Err(EngineError::Config(format!(
                "kv_blocks {} is more than 2^32 - 1",
                self.kv_blocks
            )));
        }
        let shape = KvPoolShape::for_decoder(text, self.kv_blocks, self.block_size);
        if shape
            .bytes()
            .is_none_or(|bytes| bytes > isize::MAX as usize)
            || self.kv_blocks.checked_mul(self.block_size).is_none()
        {
            return Err(EngineError::Config(format!(
                "{} blocks of {} tokens do not fit in memory",
                self.kv_blocks, self.block_size
            )));
        }
        Ok(shape)
    }
}
