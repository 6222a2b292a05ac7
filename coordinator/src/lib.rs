//! Fovea's coordinator: serves the public API (`fovea.v1.Generation`, gRPC health and reflection,
//! and an OpenAI-compatible HTTP API over the same service),
//! validates requests at the edge, bounds what is in flight, and routes jobs to workers over the
//! worker API (`fovea.worker.v1`), streaming their tokens back as text.
//!
//! It holds no model weights and computes nothing but prompts: the workers do the math. Which
//! workers exist it learns from a registry (`fovea-membership`); it keeps no state another
//! coordinator needs, so several can serve the same workers.

pub mod admission;
pub mod generation;
pub mod health;
mod load_watch;
pub mod openai;
pub mod output;
pub mod prefix_affinity;
pub mod replay;
pub mod server;
pub mod split;
pub mod validation;
pub mod vision_assignment;
pub mod workers;

pub use server::{CoordinatorConfig, Listeners, serve};
