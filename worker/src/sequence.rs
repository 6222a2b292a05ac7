//! One admitted request inside the engine: its tokens (prompt, then generated) and their block
//! hashes, its image features, its sampler and text stream, its event channel and its clock.
//!
//! The KV side of a sequence (blocks, tokens computed, queue position) is the scheduler's; this
//! is the content side. Every event a request gets is sent from here, and [`Sequence::finish`]
//! consumes the sequence, so exactly one final event goes out.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use fovea_model::logprobs::TokenLogprobs;
use fovea_model::preprocess::PreparedImage;
use fovea_model::sampling::Sampler;
use fovea_model::text::{TextStream, TextTokenizer};
use fovea_model::{ImagePlacement, Phi4VisionModel};
use tokio::sync::mpsc::UnboundedSender;

use crate::block_hash::{BlockHash, extend_block_hashes};
use crate::error::RequestError;
use crate::event::{Completion, Event, FinishReason, Timings, Usage};
use crate::image_cache::ImageKey;
use crate::kv_handoff::{KvHandoff, PromptKv};
use crate::request::{ImageSource, RequestId, ValidRequest};

/// What a forward pass needs of one scheduled chunk, for every tensor-parallel rank to build its
/// embeddings from: token ids, and image features with where they go among them.
pub struct ChunkInput {
    pub ids: Vec<u32>,
    pub images: Vec<(ImagePlacement, Tensor)>,
}

impl ChunkInput {
    /// The chunk's decoder input `[ids.len(), hidden]` on `model` (a collective under tensor
    /// parallelism: every rank calls it for the same chunks).
    pub fn embeddings(&self, model: &Phi4VisionModel) -> fovea_model::Result<Tensor> {
        model.prompt_embeddings(&self.ids, &self.images)
    }
}

/// An image of a sequence that has no features yet.
pub struct UnencodedImage<'a> {
    /// Which of the request's images it is.
    pub index: usize,
    pub key: ImageKey,
    /// Position of its first token.
    pub start: usize,
    pub pixels: &'a PreparedImage,
}

/// Engine-side state of one request.
pub struct Sequence {
    id: RequestId,
    request: ValidRequest,
    /// Prompt ids, then every generated token.
    tokens: Vec<u32>,
    /// Where the images sit and what they are, for block hashes.
    image_keys: Vec<(ImagePlacement, ImageKey)>,
    block_size: usize,
    /// Hashes of the full blocks of `tokens`.
    block_hashes: Vec<BlockHash>,
    /// Prompt tokens taken from the prefix cache at the first admission.
    cached_tokens: usize,
    /// Per image, its features while a chunk still has to read them.
    features: Vec<Option<Tensor>>,
    sampler: Sampler,
    text: TextStream,
    events: UnboundedSender<Event>,
    submitted: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    preemptions: usize,
    handoff: KvHandoff,
}

impl Sequence {
    /// A sequence for `request`, whose events go to `events`, hashing its tokens in blocks of
    /// `block_size`, its prompt's keys and values crossing workers as `handoff` says.
    pub fn new(
        id: RequestId,
        request: ValidRequest,
        tokenizer: Arc<TextTokenizer>,
        events: UnboundedSender<Event>,
        submitted: Instant,
        block_size: usize,
        handoff: KvHandoff,
    ) -> Result<Self, RequestError> {
        let mut sampler = Sampler::new(request.sampling.clone())
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        sampler.skip(request.replayed_tokens);
        let tokens = request.prompt_ids.clone();
        let image_keys: Vec<_> = request
            .images
            .iter()
            .map(|image| (image.placement, image.key))
            .collect();
        let mut block_hashes = Vec::new();
        extend_block_hashes(&mut block_hashes, &tokens, &image_keys, block_size);
        Ok(Sequence {
            id,
            tokens,
            image_keys,
            block_size,
            block_hashes,
            cached_tokens: 0,
            features: vec![None; request.images.len()],
            sampler,
            text: TextStream::new(
                tokenizer,
                request.skip_special_tokens,
                request.stop_strings.clone(),
            ),
            events,
            submitted,
            first_scheduled: None,
            first_token: None,
            preemptions: 0,
            handoff,
            request,
        })
    }

    /// How the prompt's keys and values cross workers.
    pub fn handoff(&self) -> KvHandoff {
        self.handoff
    }

    /// Prompt tokens.
    pub fn prompt_len(&self) -> usize {
        self.request.prompt_ids.len()
    }

    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Tokens known so far: the prompt and everything generated.
    pub fn known_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nobody listens to the events any more.
    pub fn is_abandoned(&self) -> bool {
        self.events.is_closed()
    }

    /// Hashes of the full blocks of the known tokens.
    pub fn block_hashes(&self) -> &[BlockHash] {
        &self.block_hashes
    }

    /// Notes that the sequence's cache was freed; it will be recomputed.
    pub fn preempted(&mut self) {
        self.preemptions += 1;
    }

    /// Notes that the first `tokens` tokens' keys and values came from the prefix cache; counted
    /// in the usage at the first admission only (later ones are recomputations).
    pub fn reused_prefix(&mut self, tokens: usize) {
        if self.preemptions == 0 {
            self.cached_tokens = tokens.min(self.request.prompt_ids.len());
        }
    }

    /// The images among tokens `range` that have to be run through the vision tower (or found in
    /// the feature cache) before the range can be computed, in prompt order.
    pub fn images_to_encode(
        &self,
        range: Range<usize>,
    ) -> impl Iterator<Item = UnencodedImage<'_>> {
        self.request
            .images
            .iter()
            .zip(&self.features)
            .enumerate()
            .filter(move |(_, (image, features))| {
                features.is_none() && overlaps(image.placement, &range)
            })
            .filter_map(|(index, (image, _))| match &image.source {
                ImageSource::Pixels(pixels) => Some(UnencodedImage {
                    index,
                    key: image.key,
                    start: image.placement.start,
                    pixels,
                }),
                ImageSource::Features { .. } | ImageSource::KeyOnly { .. } => None,
            })
    }

    /// Gives image `index` its features (see [`Sequence::images_to_encode`]).
    pub fn set_features(&mut self, index: usize, features: Tensor) {
        self.features[index] = Some(features);
    }

    /// Decoder input for tokens `range`, which were just scheduled: their ids, and the image
    /// features that go over the image positions among them (encoded images must have been given
    /// their features by [`Sequence::set_features`]). The first call ends the request's time in
    /// the queue. [`RequestError::GivenBack`] when the range needs an image known by key only.
    pub fn chunk_input(&mut self, range: Range<usize>) -> Result<ChunkInput, RequestError> {
        self.first_scheduled.get_or_insert_with(Instant::now);
        let mut pieces = Vec::new();
        for (image, features) in self.request.images.iter().zip(&mut self.features) {
            if !overlaps(image.placement, &range) {
                continue;
            }
            let start = image.placement.start;
            let overlap = start.max(range.start)..(start + image.placement.len).min(range.end);
            let features = match features {
                Some(features) => features,
                None => features.insert(match &image.source {
                    ImageSource::Features { features, .. } => features.clone(),
                    ImageSource::Pixels(_) => {
                        return Err(RequestError::Model(
                            "an image was scheduled before it was encoded".into(),
                        ));
                    }
                    // Preempted after its prompt came from a prefill worker, with its blocks
                    // no longer in the prefix cache.
                    ImageSource::KeyOnly { .. } => return Err(RequestError::GivenBack),
                }),
            };
            let placement = ImagePlacement {
                start: overlap.start - range.start,
                len: overlap.len(),
            };
            pieces.push((
                placement,
                features
                    .narrow(0, overlap.start - start, overlap.len())
                    .map_err(|e| RequestError::Model(e.to_string()))?,
            ));
        }
        Ok(ChunkInput {
            ids: self.tokens[range].to_vec(),
            images: pieces,
        })
    }

    /// Forgets the features of images that lie wholly before position `computed`.
    pub fn release_features_before(&mut self, computed: usize) {
        for (image, features) in self.request.images.iter().zip(&mut self.features) {
            if image.placement.start + image.placement.len <= computed {
                *features = None;
            }
        }
    }

    /// Picks the next token from its logits, sends it, and says whether the request is done.
    pub fn sample_next(&mut self, logits: &[f32]) -> Option<FinishReason> {
        let sampled = self.sampler.sample(logits);
        self.push_generated(sampled.id, sampled.logprobs)
    }

    /// Takes `token` (with its log probabilities, if the request asked for them), the first
    /// token a prefill worker chose with this request's sampling, as if this sequence had sampled
    /// it; sends it and says whether the request is done.
    pub fn accept_transferred_token(
        &mut self,
        token: u32,
        logprobs: Option<TokenLogprobs>,
    ) -> Option<FinishReason> {
        self.first_scheduled.get_or_insert_with(Instant::now);
        self.sampler.skip(1);
        self.push_generated(token, logprobs)
    }

    /// Sends the prompt's keys and values a prefill computed.
    pub fn send_prompt_kv(&self, kv: PromptKv) {
        let _ = self.events.send(Event::PromptKv(Arc::new(kv)));
    }

    fn push_generated(
        &mut self,
        token: u32,
        logprobs: Option<TokenLogprobs>,
    ) -> Option<FinishReason> {
        self.tokens.push(token);
        extend_block_hashes(
            &mut self.block_hashes,
            &self.tokens,
            &self.image_keys,
            self.block_size,
        );
        self.first_token.get_or_insert_with(Instant::now);
        let delta = match self.text.push(token) {
            Ok(delta) => delta,
            Err(e) => return Some(FinishReason::Error(RequestError::Model(e.to_string()))),
        };
        let _ = self.events.send(Event::Token {
            id: token,
            text: delta.text,
            logprobs,
        });
        if delta.matched_stop.is_some() || self.request.stop_token_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.generated() == self.request.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.request.prompt_ids.len()
    }

    /// Sends the final event.
    pub fn finish(self, reason: FinishReason) {
        let now = Instant::now();
        let completion_tokens = self.generated();
        let since_submitted = |at: Instant| at.duration_since(self.submitted);
        let completion = Completion {
            text: match reason {
                FinishReason::Stop | FinishReason::Length => self.text.finish(),
                FinishReason::Cancelled | FinishReason::Error(_) => String::new(),
            },
            reason,
            usage: Usage {
                prompt_tokens: self.request.prompt_ids.len(),
                image_tokens: self.request.image_tokens(),
                cached_tokens: self.cached_tokens,
                completion_tokens,
            },
            timings: Timings {
                queue: since_submitted(self.first_scheduled.unwrap_or(now)),
                time_to_first_token: self.first_token.map(since_submitted),
                total: since_submitted(now),
            },
            preemptions: self.preemptions,
        };
        let _ = self.events.send(Event::Finished(completion));
    }
}

/// Whether any of an image's tokens lie in `range`.
fn overlaps(placement: ImagePlacement, range: &Range<usize>) -> bool {
    placement.start < range.end && range.start < placement.start + placement.len
}
