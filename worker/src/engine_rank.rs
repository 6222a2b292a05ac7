//! One tensor-parallel rank of the engine: its part of the model and the matching part of the
//! paged KV memory (the KV heads its query heads read). Block tables are the scheduler's and the
//! same on every rank, so a step hands each rank the same chunks and tables and gets back rank 0's
//! gathered logits; a transferred prompt's blocks go in and out the same way, each rank copying
//! its own heads of every block.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fovea_model::batch::{BatchLayout, BatchSegment};
use fovea_model::tp::{RankGroup, RankOptions};
use fovea_model::{ModelConfig, Phi4VisionModel};

use crate::block_allocator::KvBlockTable;
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::kv_handoff::{KvBlockRun, LayerKv};
use crate::kv_heads::RankKvHeads;
use crate::kv_pool::{KvBlockPool, KvPoolShape};
use crate::paged_cache::PagedKvCache;
use crate::sequence::ChunkInput;

/// A rank's model part and KV memory.
pub struct EngineRank {
    model: Arc<Phi4VisionModel>,
    pool: KvBlockPool,
    heads: RankKvHeads,
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
        let heads = RankKvHeads::of_rank(model.decoder().tp_rank(), &model.config().text);
        EngineRank {
            model,
            pool: KvBlockPool::new(shape),
            heads,
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

    /// f32 values of one block of one layer's keys (or values) in the transfer layout, which holds
    /// every KV head of the model.
    pub fn transfer_block_len(&self) -> usize {
        self.heads.total * self.pool.shape().head_len()
    }

    /// Copies this rank's share of the heads of positions `0..tokens` of `table`, every layer,
    /// into `layers` (transfer layout; see [`crate::kv_handoff::PromptKv`]). Every rank of the
    /// group copies into the same `layers`, which then hold each head once.
    pub fn export_prompt(&self, table: &KvBlockTable, tokens: usize, layers: &mut [LayerKv]) {
        for (layer, kv) in layers.iter_mut().enumerate() {
            self.pool.export_prompt_blocks(
                layer,
                table,
                tokens,
                &self.heads,
                &mut kv.keys,
                &mut kv.values,
            );
        }
    }

    /// Stores the heads this rank holds of a transferred `run` in `table`'s blocks (the engine
    /// checked that the run fits them).
    pub fn import_run(&mut self, table: &KvBlockTable, run: &KvBlockRun) {
        self.pool.import_blocks(
            run.layer,
            table,
            run.first_block,
            &self.heads,
            &run.keys,
            &run.values,
        );
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
pub fn single_rank(
    model: Arc<Phi4VisionModel>,
    config: &EngineConfig,
) -> Result<EngineRanks, EngineError> {
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
