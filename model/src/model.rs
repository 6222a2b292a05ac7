//! The whole network: vision tower → projector → decoder, loaded from one checkpoint directory.
//!
//! [`Phi4VisionModel`] turns prepared images into decoder embeddings and splices them into the
//! prompt's token embeddings at the image positions ("mid-fusion": one decoder token per patch).
//!
//! Under tensor parallelism each rank loads a `Phi4VisionModel` with its part of the decoder; the
//! vision tower is small and runs once per image, so rank 0 alone holds it and hands the
//! features to the other ranks (threads of one process share them).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::batch::BatchLayout;
use crate::config::ModelConfig;
use crate::decoder::Phi4Decoder;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::preprocess::PreparedImage;
use crate::tp::{Communicator, RankGroup, RankOptions, SoloCommunicator, TpRank, Transport};
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

/// How ranks on `device` talk: NCCL, one rank per GPU from `device` on, for a CUDA device under
/// tensor parallelism (feature `cuda`); shared memory otherwise.
fn transport_for(device: &Device, world: usize) -> Transport {
    #[cfg(feature = "cuda")]
    if let (candle_core::DeviceLocation::Cuda { gpu_id }, true) = (device.location(), world > 1) {
        return Transport::Nccl { first_gpu: gpu_id };
    }
    let _ = (device, world);
    Transport::SharedMemory
}

/// The loaded Phi-4-reasoning-vision network (or one tensor-parallel rank of it).
pub struct Phi4VisionModel {
    config: ModelConfig,
    /// The vision tower and projector; on rank 0 only.
    vision: Option<(VisionTower, Projector)>,
    decoder: Phi4Decoder,
}

impl Phi4VisionModel {
    /// Loads the checkpoint in `dir`, computing in `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_rank(dir, dtype, device, Arc::new(SoloCommunicator))
    }

    /// Loads rank `comm.rank()` of a tensor-parallel group: its part of the decoder, and on rank 0
    /// the vision tower. A group size that does not divide the query heads is an error.
    pub fn load_rank(
        dir: &Path,
        dtype: DType,
        device: &Device,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir, dtype, device)?;
        let model = Self::from_checkpoint(config, &checkpoint, comm)?;
        checkpoint.finish_loading();
        Ok(model)
    }

    /// Loads every rank of the tensor-parallel group `options` describes, each on its own
    /// thread, and wraps each rank's part in the state `wrap` makes of it. On a CUDA `device`
    /// (feature `cuda`) rank `r` runs on the `r`-th GPU from it and the ranks talk through NCCL;
    /// otherwise they share `device` and talk through shared memory.
    pub fn load_ranks<S: Send + 'static>(
        dir: &Path,
        dtype: DType,
        device: &Device,
        options: RankOptions,
        wrap: impl Fn(Phi4VisionModel) -> Result<S> + Send + Sync + 'static,
    ) -> Result<RankGroup<S>> {
        TpRank::check_world(options.world, &ModelConfig::from_dir(dir)?.text)?;
        let transport = transport_for(device, options.world);
        let options = RankOptions {
            transport,
            ..options
        };
        let (dir, device) = (dir.to_path_buf(), device.clone());
        RankGroup::start(options, move |comm| {
            let device = match transport {
                Transport::SharedMemory => device.clone(),
                #[cfg(feature = "cuda")]
                Transport::Nccl { first_gpu } => Device::new_cuda(first_gpu + comm.rank())?,
            };
            wrap(Self::load_rank(&dir, dtype, &device, comm)?)
        })
    }

    fn from_checkpoint(
        config: ModelConfig,
        checkpoint: &Checkpoint,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self> {
        let root = checkpoint.root();
        let model = root.pp("model");
        let vision_model = model
            .pp("vision_tower")
            .pp("vision_tower")
            .pp("vision_model");
        let vision = if comm.rank() == 0 {
            Some((
                VisionTower::load(&vision_model, &config.vision)?,
                Projector::load(&model.pp("mm_projector"), &config)?,
            ))
        } else {
            None
        };
        Ok(Phi4VisionModel {
            vision,
            decoder: Phi4Decoder::load(&root, &config.text, comm)?,
            config,
        })
    }

    /// Names and shapes of every tensor the network reads for `config`, in loading order.
    /// Allocates the network once with zero weights.
    pub fn tensor_inventory(config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let recorder = Checkpoint::recorder();
        Self::from_checkpoint(config.clone(), &recorder, Arc::new(SoloCommunicator))?;
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

    /// Decoder-space features `[patches, text_hidden]` of one prepared image (on rank 0).
    pub fn encode_image(&self, image: &PreparedImage) -> Result<Tensor> {
        let mut features = self.encode_images(&[image])?;
        Ok(features.remove(0))
    }

    /// Decoder-space features of each of `images`, encoded together in one packed batch (on
    /// rank 0): the same values as one [`Phi4VisionModel::encode_image`] each, in fewer, larger
    /// matrix products.
    pub fn encode_images(&self, images: &[&PreparedImage]) -> Result<Vec<Tensor>> {
        let Some((vision, projector)) = &self.vision else {
            return Err(ModelError::BadInput(
                "only tensor-parallel rank 0 holds the vision tower".into(),
            ));
        };
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let patch_dim = self.config.vision.patch_dim();
        let patches = images
            .iter()
            .map(|image| {
                let count = image.grid_h * image.grid_w;
                if image.patches.len() != count * patch_dim {
                    return Err(ModelError::BadInput(format!(
                        "a {}x{} image has {} patch values, expected {}",
                        image.grid_h,
                        image.grid_w,
                        image.patches.len(),
                        count * patch_dim
                    )));
                }
                Ok(Tensor::from_slice(
                    &image.patches,
                    (count, patch_dim),
                    self.decoder.device(),
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let batch: Vec<_> = patches
            .iter()
            .zip(images)
            .map(|(patches, image)| (patches, image.grid_h, image.grid_w))
            .collect();
        let features = projector.forward(&vision.encode_batch(&batch)?)?;
        if images.len() == 1 {
            return Ok(vec![features]);
        }
        // Each image's rows get their own storage, so a cache keeping one image's features does
        // not keep the whole batch's alive.
        let mut start = 0;
        images
            .iter()
            .map(|image| {
                let count = image.grid_h * image.grid_w;
                let rows = features.narrow(0, start, count)?.copy()?;
                start += count;
                Ok(rows)
            })
            .collect()
    }

    /// Prompt embeddings `[L, hidden]`: token embeddings with each image's features written over
    /// its placement. `ids` at image positions may be any valid id (they are overwritten).
    pub fn prompt_embeddings(
        &self,
        ids: &[u32],
        images: &[(ImagePlacement, Tensor)],
    ) -> Result<Tensor> {
        let mut pieces = Vec::with_capacity(2 * images.len() + 1);
        let mut cursor = 0;
        for (placement, features) in images {
            let rows = features.dim(0)?;
            if placement.start < cursor
                || placement.start + placement.len > ids.len()
                || rows != placement.len
            {
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
    pub fn forward(
        &self,
        embeddings: &Tensor,
        batch: &BatchLayout,
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        self.decoder.forward(embeddings, batch, cache)
    }
}
