//! Single-sequence generation: encode the images, prefill the prompt, then decode token by token
//! until a stop token or the token limit. This is `fovea generate`'s engine; the serving worker
//! batches many sequences instead but uses the same model calls. Every forward pass runs on all
//! ranks of a tensor-parallel group (a group of one for the whole model on one rank).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{ModelError, Result};
use crate::kv_cache::ContiguousKvCache;
use crate::model::{ImagePlacement, Phi4VisionModel};
use crate::preprocess::PreparedImage;
use crate::sampling::{Sampler, SamplingParams};
use crate::tp::RankGroup;

/// One rank's part of a generation: its part of the model and the sequence's keys and values.
pub struct SequenceRank {
    model: Arc<Phi4VisionModel>,
    cache: ContiguousKvCache,
}

impl SequenceRank {
    /// A rank computing with `model` (the whole model, or one rank's part).
    pub fn new(model: Arc<Phi4VisionModel>) -> Self {
        let layers = model.config().text.num_layers;
        SequenceRank {
            model,
            cache: ContiguousKvCache::new(layers),
        }
    }

    /// The rank's part of the model.
    pub fn model(&self) -> &Arc<Phi4VisionModel> {
        &self.model
    }
}

/// One generation: a tokenized prompt with its images, and when to stop.
pub struct GenerationRequest<'a> {
    /// Prompt token ids; image positions hold a placeholder id.
    pub prompt_ids: &'a [u32],
    /// Each image with where its tokens sit in the prompt, in prompt order.
    pub images: &'a [(ImagePlacement, PreparedImage)],
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation; the stop token itself is the last of the returned ids.
    pub stop_token_ids: &'a [u32],
    /// Keep generating through stop tokens until `max_new_tokens`.
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was generated (it is the last of `token_ids`).
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

impl FinishReason {
    /// `"stop"` or `"length"`, as the APIs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationTimings {
    /// Vision tower + projector for all images.
    pub vision: Duration,
    /// The prompt's forward pass, up to the first token's logits.
    pub prefill: Duration,
    /// Every decoding step after the first token.
    pub decode: Duration,
    /// The part of `decode` rank 0 spent in collectives (zero on a single rank).
    pub decode_collectives: Duration,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub timings: GenerationTimings,
}

/// Generates for `request` on `ranks`, calling `on_token` with each token as soon as it is chosen.
pub fn generate(
    ranks: &mut RankGroup<SequenceRank>,
    request: &GenerationRequest,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let model = Arc::clone(&ranks.local().model);
    let mut sampler = Sampler::new(request.sampling.clone())?;
    if request.max_new_tokens == 0 {
        return Err(ModelError::BadInput(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    let max_positions = model.config().text.max_position_embeddings;
    if request.prompt_ids.len() + request.max_new_tokens > max_positions {
        return Err(ModelError::BadInput(format!(
            "prompt ({} tokens) plus max_new_tokens ({}) exceeds the context length ({max_positions})",
            request.prompt_ids.len(),
            request.max_new_tokens
        )));
    }
    let mut timings = GenerationTimings::default();

    let started = Instant::now();
    let features = request
        .images
        .iter()
        .map(|(placement, image)| Ok((*placement, model.encode_image(image)?)))
        .collect::<Result<Vec<_>>>()?;
    timings.vision = started.elapsed();

    let started = Instant::now();
    let prompt_ids = request.prompt_ids.to_vec();
    let mut logits = ranks.run(move |rank| {
        rank.cache = ContiguousKvCache::new(rank.model.config().text.num_layers);
        let embeddings = rank.model.prompt_embeddings(&prompt_ids, &features)?;
        rank.model.forward(
            &embeddings,
            &rank.cache.next_batch(prompt_ids.len()),
            &mut rank.cache,
        )
    })?;
    timings.prefill = started.elapsed();

    let started = Instant::now();
    let collectives_before = ranks.collective_time();
    let mut token_ids = Vec::with_capacity(request.max_new_tokens);
    let finish_reason = loop {
        let token = sampler.sample(&logits.flatten_all()?.to_vec1::<f32>()?).id;
        token_ids.push(token);
        on_token(token);
        if !request.ignore_eos && request.stop_token_ids.contains(&token) {
            break FinishReason::Stop;
        }
        if token_ids.len() == request.max_new_tokens {
            break FinishReason::Length;
        }
        logits = ranks.run(move |rank| {
            let embeddings = rank.model.decoder().embed(&[token])?;
            rank.model
                .forward(&embeddings, &rank.cache.next_batch(1), &mut rank.cache)
        })?;
    };
    timings.decode = started.elapsed();
    timings.decode_collectives = ranks.collective_time() - collectives_before;
    Ok(Generation {
        token_ids,
        finish_reason,
        timings,
    })
}
