//! From the `Generation` stream to OpenAI's response objects: a whole `chat.completion`, or one
//! `chat.completion.chunk` per delta. Reasoning deltas become `reasoning_content`, answer deltas
//! `content`.

use fovea_proto::v1::{self as wire, FinishReason, GenerateFinal, TokenDelta};
use tonic::Status;

use super::error::ApiError;
use super::types::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, ChunkDelta, Usage,
};

/// What every object of one completion shares.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    /// Unix time in seconds when the request was received.
    pub created: u64,
    pub model: String,
}

/// The text of a whole completion, split by segment.
#[derive(Debug, Default)]
pub struct Text {
    pub reasoning: String,
    pub answer: String,
}

impl Text {
    /// Appends a delta's text to its segment.
    pub fn push(&mut self, delta: &TokenDelta) {
        match delta.segment() {
            wire::Segment::Reasoning => self.reasoning.push_str(&delta.text),
            wire::Segment::Answer | wire::Segment::Unspecified => self.answer.push_str(&delta.text),
        }
    }
}

impl Completion {
    /// The non-streaming response, once the final message has come.
    pub fn response(self, text: Text, last: &GenerateFinal) -> Result<ChatCompletion, ApiError> {
        Ok(ChatCompletion {
            id: self.id,
            object: "chat.completion",
            created: self.created,
            model: self.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: text.answer,
                    reasoning_content: text.reasoning,
                },
                finish_reason: finish_reason(last)?,
            }],
            usage: usage(last),
        })
    }

    /// The first chunk of a stream: the message's role, no text yet.
    pub fn opening_chunk(&self) -> ChatCompletionChunk {
        let delta = ChunkDelta {
            role: Some("assistant"),
            ..Default::default()
        };
        self.chunk(delta, None, None)
    }

    /// The chunk for a delta, or none for a delta without text (a character still incomplete).
    pub fn delta_chunk(&self, delta: TokenDelta) -> Option<ChatCompletionChunk> {
        if delta.text.is_empty() {
            return None;
        }
        let delta = match delta.segment() {
            wire::Segment::Reasoning => ChunkDelta {
                reasoning_content: Some(delta.text),
                ..Default::default()
            },
            wire::Segment::Answer | wire::Segment::Unspecified => ChunkDelta {
                content: Some(delta.text),
                ..Default::default()
            },
        };
        Some(self.chunk(delta, None, None))
    }

    /// The last chunk of a stream: why it ended and the token counts.
    pub fn final_chunk(&self, last: &GenerateFinal) -> Result<ChatCompletionChunk, ApiError> {
        Ok(self.chunk(ChunkDelta::default(), Some(finish_reason(last)?), Some(usage(last))))
    }

    fn chunk(
        &self,
        delta: ChunkDelta,
        finish_reason: Option<&'static str>,
        usage: Option<Usage>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage,
        }
    }
}

/// OpenAI's finish reason; a generation the server cancelled or that failed is an error instead.
fn finish_reason(last: &GenerateFinal) -> Result<&'static str, ApiError> {
    match last.finish_reason() {
        FinishReason::Stop => Ok("stop"),
        FinishReason::Length => Ok("length"),
        FinishReason::Cancelled => {
            Err(Status::unavailable(format!("the server cancelled the generation: {}", last.error)).into())
        }
        FinishReason::Error | FinishReason::Unspecified => {
            Err(Status::internal(format!("the generation failed: {}", last.error)).into())
        }
    }
}

fn usage(last: &GenerateFinal) -> Usage {
    let (prompt_tokens, completion_tokens) = last
        .usage
        .as_ref()
        .map_or((0, 0), |usage| (usage.prompt_tokens, usage.completion_tokens));
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}
