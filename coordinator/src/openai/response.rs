//! From the `Generation` stream to OpenAI's response objects: a whole `chat.completion`, or one
//! `chat.completion.chunk` per delta. Reasoning deltas become `reasoning_content`, answer deltas
//! `content`; their tokens' log probabilities, when asked for, `logprobs.content`.

use std::sync::Arc;

use fovea_model::text::TextTokenizer;
use fovea_proto::v1::{self as wire, FinishReason, GenerateFinal, TokenDelta, TokenLogprobs};
use tonic::Status;

use super::error::ApiError;
use super::logprobs::content_logprobs;
use super::types::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChoiceLogprobs, ChunkChoice,
    ChunkDelta, Usage,
};

/// What every object of one completion shares.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    /// Unix time in seconds when the request was received.
    pub created: u64,
    pub model: String,
    /// When the request asked for log probabilities: the tokenizer that spells their tokens.
    pub logprobs_tokenizer: Option<Arc<TextTokenizer>>,
}

/// The text of a whole completion, split by segment, and its tokens' log probabilities.
#[derive(Debug, Default)]
pub struct Text {
    pub reasoning: String,
    pub answer: String,
    /// Every token id that came with log probabilities, and those, in order.
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
}

impl Text {
    /// Appends a delta's text to its segment and keeps its log probabilities.
    pub fn push(&mut self, delta: TokenDelta) {
        match delta.segment() {
            wire::Segment::Reasoning => self.reasoning.push_str(&delta.text),
            wire::Segment::Answer | wire::Segment::Unspecified => self.answer.push_str(&delta.text),
        }
        if !delta.logprobs.is_empty() {
            self.token_ids.extend(delta.token_ids);
            self.logprobs.extend(delta.logprobs);
        }
    }
}

impl Completion {
    /// The non-streaming response, once the final message has come.
    pub fn response(self, text: Text, last: &GenerateFinal) -> Result<ChatCompletion, ApiError> {
        let logprobs = self.logprobs(&text.token_ids, &text.logprobs);
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
                logprobs,
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
        self.chunk(delta, None, None, None)
    }

    /// The chunk for a delta, or none for a delta with neither text nor log probabilities (a
    /// character still incomplete, no logprobs asked for).
    pub fn delta_chunk(&self, delta: TokenDelta) -> Option<ChatCompletionChunk> {
        if delta.text.is_empty() && delta.logprobs.is_empty() {
            return None;
        }
        let segment = delta.segment();
        // A delta without tokens (text held until the end) has no logprobs object, as the first chunk.
        let logprobs = (!delta.logprobs.is_empty())
            .then(|| self.logprobs(&delta.token_ids, &delta.logprobs))
            .flatten();
        let text = (!delta.text.is_empty()).then_some(delta.text);
        let chunk_delta = match segment {
            wire::Segment::Reasoning => ChunkDelta {
                reasoning_content: text,
                ..Default::default()
            },
            wire::Segment::Answer | wire::Segment::Unspecified => ChunkDelta {
                content: text,
                ..Default::default()
            },
        };
        Some(self.chunk(chunk_delta, logprobs, None, None))
    }

    /// The last chunk of a stream: why it ended and the token counts.
    pub fn final_chunk(&self, last: &GenerateFinal) -> Result<ChatCompletionChunk, ApiError> {
        Ok(self.chunk(
            ChunkDelta::default(),
            None,
            Some(finish_reason(last)?),
            Some(usage(last)),
        ))
    }

    /// The `logprobs` object of `token_ids`, if the request asked for log probabilities.
    fn logprobs(&self, token_ids: &[u32], logprobs: &[TokenLogprobs]) -> Option<ChoiceLogprobs> {
        let tokenizer = self.logprobs_tokenizer.as_ref()?;
        Some(ChoiceLogprobs {
            content: content_logprobs(tokenizer, token_ids, logprobs),
        })
    }

    fn chunk(
        &self,
        delta: ChunkDelta,
        logprobs: Option<ChoiceLogprobs>,
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
                logprobs,
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
        FinishReason::Cancelled => Err(Status::unavailable(format!(
            "the server cancelled the generation: {}",
            last.error
        ))
        .into()),
        FinishReason::Error | FinishReason::Unspecified => {
            Err(Status::internal(format!("the generation failed: {}", last.error)).into())
        }
    }
}

fn usage(last: &GenerateFinal) -> Usage {
    let (prompt_tokens, completion_tokens) = last.usage.as_ref().map_or((0, 0), |usage| {
        (usage.prompt_tokens, usage.completion_tokens)
    });
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}
