//! The stream of one generation: typed events that end with the final event; a stream that ends
//! without one is an error.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use fovea_proto::v1::GenerateResponse;
use tokio_stream::{Stream, StreamExt};
use tonic::Streaming;

use crate::error::ClientError;
use crate::event::{Completion, CompletionBuilder, GenerationEvent};

/// The events of one generation, as a [`Stream`] of `Result<GenerationEvent, ClientError>`.
/// Dropping it cancels the generation on the server, which frees the request's memory at once.
pub struct GenerationStream {
    inner: Streaming<GenerateResponse>,
    finished: bool,
}

impl GenerationStream {
    pub(crate) fn new(inner: Streaming<GenerateResponse>) -> Self {
        GenerationStream {
            inner,
            finished: false,
        }
    }

    /// Reads the whole stream into one [`Completion`]: reasoning and answer text, token ids and
    /// the final information.
    pub async fn collect_completion(mut self) -> Result<Completion, ClientError> {
        let mut builder = CompletionBuilder::default();
        while let Some(event) = self.next().await {
            if let Some(completion) = builder.push(event?) {
                return Ok(completion);
            }
        }
        Err(ClientError::Protocol(
            "the stream ended without a final message".into(),
        ))
    }
}

impl Stream for GenerationStream {
    type Item = Result<GenerationEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
            Some(Ok(response)) => GenerationEvent::try_from(response),
            Some(Err(status)) => Err(ClientError::from(status)),
            None => Err(ClientError::Protocol(
                "the stream ended without a final message".into(),
            )),
        };
        self.finished = !matches!(item, Ok(GenerationEvent::Delta { .. }));
        Poll::Ready(Some(item))
    }
}
