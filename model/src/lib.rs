//! The Phi-4-reasoning-vision network, exactly as the reference computes it.
//!
//! Loads Hugging Face checkpoints of the family, prepares inputs (chat template, tokenizer, image
//! preprocessing) and runs the SigLIP-2 encoder, the projector and the Phi-4 decoder on candle tensors.
//! It owns no scheduling, batching policy or networking: the worker crate drives it, and memory for
//! the KV cache is handed in by the caller.

pub mod preprocess;

/// Fixture paths shared by this crate's tests.
#[cfg(test)]
pub(crate) mod test_fixtures {
    use std::path::PathBuf;

    /// The golden reference directory (`testdata/golden` at the repository root).
    pub fn golden_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
    }
}
