//! The OpenAI-compatible HTTP API, for the many tools that speak it: `POST /v1/chat/completions`
//! (whole or streamed as Server-Sent Events) and `GET /v1/models`.
//!
//! It is a translation layer only: requests become `fovea.v1.GenerateRequest`s and go through the
//! same [`GenerationService`] as gRPC calls, and gRPC statuses become HTTP errors in one place
//! (`error`).

mod error;
mod handler;
mod logprobs;
mod request;
mod response;
mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::generation::GenerationService;

/// Largest request body: a 64 MiB gRPC request's worth of images, base64 taking 4 bytes for 3.
const MAX_BODY_BYTES: usize = (64 << 20) / 3 * 4;

/// What the handlers share.
struct ApiState {
    generation: Arc<GenerationService>,
    /// The default model's name, reported when a request names none.
    model_name: String,
    next_id: AtomicU64,
}

impl ApiState {
    /// A fresh completion id, also the request id the service and the workers see.
    fn next_id(&self) -> String {
        format!("chatcmpl-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// The HTTP routes, served by `generation`, whose default model is `model_name`.
pub fn router(generation: Arc<GenerationService>, model_name: String) -> Router {
    let state = ApiState {
        generation,
        model_name,
        next_id: AtomicU64::new(1),
    };
    Router::new()
        .route("/v1/chat/completions", post(handler::chat_completions))
        .route("/v1/models", get(handler::models))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(state))
}

/// A response whose body is `value` as JSON.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        )
            .into_response(),
    }
}
