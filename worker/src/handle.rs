//! The engine's client side: [`EngineHandle`] submits, cancels and reads stats from any thread;
//! [`RequestStream`] is one request's event channel.
//!
//! Requests are validated here, on the caller's thread: one that can never run gets its final
//! error event at once and never reaches the engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SendError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use fovea_model::logprobs::TokenLogprobs;
use fovea_model::text::TextTokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::engine::Command;
use crate::error::RequestError;
use crate::event::{Completion, Event, FinishReason, Timings, Usage};
use crate::kv_handoff::{KvBlockRun, KvHandoff};
use crate::request::{GenerateRequest, RequestId, RequestLimits};
use crate::sequence::Sequence;

/// A snapshot of the engine's load, published after every step and every finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences holding KV blocks.
    pub running: usize,
    /// Of the running sequences, those waiting for their prompt's keys and values from a
    /// prefill worker.
    pub receiving: usize,
    /// Sequences waiting for blocks (new, or preempted).
    pub waiting: usize,
    /// Blocks no sequence holds, cached ones included.
    pub free_blocks: usize,
    pub total_blocks: usize,
    /// Of the free blocks, those that keep a prefix for reuse (taken last, evicted when needed).
    pub cached_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Tokens submitted but not yet computed (prompts, and recomputation of preempted sequences).
    pub queued_tokens: usize,
    /// Bytes of cached image features.
    pub image_cache_bytes: usize,
    /// Images run through the vision tower so far.
    pub images_encoded: u64,
    /// Images whose features came from the cache.
    pub image_cache_hits: u64,
    /// Vision-tower runs so far, each encoding every image one step needed (so fewer than
    /// `images_encoded` when steps batch images of several requests).
    pub image_batches: u64,
    /// Forward passes run so far: rises while the engine makes progress.
    pub steps: u64,
}

/// One request's events, and its id for [`EngineHandle::cancel`].
#[derive(Debug)]
pub struct RequestStream {
    pub id: RequestId,
    /// Token events, then one [`Event::Finished`]. Dropping the receiver cancels the request.
    pub events: UnboundedReceiver<Event>,
}

/// Everything a request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub token_ids: Vec<u32>,
    /// One entry per token when the request asked for log probabilities; empty otherwise.
    pub logprobs: Vec<TokenLogprobs>,
    /// The whole completion text.
    pub text: String,
    pub completion: Completion,
}

impl RequestStream {
    /// Blocks until the request ends and returns all it produced. Not for use inside an async
    /// runtime (await `events.recv()` there).
    pub fn wait(mut self) -> RequestOutput {
        let (mut token_ids, mut logprobs, mut text) = (Vec::new(), Vec::new(), String::new());
        while let Some(event) = self.events.blocking_recv() {
            match event {
                Event::Token {
                    id,
                    text: delta,
                    logprobs: token_logprobs,
                } => {
                    token_ids.push(id);
                    logprobs.extend(token_logprobs);
                    text.push_str(&delta);
                }
                Event::PromptKv(_) => {}
                Event::Finished(completion) => {
                    text.push_str(&completion.text);
                    return RequestOutput {
                        token_ids,
                        logprobs,
                        text,
                        completion,
                    };
                }
            }
        }
        let completion = Completion {
            reason: FinishReason::Error(RequestError::EngineStopped),
            text: String::new(),
            usage: Usage {
                completion_tokens: token_ids.len(),
                ..Usage::default()
            },
            timings: Timings::default(),
            preemptions: 0,
        };
        RequestOutput {
            token_ids,
            logprobs,
            text,
            completion,
        }
    }
}

/// What every handle of one engine shares; dropping the last one stops the engine.
struct Shared {
    commands: Sender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    limits: RequestLimits,
    tokenizer: Arc<TextTokenizer>,
    block_size: usize,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A cheap, cloneable way to talk to a running engine from any thread.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    pub(crate) fn new(
        commands: Sender<Command>,
        stats: Arc<Mutex<EngineStats>>,
        limits: RequestLimits,
        tokenizer: Arc<TextTokenizer>,
        block_size: usize,
        thread: JoinHandle<()>,
    ) -> Self {
        EngineHandle {
            shared: Arc::new(Shared {
                commands,
                stats,
                limits,
                tokenizer,
                block_size,
                next_id: AtomicU64::new(0),
                thread: Some(thread),
            }),
        }
    }

    /// Queues `request`. A request that is malformed or can never fit (longer than the context
    /// or the whole KV cache) gets its final error event at once.
    pub fn submit(&self, request: GenerateRequest) -> RequestStream {
        self.submit_with(request, KvHandoff::Local)
    }

    /// Queues `request` as a prefill for another worker: after its prompt, the first token, then
    /// an [`Event::PromptKv`] with the prompt's keys and values, then the end (its blocks are
    /// freed). `max_new_tokens` still bounds what the prompt must leave room for in the context.
    pub fn submit_prefill(&self, request: GenerateRequest) -> RequestStream {
        self.submit_with(request, KvHandoff::Export)
    }

    /// Takes `request` to decode from a prompt another worker prefills: its prompt's blocks are
    /// reserved at once (or it ends with a [`RequestError::KvTransfer`] error), filled by
    /// [`EngineHandle::write_kv`], and decoding starts at [`EngineHandle::complete_kv`].
    pub fn submit_awaiting_kv(&self, request: GenerateRequest) -> RequestStream {
        self.submit_with(request, KvHandoff::Import)
    }

    /// Writes a run of transferred blocks into request `id`'s reserved blocks. A run that does not
    /// fit them ends the request with an error; one for a request that is gone is dropped.
    pub fn write_kv(&self, id: RequestId, run: KvBlockRun) {
        let _ = self.shared.commands.send(Command::WriteKv(id, run));
    }

    /// Ends request `id`'s transfer: it decodes from `first_token`, which the prefill chose.
    pub fn complete_kv(&self, id: RequestId, first_token: u32) {
        let _ = self
            .shared
            .commands
            .send(Command::CompleteKv(id, first_token));
    }

    /// Ends request `id` with `error` (a broken transfer); nothing happens if it already finished.
    pub fn fail(&self, id: RequestId, error: RequestError) {
        let _ = self.shared.commands.send(Command::Fail(id, error));
    }

    fn submit_with(&self, request: GenerateRequest, handoff: KvHandoff) -> RequestStream {
        let id = RequestId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let submitted = Instant::now();
        let (sender, events) = unbounded_channel();
        let prompt_tokens = request.prompt_ids.len();
        let sequence = self.shared.limits.validate(request).and_then(|request| {
            let tokenizer = Arc::clone(&self.shared.tokenizer);
            Sequence::new(
                id,
                request,
                tokenizer,
                sender.clone(),
                submitted,
                self.shared.block_size,
                handoff,
            )
        });
        match sequence {
            Ok(sequence) => {
                if let Err(SendError(Command::Submit(sequence))) = self
                    .shared
                    .commands
                    .send(Command::Submit(Box::new(sequence)))
                {
                    sequence.finish(FinishReason::Error(RequestError::EngineStopped));
                }
            }
            Err(error) => {
                tracing::debug!("{id} refused: {error}");
                reject(&sender, error, prompt_tokens, submitted);
            }
        }
        RequestStream { id, events }
    }

    /// Cancels request `id`: its blocks are freed and its final event says `cancelled`. Nothing
    /// happens if it already finished.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.shared.commands.send(Command::Cancel(id));
    }

    /// The engine's load as of its last step.
    pub fn stats(&self) -> EngineStats {
        *self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends the final event of a request that never reached the engine.
fn reject(
    events: &UnboundedSender<Event>,
    error: RequestError,
    prompt_tokens: usize,
    submitted: Instant,
) {
    let waited = submitted.elapsed();
    let _ = events.send(Event::Finished(Completion {
        reason: FinishReason::Error(error),
        text: String::new(),
        usage: Usage {
            prompt_tokens,
            ..Usage::default()
        },
        timings: Timings {
            queue: waited,
            time_to_first_token: None,
            total: waited,
        },
        preemptions: 0,
    }));
}
