//! The Phi-4-reasoning-vision network, exactly as the reference computes it.
//!
//! Loads Hugging Face checkpoints of the family, prepares inputs (chat template, tokenizer, image
//! preprocessing) and runs the SigLIP-2 encoder, the projector and the Phi-4 decoder on candle tensors.
//! It owns no scheduling, batching policy or networking: the worker crate drives it, and memory for
//! the KV cache is handed in by the caller.

// The demo checkpoint's config.json is one `json!` literal with the real model's 40 keys.
#![recursion_limit = "256"]

pub mod activation;
pub mod attention;
pub mod batch;
pub mod config;
pub mod cpu;
pub mod decoder;
pub mod demo;
pub mod device;
pub mod error;
pub mod generate;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod input;
pub mod kv_cache;
pub mod layers;
pub mod logprobs;
pub mod model;
pub mod preprocess;
pub mod random;
pub mod rotary;
pub mod sampling;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod tp;
pub mod vision;
pub mod weights;

pub use config::ModelConfig;
pub use device::DeviceSpec;
pub use error::{ModelError, Result};
pub use model::{ImagePlacement, Phi4VisionModel};
