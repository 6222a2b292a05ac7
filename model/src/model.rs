//! The whole network: vision tower → projector → decoder, loaded from one checkpoint directory.
//!
//! [`Phi4VisionModel`] turns prepared images into decoder embeddings and splices them into the
//! prompt's token embeddings at the image positions ("mid-fusion": one decoder token per patch).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::batch::BatchLayout;
use crate::config::ModelConfig;
use crate::decoder::Phi4Decoder;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::preprocess::PreparedImage;
use crate::vision::{Projector, VisionTower};
use crate::weights::Checkpoint;

/// Where one image's tokens sit in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePlacement {
    /// Index of the image's first token in the prompt.
    pub start: usize,
    /// Number of tokens (patches) of the image.
    pub len: usize,
}

/// The loaded Phi-4-reasoning-vision network.
pub struct Phi4VisionModel {
    config: ModelConfig,
    vision: VisionTower,
    projector: Projector,
    decoder: Phi4Decoder,
}

impl Phi4VisionModel {
    /// Loads the checkpoint in `dir`, computing in `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir, dtype, device)?;
        let model = Self::from_checkpoint(config, &checkpoint)?;
        checkpoint.finish_loading();
        Ok(model)
    }

    fn from_checkpoint(config: ModelConfig, checkpoint: &Checkpoint) -> Result<Self> {
        let root = checkpoint.root();
        let model = root.pp("model");
        let vision_model = model.pp("vision_tower").pp("vision_tower").pp("vision_model");
        Ok(Phi4VisionModel {
            vision: VisionTower::load(&vision_model, &config.vision)?,
            projector: Projector::load(&model.pp("mm_projector"), &config)?,
            decoder: Phi4Decoder::load(&root, &config.text)?,
            config,
        })
    }

    /// Names and shapes of every tensor the network reads for `config`, in loading order.
    /// Allocates the network once with zero weights.
    pub fn tensor_inventory(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let recorder = Checkpoint::recorder();
        Self::from_checkpoint(config.clone(), &recorder)?;
        Ok(recorder.inventory())
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The decoder, for callers that drive generation step by step.
    pub fn decoder(&self) -> &Phi4Decoder {
        &self.decoder
    }

    /// Decoder-space features `[patches, text_hidden]` of one prepared image.
    pub fn encode_image(&self, image: &PreparedImage) -> Result<Tensor> {
        let patches = Tensor::from_slice(
            &image.patches,
            (image.grid_h * image.grid_w, self.config.vision.patch_dim()),
            self.decoder.device(),
        )?;
        let features = self.vision.encode(&patches, image.grid_h, image.grid_w)?;
        self.projector.forward(&features)
    }

    /// Prompt embeddings `[L, hidden]`: token embeddings with each image's features written over
    /// its placement. `ids` at image positions may be any valid id (they are overwritten).
    pub fn prompt_embeddings(&self, ids: &[u32], images: &[(ImagePlacement, Tensor)]) -> Result<Tensor> {
        let mut pieces = Vec::with_capacity(2 * images.len() + 1);
        let mut cursor = 0;
        for (placement, features) in images {
            let rows = features.dim(0)?;
            if placement.start < cursor || placement.start + placement.len > ids.len() || rows != placement.len {
                return Err(ModelError::BadInput(format!(
                    "image placement {placement:?} with {rows} feature rows does not fit a {}-token prompt in order",
                    ids.len()
                )));
            }
            if placement.start > cursor {
                pieces.push(self.decoder.embed(&ids[cursor..placement.start])?);
            }
            pieces.push(features.to_dtype(self.decoder.dtype())?);
            cursor = placement.start + placement.len;
        }
        if cursor < ids.len() {
            pieces.push(self.decoder.embed(&ids[cursor..])?);
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }

    /// Runs `embeddings` laid out as `batch` says; f32 logits `[segments, vocab]` of each
    /// segment's last token.
    pub fn forward(&self, embeddings: &Tensor, batch: &BatchLayout, cache: &mut dyn KvCache) -> Result<Tensor> {
        self.decoder.forward(embeddings, batch, cache)
    }
}
