//! The HTTP handlers. Each calls the `Generation` service through its gRPC trait, so validation,
//! admission, cancellation and the one-final-message guarantee are the gRPC API's own.
//!
//! A streaming response owns the service's stream: when the client disconnects, the response body
//! is dropped with it, which is how a gRPC client cancels, and the worker job is aborted at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use fovea_proto::v1::generation_server::Generation;
use fovea_proto::v1::{GenerateResponse, ListModelsRequest, generate_response};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status};

use super::error::ApiError;
use super::request::generate_request;
use super::response::{Completion, Text};
use super::types::{ChatCompletionRequest, Model, ModelList};
use super::{ApiState, json};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::unreadable_body(rejection.status(), rejection.body_text())
    })?;
    let request: ChatCompletionRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    let completion = Completion {
        id: state.next_id(),
        created: unix_now(),
        model: if request.model.is_empty() {
            state.model_name.clone()
        } else {
            request.model.clone()
        },
        logprobs_tokenizer: request
            .logprobs
            .then(|| Arc::clone(state.generation.tokenizer())),
    };
    let stream = request.stream;
    let request = generate_request(request, completion.id.clone())?;
    let responses = state
        .generation
        .generate(Request::new(request))
        .await?
        .into_inner();
    if stream {
        Ok(Sse::new(events(completion, responses)).into_response())
    } else {
        let (text, last) = collect(responses).await?;
        Ok(json(StatusCode::OK, &completion.response(text, &last)?))
    }
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let listed = state
        .generation
        .list_models(Request::new(ListModelsRequest {}))
        .await?
        .into_inner();
    let data = listed
        .models
        .into_iter()
        .map(|model| Model {
            id: model.name,
            object: "model",
            created: 0,
            owned_by: "fovea",
            context_length: model.context_length,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &ModelList {
            object: "list",
            data,
        },
    ))
}

/// The whole completion's text and its final message.
async fn collect(
    mut responses: impl Stream<Item = Result<GenerateResponse, Status>> + Unpin,
) -> Result<(Text, fovea_proto::v1::GenerateFinal), ApiError> {
    let mut text = Text::default();
    while let Some(response) = responses.next().await {
        match response?.event {
            Some(generate_response::Event::Delta(delta)) => text.push(delta),
            Some(generate_response::Event::Final(last)) => return Ok((text, last)),
            None => {}
        }
    }
    Err(Status::internal("the generation ended without a final message").into())
}

/// The Server-Sent Events of a streaming response: a chunk naming the role, one chunk per delta
/// with text, a last chunk with the finish reason and usage (or an error object), then `[DONE]`.
fn events(
    completion: Completion,
    responses: impl Stream<Item = Result<GenerateResponse, Status>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let opening = json_event(&completion.opening_chunk());
    let chunks = responses.filter_map(move |response| match response.map(|r| r.event) {
        Ok(Some(generate_response::Event::Delta(delta))) => completion
            .delta_chunk(delta)
            .map(|chunk| json_event(&chunk)),
        Ok(Some(generate_response::Event::Final(last))) => {
            Some(match completion.final_chunk(&last) {
                Ok(chunk) => json_event(&chunk),
                Err(error) => json_event(&error.body()),
            })
        }
        Ok(None) => None,
        Err(status) => Some(json_event(&ApiError::from(status).body())),
    });
    tokio_stream::once(opening)
        .chain(chunks)
        .chain(tokio_stream::once(Event::default().data("[DONE]")))
        .map(Ok)
}

/// An event whose data is `value` as JSON.
fn json_event(value: &impl serde::Serialize) -> Event {
    // Serializing these plain structs cannot fail; an empty object stands in if it ever did.
    Event::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
