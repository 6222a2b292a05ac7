//! Single-sequence generation: encode the images, prefill the prompt, then decode token by token
//! until a stop token or the token limit. This is `fovea generate`'s engine; the serving worker
//! batches many sequences instead but uses the same model calls.

use std::time::{Duration, Instant};

use crate::error::{ModelError, Result};
use crate::kv_cache::ContiguousKvCache;
use crate::model::{ImagePlacement, Phi4VisionModel};
use crate::preprocess::PreparedImage;
use crate::sampling::{Sampler, SamplingParams};

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
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub timings: GenerationTimings,
}

/// Generates for `request`, calling `on_token` with each token as soon as it is chosen.
pub fn generate(
    model: &Phi4VisionModel,
    request: &GenerationRequest,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let mut sampler = Sampler::new(request.sampling.clone())?;
    if request.max_new_tokens == 0 {
        return Err(ModelError::BadInput("max_new_tokens must be at least 1".into()));
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
    let mut cache = ContiguousKvCache::new(model.config().text.num_layers);
    let embeddings = model.prompt_embeddings(request.prompt_ids, &features)?;
    let mut logits = model.forward(&embeddings, &cache.next_batch(request.prompt_ids.len()), &mut cache)?;
    timings.prefill = started.elapsed();

    let started = Instant::now();
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
        logits = model.forward(&model.decoder().embed(&[token])?, &cache.next_batch(1), &mut cache)?;
    };
    timings.decode = started.elapsed();
    Ok(Generation {
        token_ids,
        finish_reason,
        timings,
    })
}
