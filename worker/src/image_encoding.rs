//! The vision stage of an engine step: before the forward pass, every image that the step's
//! chunks reach gets its features, from the feature cache when it holds them, else from one packed
//! vision-tower batch over all the step's sequences, each distinct image encoded once however
//! many sequences show it. Before that, the scheduler sizes the chunks knowing what encoding
//! their images will cost ([`EncodingCost`], [`StepContent`]).

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use fovea_model::config::ModelConfig;
use fovea_model::preprocess::PreparedImage;
use fovea_model::{ModelError, Phi4VisionModel};

use crate::block_hash::BlockHash;
use crate::image_cache::{ImageFeatureCache, ImageKey};
use crate::request::RequestId;
use crate::scheduler::{Chunk, ImageCost, SequenceContent};
use crate::sequence::Sequence;

/// What encoding an image costs a step, in prompt tokens' worth of compute: the vision tower's and
/// projector's multiply-adds for its patches over the decoder's per prompt token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncodingCost {
    /// Per patch: patch embedding, the encoder layers' projections and MLP, the projector.
    per_patch: f64,
    /// Per patch and per patch of the same image: encoder attention (scores and values).
    per_patch_pair: f64,
    per_token: f64,
}

impl EncodingCost {
    pub fn for_model(config: &ModelConfig) -> Self {
        let (vision, text) = (&config.vision, &config.text);
        let (hv, iv, ht) = (
            vision.hidden_size as f64,
            vision.intermediate_size as f64,
            text.hidden_size as f64,
        );
        let layers = vision.used_layers() as f64;
        let per_patch = vision.patch_dim() as f64 * hv
            + layers * (4.0 * hv * hv + 2.0 * hv * iv)
            + hv * ht
            + ht * ht;
        let qkv = (text.num_heads + 2 * text.num_kv_heads) * text.head_dim;
        let attention_projections = ht * qkv as f64 + (text.num_heads * text.head_dim) as f64 * ht;
        let per_token = text.num_layers as f64
            * (attention_projections + 3.0 * ht * text.intermediate_size as f64);
        EncodingCost {
            per_patch,
            per_patch_pair: layers * 2.0 * hv,
            per_token,
        }
    }

    /// The cost of encoding an image of `patches` patches.
    pub fn of(&self, patches: usize) -> usize {
        let n = patches as f64;
        (n * (self.per_patch + n * self.per_patch_pair) / self.per_token).ceil() as usize
    }
}

/// The engine's sequences as the scheduler sees them: their block hashes, and the images a chunk
/// would have to encode (those the feature cache holds cost nothing).
pub(crate) struct StepContent<'a> {
    pub sequences: &'a HashMap<RequestId, Sequence>,
    pub cache: &'a ImageFeatureCache,
    pub cost: EncodingCost,
}

impl SequenceContent for StepContent<'_> {
    fn block_hashes(&self, id: RequestId) -> &[BlockHash] {
        self.sequences
            .get(&id)
            .map_or(&[][..], Sequence::block_hashes)
    }

    fn images_to_encode(&self, id: RequestId, range: std::ops::Range<usize>) -> Vec<ImageCost> {
        let Some(sequence) = self.sequences.get(&id) else {
            return Vec::new();
        };
        sequence
            .images_to_encode(range)
            .filter(|image| !self.cache.contains(image.key))
            .map(|image| ImageCost {
                start: image.start,
                tokens: self.cost.of(image.pixels.grid_h * image.pixels.grid_w),
            })
            .collect()
    }
}

/// What the vision stage of one step did.
#[derive(Debug)]
pub(crate) struct StageOutcome {
    /// Whether the vision tower ran (once, over every image it had to encode).
    pub encoded_batch: bool,
    /// Sequences whose images could not be encoded, and why.
    pub failed: Option<(Vec<RequestId>, ModelError)>,
}

/// Gives every image that `chunks` reach its features, using and filling `cache`.
pub(crate) fn provide_image_features(
    model: &Phi4VisionModel,
    cache: &mut ImageFeatureCache,
    sequences: &mut HashMap<RequestId, Sequence>,
    chunks: &[Chunk],
) -> StageOutcome {
    // Which sequence image needs which key, and the distinct keys to encode with their patches.
    let mut needs: Vec<(RequestId, usize, ImageKey)> = Vec::new();
    let mut found: Vec<(RequestId, usize, Tensor)> = Vec::new();
    let mut batch: Vec<(ImageKey, &PreparedImage)> = Vec::new();
    for chunk in chunks {
        let Some(sequence) = sequences.get(&chunk.id) else {
            continue;
        };
        for image in sequence.images_to_encode(chunk.positions.clone()) {
            let (index, key) = (image.index, image.key);
            if batch.iter().any(|(queued, _)| *queued == key) {
                needs.push((chunk.id, index, key));
            } else if let Some(features) = cache.get(key) {
                found.push((chunk.id, index, features));
            } else {
                batch.push((key, image.pixels));
                needs.push((chunk.id, index, key));
            }
        }
    }
    let keys: Vec<ImageKey> = batch.iter().map(|(key, _)| *key).collect();
    let encoded = if batch.is_empty() {
        Ok(Vec::new())
    } else {
        let images: Vec<&PreparedImage> = batch.iter().map(|(_, pixels)| *pixels).collect();
        model.encode_images(&images)
    };
    for (id, index, features) in found {
        if let Some(sequence) = sequences.get_mut(&id) {
            sequence.set_features(index, features);
        }
    }
    let encoded = match encoded {
        Ok(encoded) => encoded,
        Err(error) => {
            let mut ids: Vec<RequestId> = needs.iter().map(|(id, _, _)| *id).collect();
            ids.dedup();
            return StageOutcome {
                encoded_batch: true,
                failed: Some((ids, error)),
            };
        }
    };
    let by_key: HashMap<ImageKey, Tensor> = keys.into_iter().zip(encoded).collect();
    for (key, features) in &by_key {
        cache.insert(*key, features.clone());
    }
    let mut delivered = HashSet::new();
    for (id, index, key) in needs {
        // The first sequence showing an image gets what was just encoded; later ones in the same
        // step take it from the cache, counted as the hit it is.
        let features = if delivered.insert(key) {
            by_key[&key].clone()
        } else {
            cache.get(key).unwrap_or_else(|| by_key[&key].clone())
        };
        if let Some(sequence) = sequences.get_mut(&id) {
            sequence.set_features(index, features);
        }
    }
    StageOutcome {
        encoded_batch: !by_key.is_empty(),
        failed: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use candle_core::DType;
    use fovea_model::sampling::SamplingParams;
    use fovea_model::testing::{
        golden_model, golden_preparer, max_relative_difference, prepared_golden_cases,
    };

    use super::*;
    use crate::kv_handoff::KvHandoff;
    use crate::request::{GenerateRequest, ImageSource, RequestLimits};

    /// Sequences of the golden cases named by `names`, each scheduled whole in one chunk.
    fn scheduled(
        model: &Phi4VisionModel,
        names: &[&str],
    ) -> (HashMap<RequestId, Sequence>, Vec<Chunk>) {
        let preparer = golden_preparer();
        let cases = prepared_golden_cases(&preparer);
        let config = model.config();
        let limits = RequestLimits {
            vocab_size: config.text.vocab_size,
            context_len: config.text.max_position_embeddings,
            patch_dim: config.vision.patch_dim(),
            hidden_size: config.text.hidden_size,
            eos_token_ids: config.eos_token_ids.clone(),
            kv_capacity_tokens: 1 << 20,
        };
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let mut sequences = HashMap::new();
        let mut chunks = Vec::new();
        for (n, name) in names.iter().enumerate() {
            let case = cases.iter().find(|case| case.golden.name == *name).unwrap();
            let request = GenerateRequest {
                prompt_ids: case.request.prompt_ids.clone(),
                images: ImageSource::pixels(case.request.images.clone()),
                sampling: SamplingParams::default(),
                max_new_tokens: 1,
                stop_token_ids: Vec::new(),
                ignore_eos: true,
                stop_strings: Vec::new(),
                skip_special_tokens: false,
                replayed_tokens: 0,
            };
            let request = limits.validate(request).unwrap();
            let id = RequestId(n as u64);
            let tokenizer = Arc::clone(preparer.tokenizer());
            let sequence = Sequence::new(
                id,
                request,
                tokenizer,
                events.clone(),
                Instant::now(),
                16,
                KvHandoff::Local,
            );
            chunks.push(Chunk {
                id,
                positions: 0..case.request.prompt_ids.len(),
            });
            sequences.insert(id, sequence.unwrap());
        }
        (sequences, chunks)
    }

    /// The features each sequence got, in chunk order, flattened.
    fn features_of(
        sequences: &mut HashMap<RequestId, Sequence>,
        chunks: &[Chunk],
    ) -> Vec<Vec<f32>> {
        let mut all = Vec::new();
        for chunk in chunks {
            let input = sequences
                .get_mut(&chunk.id)
                .unwrap()
                .chunk_input(chunk.positions.clone())
                .unwrap();
            for (_, features) in input.images {
                all.push(features.flatten_all().unwrap().to_vec1().unwrap());
            }
        }
        all
    }

    /// A demo preset's config with `changes` to its text and vision sizes.
    fn config(changes: &[(&str, usize)], vision_changes: &[(&str, usize)]) -> ModelConfig {
        let mut json = fovea_model::demo::DemoPreset::Bench.config_json();
        for (key, value) in changes {
            json[*key] = (*value).into();
        }
        for (key, value) in vision_changes {
            json["vision_config"][*key] = (*value).into();
        }
        ModelConfig::from_json_str(&json.to_string()).unwrap()
    }

    #[test]
    fn encoding_costs_follow_the_multiply_adds_of_vision_tower_and_decoder() {
        // Bench checkpoint, a 448x448 image (28x28 patches): 13.04M multiply-adds per patch
        // (10.03M in the patch embedding, projections and projector, 3.01M in attention over 784
        // patches) against 75.50M per decoder token: 135.4.
        let bench = EncodingCost::for_model(&config(&[], &[]));
        assert_eq!(bench.of(784), 136);
        // Phi-4-reasoning-vision-15B, a full 3600-patch image: ~644M per patch against ~13.6G
        // per token.
        let phi4 = config(
            &[
                ("hidden_size", 5120),
                ("num_hidden_layers", 40),
                ("num_attention_heads", 40),
                ("num_key_value_heads", 10),
                ("intermediate_size", 17920),
                ("mm_hidden_size", 1152),
            ],
            &[
                ("hidden_size", 1152),
                ("num_hidden_layers", 27),
                ("num_attention_heads", 16),
                ("intermediate_size", 4304),
            ],
        );
        let phi4 = EncodingCost::for_model(&phi4);
        assert!((165..=175).contains(&phi4.of(3600)), "{}", phi4.of(3600));
        assert!(
            phi4.of(256) < phi4.of(3600) / 14,
            "attention makes cost superlinear in patches"
        );
    }

    #[test]
    fn one_batch_encodes_each_distinct_image_of_every_sequence_once() {
        let model = golden_model(DType::F32);
        let names = [
            "chart_nothink",
            "two_images_compare",
            "chart_nothink",
            "screen_grounding",
        ];
        let mut cache = ImageFeatureCache::new(256 << 20);
        let (mut sequences, chunks) = scheduled(&model, &names);
        let outcome = provide_image_features(&model, &mut cache, &mut sequences, &chunks);
        assert!(
            outcome.encoded_batch && outcome.failed.is_none(),
            "{outcome:?}"
        );
        // chart, the two of the comparison and the screenshot; the second chart is a hit.
        assert_eq!((cache.encoded(), cache.hits()), (4, 1));
        let batched = features_of(&mut sequences, &chunks);

        // Each image alone gives the same features.
        let mut alone = ImageFeatureCache::new(0);
        let mut lone = Vec::new();
        for name in names {
            let (mut sequences, chunks) = scheduled(&model, &[name]);
            provide_image_features(&model, &mut alone, &mut sequences, &chunks);
            lone.extend(features_of(&mut sequences, &chunks));
        }
        assert_eq!(batched.len(), 5);
        for (got, alone) in batched.iter().zip(&lone) {
            // Batches of more than 512 patches take the GEMM, lone images the streaming kernel.
            assert!(max_relative_difference(got, alone) < 1e-5);
        }

        // The same images again come from the cache, with no vision batch.
        let (mut sequences, chunks) = scheduled(&model, &names);
        let outcome = provide_image_features(&model, &mut cache, &mut sequences, &chunks);
        assert!(!outcome.encoded_batch, "{outcome:?}");
        assert_eq!((cache.encoded(), cache.hits()), (4, 6));
        assert_eq!(features_of(&mut sequences, &chunks), batched);
    }
}
