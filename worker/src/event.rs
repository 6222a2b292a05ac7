//! What a request's receiver gets: a [`Event::Token`] per generated token, then exactly one
//! [`Event::Finished`] with the reason, the usage and the timings. A prefill for another worker
//! also gets its prompt's keys and values ([`Event::PromptKv`]) before the end.

use std::sync::Arc;
use std::time::Duration;

use fovea_model::logprobs::TokenLogprobs;

use crate::error::RequestError;
use crate::kv_handoff::PromptKv;

/// One message on a request's event channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (possibly empty: part of a character, or text
    /// held back while it could still be the start of a stop string), with its log probabilities
    /// when the request's sampling parameters ask for them.
    Token {
        id: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    /// The prompt's keys and values, after the first token, for a request submitted with
    /// [`EngineHandle::submit_prefill`](crate::EngineHandle::submit_prefill).
    PromptKv(Arc<PromptKv>),
    /// The last event of the request.
    Finished(Completion),
}

/// Why a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (the last token sent) or a stop string.
    Stop,
    /// `max_new_tokens` tokens were generated.
    Length,
    /// [`EngineHandle::cancel`](crate::EngineHandle::cancel), a dropped receiver or engine shutdown.
    Cancelled,
    /// The request was refused or failed.
    Error(RequestError),
}

impl FinishReason {
    /// `"stop"`, `"length"`, `"cancelled"` or `"error"`, as the APIs spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error(_) => "error",
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, image tokens included.
    pub prompt_tokens: usize,
    /// Of the prompt tokens, those that are image patches.
    pub image_tokens: usize,
    /// Prompt tokens whose keys and values were reused instead of computed (0 until the engine
    /// caches prefixes).
    pub cached_tokens: usize,
    /// Generated tokens (all sent as [`Event::Token`]).
    pub completion_tokens: usize,
}

/// Where one request's time went, measured from its submission.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Until its first forward pass (or until it ended, if it never ran).
    pub queue: Duration,
    /// Until the first generated token, if there was one.
    pub time_to_first_token: Option<Duration>,
    /// Until the final event.
    pub total: Duration,
}

/// The final event's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub reason: FinishReason,
    /// Text not yet sent in token events (the end of an unfinished character, or held-back text
    /// that did not become a stop string): the token texts followed by this are the whole completion.
    pub text: String,
    pub usage: Usage,
    pub timings: Timings,
    /// Times the request was preempted (its cache freed and recomputed later).
    pub preemptions: usize,
}
