//! Fovea's serving engine: many requests at once on one model, by iteration-level continuous
//! batching over a paged KV cache. Each step runs one forward pass over a flat batch of decoding
//! steps and prefill chunks, and streams every request's tokens through its own channel.
//! The engine itself does no networking ([`node`] exposes it over the worker API, gRPC, in the
//! full, vision, prefill or decode role, the last two moving prompts' keys and values between
//! workers) and does not change how the model computes: the model crate stays pure, this crate
//! owns memory and policy.
//!
//! Start with [`Engine::start`], then [`EngineHandle::submit`] a [`GenerateRequest`] and read its
//! [`Event`]s.

pub mod block_allocator;
pub mod block_hash;
pub mod config;
pub mod engine;
pub mod engine_rank;
pub mod error;
pub mod event;
pub mod handle;
pub mod image_cache;
mod image_encoding;
pub mod job;
pub mod kv_handoff;
pub mod kv_heads;
pub mod kv_pool;
pub mod kv_receiver;
pub mod load_report;
pub mod node;
pub mod paged_cache;
pub mod peers;
pub mod prefill_service;
pub mod request;
mod scheduler;
mod sequence;
pub mod service;
pub mod vision_batcher;
pub mod vision_client;
pub mod vision_service;
pub mod vision_worker;

pub use config::EngineConfig;
pub use engine::Engine;
pub use error::{EngineError, RequestError};
pub use event::{Completion, Event, FinishReason, Timings, Usage};
pub use handle::{EngineHandle, EngineStats, RequestOutput, RequestStream};
pub use request::{GenerateRequest, ImageSource, RequestId};
