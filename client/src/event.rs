//! Typed generation events: what a `Generate` stream delivers, and a whole completion collected
//! from them.

use fovea_proto::v1::{self as wire, generate_response};

pub use fovea_proto::v1::{Timings, TokenLogprob, TokenLogprobs, Usage};

use crate::error::ClientError;

/// Which part of the completion a delta belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// From `<think>` to `</think>`, both tags included.
    Reasoning,
    /// Everything outside the think tags.
    Answer,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string was generated.
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
    /// The server cancelled the request; [`Finished::error`] says why.
    Cancelled,
    /// Generation failed after it had started; [`Finished::error`] says why.
    Error,
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The request's id: the caller's, or the one the server assigned.
    pub request_id: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// What went wrong, for [`FinishReason::Error`] and [`FinishReason::Cancelled`].
    pub error: Option<String>,
    /// The stop string that ended generation, if one did.
    pub matched_stop: Option<String>,
    /// The sampler seed that was used; sending it back reproduces the completion.
    pub seed: u64,
    /// Token counts.
    pub usage: Usage,
    /// Where the server's time went.
    pub timings: Timings,
}

/// One event of a generation stream: deltas while tokens are chosen, then one [`Finished`].
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// Newly generated tokens and the text they complete (possibly empty).
    Delta {
        token_ids: Vec<u32>,
        text: String,
        segment: Segment,
        /// One entry per token id, in order, when the request asked for log probabilities
        /// ([`crate::GenerateRequestBuilder::logprobs`]); empty otherwise.
        logprobs: Vec<TokenLogprobs>,
    },
    /// The end of the generation; nothing follows it.
    Finished(Finished),
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl TryFrom<wire::GenerateResponse> for GenerationEvent {
    type Error = ClientError;

    fn try_from(response: wire::GenerateResponse) -> Result<Self, ClientError> {
        match response.event {
            Some(generate_response::Event::Delta(delta)) => {
                let segment = match delta.segment() {
                    wire::Segment::Reasoning => Segment::Reasoning,
                    wire::Segment::Answer => Segment::Answer,
                    wire::Segment::Unspecified => {
                        return Err(ClientError::Protocol("a delta without a segment".into()));
                    }
                };
                if !delta.logprobs.is_empty() && delta.logprobs.len() != delta.token_ids.len() {
                    return Err(ClientError::Protocol(format!(
                        "a delta with {} logprobs entries for {} tokens",
                        delta.logprobs.len(),
                        delta.token_ids.len()
                    )));
                }
                Ok(GenerationEvent::Delta {
                    token_ids: delta.token_ids,
                    text: delta.text,
                    segment,
                    logprobs: delta.logprobs,
                })
            }
            Some(generate_response::Event::Final(last)) => {
                let finish_reason = match last.finish_reason() {
                    wire::FinishReason::Stop => FinishReason::Stop,
                    wire::FinishReason::Length => FinishReason::Length,
                    wire::FinishReason::Cancelled => FinishReason::Cancelled,
                    wire::FinishReason::Error => FinishReason::Error,
                    wire::FinishReason::Unspecified => {
                        return Err(ClientError::Protocol(
                            "a final message without a finish reason".into(),
                        ));
                    }
                };
                Ok(GenerationEvent::Finished(Finished {
                    request_id: last.request_id,
                    finish_reason,
                    error: non_empty(last.error),
                    matched_stop: non_empty(last.matched_stop),
                    seed: last.seed,
                    usage: last.usage.unwrap_or_default(),
                    timings: last.timings.unwrap_or_default(),
                }))
            }
            None => Err(ClientError::Protocol("an empty response message".into())),
        }
    }
}

/// A whole completion, gathered from a stream by [`crate::GenerationStream::collect_completion`].
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The reasoning text, think tags included; empty when the model did not reason.
    pub reasoning: String,
    /// The answer text.
    pub answer: String,
    /// Every generated token id, in order.
    pub token_ids: Vec<u32>,
    /// Each token's log probabilities, in order, when the request asked for them; empty otherwise.
    pub logprobs: Vec<TokenLogprobs>,
    /// How the generation ended.
    pub finished: Finished,
}

/// Gathers deltas into a [`Completion`].
#[derive(Debug, Default)]
pub(crate) struct CompletionBuilder {
    reasoning: String,
    answer: String,
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
}

impl CompletionBuilder {
    /// Adds one event; returns the completion once the final event arrives.
    pub(crate) fn push(&mut self, event: GenerationEvent) -> Option<Completion> {
        match event {
            GenerationEvent::Delta {
                token_ids,
                text,
                segment,
                logprobs,
            } => {
                self.token_ids.extend(token_ids);
                self.logprobs.extend(logprobs);
                match segment {
                    Segment::Reasoning => self.reasoning.push_str(&text),
                    Segment::Answer => self.answer.push_str(&text),
                }
                None
            }
            GenerationEvent::Finished(finished) => Some(Completion {
                reasoning: std::mem::take(&mut self.reasoning),
                answer: std::mem::take(&mut self.answer),
                token_ids: std::mem::take(&mut self.token_ids),
                logprobs: std::mem::take(&mut self.logprobs),
                finished,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(ids: &[u32], text: &str, segment: wire::Segment) -> wire::GenerateResponse {
        with_logprobs(ids, text, segment, Vec::new())
    }

    fn with_logprobs(
        ids: &[u32],
        text: &str,
        segment: wire::Segment,
        logprobs: Vec<TokenLogprobs>,
    ) -> wire::GenerateResponse {
        wire::GenerateResponse {
            event: Some(generate_response::Event::Delta(wire::TokenDelta {
                token_ids: ids.to_vec(),
                text: text.into(),
                segment: segment as i32,
                logprobs,
            })),
        }
    }

    fn logprob(value: f32) -> TokenLogprobs {
        TokenLogprobs {
            logprob: value,
            top: vec![TokenLogprob {
                token_id: 9,
                logprob: value,
            }],
        }
    }

    #[test]
    fn completion_splits_reasoning_from_answer_and_keeps_every_token() {
        let last = wire::GenerateResponse {
            event: Some(generate_response::Event::Final(wire::GenerateFinal {
                request_id: "r1".into(),
                finish_reason: wire::FinishReason::Stop as i32,
                matched_stop: "END".into(),
                ..Default::default()
            })),
        };
        let mut builder = CompletionBuilder::default();
        let responses = [
            delta(&[1, 2], "<think>hm", wire::Segment::Reasoning),
            delta(&[3], "</think>", wire::Segment::Reasoning),
            delta(&[4], "42", wire::Segment::Answer),
            last,
        ];
        let completions: Vec<Completion> = responses
            .into_iter()
            .filter_map(|r| builder.push(GenerationEvent::try_from(r).unwrap()))
            .collect();
        let [completion] = completions.as_slice() else {
            panic!("one completion")
        };
        assert_eq!(completion.reasoning, "<think>hm</think>");
        assert_eq!(completion.answer, "42");
        assert_eq!(completion.token_ids, [1, 2, 3, 4]);
        assert!(completion.logprobs.is_empty(), "none asked for");
        assert_eq!(completion.finished.finish_reason, FinishReason::Stop);
        assert_eq!(completion.finished.matched_stop.as_deref(), Some("END"));
        assert_eq!(completion.finished.error, None);
    }

    #[test]
    fn logprobs_stay_with_their_tokens_into_the_completion() {
        let last = wire::GenerateResponse {
            event: Some(generate_response::Event::Final(wire::GenerateFinal {
                finish_reason: wire::FinishReason::Length as i32,
                ..Default::default()
            })),
        };
        let mut builder = CompletionBuilder::default();
        let responses = [
            with_logprobs(&[5], "a", wire::Segment::Answer, vec![logprob(-0.5)]),
            with_logprobs(&[6], "b", wire::Segment::Answer, vec![logprob(-1.5)]),
            delta(&[], "c", wire::Segment::Answer),
            last,
        ];
        let completion = responses
            .into_iter()
            .find_map(|r| builder.push(GenerationEvent::try_from(r).unwrap()))
            .unwrap();
        assert_eq!(completion.token_ids, [5, 6]);
        assert_eq!(completion.logprobs, [logprob(-0.5), logprob(-1.5)]);
    }

    #[test]
    fn messages_outside_the_contract_are_protocol_errors() {
        let empty = wire::GenerateResponse { event: None };
        let unsegmented = delta(&[1], "a", wire::Segment::Unspecified);
        let misaligned = with_logprobs(&[1, 2], "ab", wire::Segment::Answer, vec![logprob(-1.0)]);
        for response in [empty, unsegmented, misaligned] {
            assert!(matches!(
                GenerationEvent::try_from(response),
                Err(ClientError::Protocol(_))
            ));
        }
    }
}
