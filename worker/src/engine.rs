//! The engine loop: one thread that owns the model's ranks (with their KV pools), the scheduler
//! and every sequence, takes commands from [`EngineHandle`]s, and runs one forward pass per step
//! over everything the scheduler picked, on every tensor-parallel rank at once.
//!
//! A step: apply the pending commands (submissions, cancellations), drop sequences nobody listens
//! to, schedule (reusing cached prefixes), encode the images the scheduled chunks reach (one packed
//! vision batch over all sequences, see [`crate::image_encoding`]), build each chunk's embeddings,
//! run the flat batch through the model on the paged cache, then sample every sequence
//! whose chunk reached its last known token. A sequence's blocks are freed before its final event
//! is sent, and the stats are published in between, so a caller that saw the final event sees the
//! blocks free.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};

use fovea_model::batch::BatchSegment;
use fovea_model::text::TextTokenizer;
use fovea_model::{ModelError, Phi4VisionModel};

use crate::block_allocator::BlockAllocator;
use crate::config::EngineConfig;
use crate::engine_rank::{EngineRanks, RankStep, single_rank};
use crate::error::{EngineError, RequestError};
use crate::event::FinishReason;
use crate::handle::{EngineHandle, EngineStats};
use crate::image_cache::ImageFeatureCache;
use crate::image_encoding::{EncodingCost, StepContent, provide_image_features};
use crate::kv_handoff::{KvBlockRun, KvHandoff, LayerKv, PromptKv};
use crate::request::{RequestId, RequestLimits};
use crate::scheduler::{Chunk, Scheduler, SchedulerLimits};
use crate::sequence::{ChunkInput, Sequence};

/// What handles ask of the engine thread.
pub(crate) enum Command {
    Submit(Box<Sequence>),
    Cancel(RequestId),
    /// Keys and values for a sequence's reserved blocks.
    WriteKv(RequestId, KvBlockRun),
    /// The transfer of a sequence's prompt is complete; the prefill chose this first token.
    CompleteKv(RequestId, u32),
    /// End a sequence with an error.
    Fail(RequestId, RequestError),
    /// Cancel everything and stop.
    Shutdown,
}

/// The state the engine thread owns.
pub struct Engine {
    ranks: EngineRanks,
    scheduler: Scheduler,
    images: ImageFeatureCache,
    sequences: HashMap<RequestId, Sequence>,
    stats: Arc<Mutex<EngineStats>>,
    /// Forward passes run so far.
    steps: u64,
    /// Vision-tower batches run so far.
    image_batches: u64,
    encoding_cost: EncodingCost,
}

impl Engine {
    /// Allocates the KV pool for `config`, starts the engine thread, and returns the first handle
    /// to it. `tokenizer` turns generated tokens into text. The engine stops, cancelling what is
    /// still running, when the last handle is dropped.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use candle_core::{DType, Device};
    /// use fovea_model::{Phi4VisionModel, input::RequestPreparer, text::{ChatMessage, Mode}};
    /// use fovea_worker::{Engine, EngineConfig, GenerateRequest};
    ///
    /// let dir = std::path::Path::new("model");
    /// let preparer = RequestPreparer::from_model_dir(dir)?;
    /// let model = Arc::new(Phi4VisionModel::load(dir, DType::F32, &Device::Cpu)?);
    /// let engine = Engine::start(model, preparer.tokenizer().clone(), EngineConfig::new(1024))?;
    /// let messages = [ChatMessage { role: "user".into(), content: "Hello!".into() }];
    /// let prepared = preparer.prepare(&messages, &[], Mode::NoThink)?;
    /// let output = engine.submit(GenerateRequest::new(prepared, 32)).wait();
    /// println!("{} ({})", output.text, output.completion.reason.as_str());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(
        model: Arc<Phi4VisionModel>,
        tokenizer: Arc<TextTokenizer>,
        config: EngineConfig,
    ) -> Result<EngineHandle, EngineError> {
        let ranks = single_rank(model, &config)?;
        Self::start_on_ranks(ranks, tokenizer, config)
    }

    /// [`Engine::start`] on tensor-parallel ranks (see [`crate::engine_rank::load_ranks`]); rank 0
    /// encodes the images.
    pub fn start_on_ranks(
        ranks: EngineRanks,
        tokenizer: Arc<TextTokenizer>,
        config: EngineConfig,
    ) -> Result<EngineHandle, EngineError> {
        let model_config = ranks.local().model().config().clone();
        config.pool_shape(&model_config.text)?;
        let limits = RequestLimits {
            vocab_size: model_config.text.vocab_size,
            context_len: model_config.text.max_position_embeddings,
            patch_dim: model_config.vision.patch_dim(),
            hidden_size: model_config.text.hidden_size,
            eos_token_ids: model_config.eos_token_ids.clone(),
            kv_capacity_tokens: config.kv_blocks * config.block_size,
        };
        let scheduler_limits = SchedulerLimits {
            max_batch_tokens: config.max_batch_tokens,
            max_prefill_tokens_while_decoding: config.max_prefill_tokens_while_decoding,
            max_running: config.max_running,
            prefix_caching: config.prefix_caching,
        };
        let engine = Engine {
            scheduler: Scheduler::new(
                BlockAllocator::new(config.kv_blocks, config.block_size),
                scheduler_limits,
            ),
            images: ImageFeatureCache::new(config.image_cache_bytes),
            sequences: HashMap::new(),
            stats: Arc::new(Mutex::new(EngineStats::default())),
            steps: 0,
            image_batches: 0,
            encoding_cost: EncodingCost::for_model(&model_config),
            ranks,
        };
        engine.publish_stats();
        let stats = Arc::clone(&engine.stats);
        let (commands, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fovea-engine".into())
            .spawn(move || engine.run(receiver))
            .map_err(EngineError::Spawn)?;
        Ok(EngineHandle::new(
            commands,
            stats,
            limits,
            tokenizer,
            config.block_size,
            thread,
        ))
    }

    fn run(mut self, commands: Receiver<Command>) {
        loop {
            // Idle (or only waiting on transfers): sleep until a command comes. Busy: take what
            // has come and go on.
            let mut next = if !self.scheduler.has_work() {
                Some(commands.recv().unwrap_or(Command::Shutdown))
            } else {
                None
            };
            loop {
                let command = match next.take() {
                    Some(command) => command,
                    None => match commands.try_recv() {
                        Ok(command) => command,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => Command::Shutdown,
                    },
                };
                match command {
                    Command::Submit(sequence) => self.add(*sequence),
                    Command::Cancel(id) => self.finish(id, FinishReason::Cancelled),
                    Command::WriteKv(id, run) => self.write_kv(id, run),
                    Command::CompleteKv(id, token) => self.complete_kv(id, token),
                    Command::Fail(id, error) => self.finish(id, FinishReason::Error(error)),
                    Command::Shutdown => return self.cancel_all(),
                }
            }
            let abandoned: Vec<RequestId> = self
                .sequences
                .values()
                .filter(|s| s.is_abandoned())
                .map(Sequence::id)
                .collect();
            for id in abandoned {
                self.finish(id, FinishReason::Cancelled);
            }
            if self.scheduler.has_work() {
                self.step();
            }
            self.publish_stats();
        }
    }

    fn add(&mut self, sequence: Sequence) {
        let id = sequence.id();
        let reserved = match sequence.handoff() {
            KvHandoff::Import => self.scheduler.reserve(id, sequence.known_tokens()),
            KvHandoff::Local | KvHandoff::Export => {
                self.scheduler.add(id, sequence.known_tokens());
                Ok(())
            }
        };
        self.sequences.insert(id, sequence);
        if let Err(short) = reserved {
            let why = format!("no room for the transferred prompt's KV blocks: {short}");
            return self.finish(id, FinishReason::Error(RequestError::KvTransfer(why)));
        }
        self.publish_stats();
    }

    /// Copies a run of transferred blocks into `id`'s reserved table, each rank taking the KV
    /// heads it holds (ignored once `id` is gone: it was cancelled).
    fn write_kv(&mut self, id: RequestId, run: KvBlockRun) {
        let Some(table) = self.scheduler.receiving_table(id) else {
            return;
        };
        let rank = self.ranks.local();
        let (block_len, layers) = (rank.transfer_block_len(), rank.pool().shape().layers);
        let blocks = run.keys.len() / block_len;
        let fits = run.layer < layers
            && run.keys.len() == blocks * block_len
            && run.values.len() == run.keys.len()
            && run.first_block + blocks <= table.blocks().len();
        if !fits {
            let why = format!(
                "a run of {} values at layer {} block {} does not fit {} reserved blocks of {} values over {} layers",
                run.keys.len(),
                run.layer,
                run.first_block,
                table.blocks().len(),
                block_len,
                layers
            );
            return self.finish(id, FinishReason::Error(RequestError::KvTransfer(why)));
        }
        let (table, run) = (table.clone(), Arc::new(run));
        let written = self.ranks.run(move |rank| {
            rank.import_run(&table, &run);
            Ok(())
        });
        if let Err(e) = written {
            self.finish(id, model_failure(&e));
        }
    }

    /// Starts decoding `id`, whose prompt has arrived, from the prefill's first token.
    fn complete_kv(&mut self, id: RequestId, token: u32) {
        let Some(sequence) = self.sequences.get_mut(&id) else {
            return;
        };
        if self.scheduler.receiving_table(id).is_none() {
            return;
        }
        // Requests that ask for log probabilities are not split (the coordinator keeps them whole).
        let finished = sequence.accept_transferred_token(token, None);
        self.scheduler.received(id, sequence.block_hashes());
        if let Some(reason) = finished {
            self.finish(id, reason);
        }
    }

    /// The keys and values of `id`'s first `prompt_tokens` positions, in whole blocks of every
    /// KV head, gathered from the ranks that hold them.
    fn export_prompt_kv(
        &mut self,
        id: RequestId,
        prompt_tokens: usize,
    ) -> fovea_model::Result<PromptKv> {
        let table = self
            .scheduler
            .running_table(id)
            .ok_or_else(|| ModelError::BadInput(format!("{id} holds no blocks to export")))?
            .clone();
        let rank = self.ranks.local();
        let (block_len, shape) = (rank.transfer_block_len(), *rank.pool().shape());
        let blocks = prompt_tokens.div_ceil(shape.block_size);
        let layers = Arc::new(Mutex::new(vec![
            LayerKv::zeroed(blocks * block_len);
            shape.layers
        ]));
        let filled = Arc::clone(&layers);
        self.ranks.run(move |rank| {
            let mut layers = filled.lock().unwrap_or_else(PoisonError::into_inner);
            rank.export_prompt(&table, prompt_tokens, &mut layers);
            Ok(())
        })?;
        // Peer ranks may still hold `filled` a moment after their step: take the layers out.
        let layers = std::mem::take(&mut *layers.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(PromptKv {
            prompt_tokens,
            block_size: shape.block_size,
            block_len,
            layers,
        })
    }

    fn cancel_all(mut self) {
        let ids: Vec<RequestId> = self.sequences.keys().copied().collect();
        for id in ids {
            self.finish(id, FinishReason::Cancelled);
        }
    }

    /// One scheduling decision and one forward pass.
    fn step(&mut self) {
        let content = StepContent {
            sequences: &self.sequences,
            cache: &self.images,
            cost: self.encoding_cost,
        };
        let schedule = self.scheduler.schedule(&content);
        for id in &schedule.preempted {
            if let Some(sequence) = self.sequences.get_mut(id) {
                sequence.preempted();
                tracing::debug!("{id} preempted: out of KV blocks");
            }
        }
        for (id, tokens) in &schedule.reused {
            if let Some(sequence) = self.sequences.get_mut(id) {
                sequence.reused_prefix(*tokens);
            }
        }
        let model = Arc::clone(self.ranks.local().model());
        let vision = provide_image_features(
            &model,
            &mut self.images,
            &mut self.sequences,
            &schedule.chunks,
        );
        self.image_batches += u64::from(vision.encoded_batch);
        if let Some((ids, error)) = vision.failed {
            tracing::warn!(
                "encoding the images of {} sequences failed: {error}",
                ids.len()
            );
            for id in ids {
                self.finish(id, model_failure(&error));
            }
        }
        let mut chunks = Vec::with_capacity(schedule.chunks.len());
        let mut inputs = Vec::with_capacity(schedule.chunks.len());
        for chunk in schedule.chunks {
            let Some(sequence) = self.sequences.get_mut(&chunk.id) else {
                continue;
            };
            match sequence.chunk_input(chunk.positions.clone()) {
                Ok(input) => {
                    inputs.push(input);
                    chunks.push(chunk);
                }
                Err(e) => {
                    if e == RequestError::GivenBack {
                        tracing::info!(
                            "{} must recompute images it has no features of: given back",
                            chunk.id
                        );
                    }
                    self.finish(chunk.id, FinishReason::Error(e));
                }
            }
        }
        if chunks.is_empty() {
            return;
        }
        self.steps += 1;
        match self.forward(&chunks, inputs) {
            Ok(logits) => self.advance(&chunks, &logits),
            Err(e) => {
                tracing::warn!("forward pass of {} sequences failed: {e}", chunks.len());
                for chunk in &chunks {
                    self.finish(chunk.id, model_failure(&e));
                }
            }
        }
    }

    /// The model, on every rank, over `chunks` (whose inputs are `inputs`): logits of each
    /// chunk's last token, `[chunks, vocab]` flattened.
    fn forward(
        &mut self,
        chunks: &[Chunk],
        inputs: Vec<ChunkInput>,
    ) -> fovea_model::Result<Vec<f32>> {
        let segments = chunks
            .iter()
            .map(|chunk| BatchSegment {
                past: chunk.positions.start,
                tokens: chunk.positions.len(),
            })
            .collect();
        let tables = self
            .scheduler
            .tables(chunks)
            .ok_or_else(|| ModelError::BadInput("a scheduled sequence holds no blocks".into()))?
            .into_iter()
            .cloned()
            .collect();
        let step = RankStep {
            inputs,
            segments,
            tables,
        };
        let logits = self.ranks.run(move |rank| rank.forward(&step))?;
        Ok(logits.flatten_all()?.to_vec1()?)
    }

    /// Records the computed chunks and samples the sequences that reached their last token.
    fn advance(&mut self, chunks: &[Chunk], logits: &[f32]) {
        let vocab = logits.len() / chunks.len();
        for (chunk, row) in chunks.iter().zip(logits.chunks_exact(vocab)) {
            let Some(sequence) = self.sequences.get_mut(&chunk.id) else {
                continue;
            };
            let end = chunk.positions.end;
            sequence.release_features_before(end);
            let generates = end == sequence.known_tokens();
            let mut finished = if generates {
                sequence.sample_next(row)
            } else {
                None
            };
            let (tokens, hashes) = (chunk.positions.len(), sequence.block_hashes());
            self.scheduler.computed(chunk.id, tokens, generates, hashes);
            if generates && sequence.handoff() == KvHandoff::Export {
                let prompt_len = sequence.prompt_len();
                match self.export_prompt_kv(chunk.id, prompt_len) {
                    Ok(kv) => {
                        self.sequences[&chunk.id].send_prompt_kv(kv);
                        finished = finished.or(Some(FinishReason::Length));
                    }
                    Err(e) => finished = Some(model_failure(&e)),
                }
            }
            if let Some(reason) = finished {
                self.finish(chunk.id, reason);
            }
        }
    }

    /// Frees `id`'s blocks, publishes the stats, then sends its final event.
    fn finish(&mut self, id: RequestId, reason: FinishReason) {
        self.scheduler.remove(id);
        if let Some(sequence) = self.sequences.remove(&id) {
            self.publish_stats();
            sequence.finish(reason);
        }
    }

    fn publish_stats(&self) {
        let allocator = self.scheduler.allocator();
        let stats = EngineStats {
            running: self.scheduler.running(),
            receiving: self.scheduler.receiving(),
            waiting: self.scheduler.waiting(),
            free_blocks: allocator.free_blocks(),
            total_blocks: allocator.total_blocks(),
            cached_blocks: allocator.cached_blocks(),
            block_size: allocator.block_size(),
            queued_tokens: self.scheduler.queued_tokens(),
            image_cache_bytes: self.images.used_bytes(),
            images_encoded: self.images.encoded(),
            image_cache_hits: self.images.hits(),
            image_batches: self.image_batches,
            steps: self.steps,
        };
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }
}

fn model_failure(error: &ModelError) -> FinishReason {
    FinishReason::Error(RequestError::Model(error.to_string()))
}
