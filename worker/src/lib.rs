//! Fovea's serving engine: many requests at once on one model, by iteration-level continuous
//! batching over a paged KV cache. Each step runs one forward pass over a flat batch of decoding
//! steps and prefill chunks, and streams every request's tokens through its own channel.
//! It must not do networking (the gRPC layer drives it through [`EngineHandle`]) nor change how
//! the model computes: the model crate stays pure, this crate owns memory and policy.

pub mod block_allocator;
pub mod kv_pool;
pub mod paged_cache;
