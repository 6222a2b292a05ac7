//! One tensor-parallel rank of the engine: its part of the model and the matching part of the
//! paged KV memory (the KV heads its query heads read). Block tables are the scheduler's and the
//! same on every rank, so a step hands each rank the same chunks and tables and gets back rank 0's
//! gathered logits.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fovea_model::batch::{BatchLayout, BatchSegment};
use fovea_model::tp::{RankGroup, RankOptions};
use fovea_model::{ModelConfig, Phi4VisionModel};

use crate::block_allocator::KvBlockTable;
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::kv_pool::{KvBlockPool, KvPoolShape};
use crate::paged_cache::PagedKvCache;
use crate::sequence::ChunkInput;

/// A rank's model part and KV memory.
pub struct EngineRank {
    model: Arc<Phi4VisionModel>,
    pool: KvBlockPool,
}

/// The engine's ranks: one for a whole model, more under tensor parallelism.
pub type EngineRanks = RankGroup<EngineRank>;

/// One forward pass as every rank runs it: the chunks' inputs, where each continues its
/// sequence, and the blocks that hold each sequence.
pub struct RankStep {
    pub inputs: Vec<ChunkInput>,
    pub segments: Vec<BatchSegment>,
    pub tables: Vec<KvBlockTable>,
}

impl EngineRank {
    /// `model` with a KV pool of `shape`'s blocks for the KV heads this rank holds.
    pub fn new(model: Arc<Phi4VisionModel>, shape: KvPoolShape) -> Self {
        let shape = KvPoolShape {
            kv_heads: model.decoder().kv_heads(),
            ..shape
        };
        EngineRank {
            model,
            pool: KvBlockPool::new(shape),
        }
    }

    /// The rank's part of the model.
    pub fn model(&self) -> &Arc<Phi4VisionModel> {
        &self.model
    }

    /// The rank's KV memory.
    pub fn pool(&self) -> &KvBlockPool {
        &self.pool
    }

    /// The rank's KV memory, to fill it with transferred blocks.
    pub fn pool_mut(&mut self) -> &mut KvBlockPool {
        &mut self.pool
    }

    /// Runs `step` through this rank's part of the model: logits `[chunks, vocab]` (gathered
    /// over the ranks) of each chunk's last token.
    pub fn forward(&mut self, step: &RankStep) -> fovea_model::Result<Tensor> {
        let embeddings = step
            .inputs
            .iter()
            .map(|input| input.embeddings(&self.model))
            .collect::<fovea_model::Result<Vec<_>>>()?;
        let mut cache = PagedKvCache::new(&mut self.pool, step.tables.iter().collect());
        self.model.forward(
            &Tensor::cat(&embeddings, 0)?,
            &BatchLayout::new(step.segments.clone()),
            &mut cache,
        )
    }
}

/// A single rank holding all of `model`.
pub fn single_rank(model: Arc<Phi4VisionModel>, config: &EngineConfig) -> Result<EngineRanks, EngineError> {
    let shape = config.pool_shape(&model.config().text)?;
    Ok(RankGroup::single(EngineRank::new(model, shape)))
}

/// Loads the checkpoint in `dir` split over the ranks of `options`, each with its KV pool.
pub fn load_ranks(
    dir: &Path,
    dtype: DType,
    device: &Device,
    options: RankOptions,
    config: &EngineConfig,
) -> Result<EngineRanks, EngineError> {
    let shape = config.pool_shape(&ModelConfig::from_dir(dir)?.text)?;
    let ranks = Phi4VisionModel::load_ranks(dir, dtype, device, options, move |model| {
        Ok(EngineRank::new(Arc::new(model), shape))
    })?;
    Ok(ranks)
}
