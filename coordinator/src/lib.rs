//! Fovea's coordinator: serves the public API (`fovea.v1.Generation`, gRPC health and reflection,
//! and an OpenAI-compatible HTTP API over the same service),
//! validates requests at the edge, bounds what is in flight, and routes jobs to workers over the
//! worker API (`fovea.worker.v1`), streaming their tokens back as text.
//!
//! It holds no model weights and computes nothing but prompts: the workers do the math.

pub mod admission;
pub mod generation;
pub mod openai;
pub mod output;
pub mod server;
pub mod validation;
pub mod workers;

pub use server::{CoordinatorConfig, Listeners, serve};
