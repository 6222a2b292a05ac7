//! The Phi-4 decoder (Phi-3 architecture): token embedding, pre-norm layers of grouped-query
//! attention with a fused `qkv_proj` and RoPE, a SiLU-gated MLP with a fused `gate_up_proj`, a final
//! RMSNorm and an untied `lm_head`.
//!
//! The decoder takes input embeddings rather than token ids, so that image features can be spliced
//! in by the caller, and reads and writes keys and values only through a [`KvCache`].
//!
//! Under tensor parallelism each rank loads only its part (see [`crate::tp::shard`]): its query
//! heads and the KV heads they read (column-parallel `qkv_proj`), the matching input columns of
//! `o_proj` (row-parallel, then an all-reduce), its range of intermediate features in both halves
//! of `gate_up_proj` and in `down_proj` (then an all-reduce), and its range of the vocabulary in
//! the embedding (all-reduced) and in `lm_head` (all-gathered). A group of one holds everything
//! and its collectives do nothing.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::activation::silu_mul;
use crate::attention::HeadGroups;
use crate::batch::BatchLayout;
use crate::config::TextConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::{AttentionHeads, KvCache};
use crate::layers::{Linear, RmsNorm, split_heads};
use crate::rotary::RotaryEmbedding;
use crate::tp::{Communicator, TpRank};
use crate::weights::Weights;

/// `heads` heads of `head_dim` features as a range of features, `offset` features in.
fn head_features(heads: &Range<usize>, head_dim: usize, offset: usize) -> Range<usize> {
    offset + heads.start * head_dim..offset + heads.end * head_dim
}

/// `ranges` with neighbours merged (`[0..4, 4..6]` → `[0..6]`), so that a rank holding a whole
/// fused tensor reads it in one piece.
fn coalesced(ranges: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut merged: Vec<Range<usize>> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => merged.push(range.clone()),
        }
    }
    merged
}

/// Self-attention with a fused Q|K|V projection (this rank's heads).
struct SelfAttention {
    qkv_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    groups: HeadGroups,
    head_dim: usize,
}

impl SelfAttention {
    fn load(weights: &Weights, cfg: &TextConfig, rank: TpRank) -> Result<Self> {
        let (heads, kv_heads, head_dim) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let shard = rank.heads(cfg);
        let qkv_rows = coalesced(&[
            head_features(&shard.q_heads, head_dim, 0),
            head_features(&shard.kv_heads, head_dim, heads * head_dim),
            head_features(&shard.kv_heads, head_dim, (heads + kv_heads) * head_dim),
        ]);
        let qkv_out = (heads + 2 * kv_heads) * head_dim;
        Ok(SelfAttention {
            qkv_proj: Linear::load_rows(
                &weights.pp("qkv_proj"),
                cfg.hidden_size,
                qkv_out,
                &qkv_rows,
            )?,
            o_proj: Linear::load_columns(
                &weights.pp("o_proj"),
                heads * head_dim,
                cfg.hidden_size,
                head_features(&shard.q_heads, head_dim, 0),
            )?,
            num_heads: shard.q_heads.len(),
            num_kv_heads: shard.kv_heads.len(),
            groups: shard.groups,
            head_dim,
        })
    }

    /// `[T, hidden]` → this rank's part of `[T, hidden]` (ranks' parts add up) for the tokens of `step`.
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        step: &Step,
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(x)?;
        let heads = |first_head, count| split_heads(&qkv, first_head, count, self.head_dim);
        let q = step
            .rotary
            .apply(&heads(0, self.num_heads)?, &step.angles)?;
        let k = step
            .rotary
            .apply(&heads(self.num_heads, self.num_kv_heads)?, &step.angles)?;
        let v = heads(self.num_heads + self.num_kv_heads, self.num_kv_heads)?;
        let projected = AttentionHeads {
            q: &q,
            k: &k,
            v: &v,
            groups: self.groups,
        };
        let attended = cache.attend(layer, step.batch, projected)?;
        self.o_proj.forward(&attended)
    }
}

/// `down(silu(gate) · up)`, with gate and up computed by one fused projection (gate first).
struct GatedMlp {
    gate_up_proj: Linear,
    down_proj: Linear,
    intermediate_size: usize,
}

impl GatedMlp {
    fn load(weights: &Weights, cfg: &TextConfig, rank: TpRank) -> Result<Self> {
        let inter = cfg.intermediate_size;
        let part = rank.part_of(inter);
        let gate_up_rows = coalesced(&[part.clone(), inter + part.start..inter + part.end]);
        Ok(GatedMlp {
            gate_up_proj: Linear::load_rows(
                &weights.pp("gate_up_proj"),
                cfg.hidden_size,
                2 * inter,
                &gate_up_rows,
            )?,
            down_proj: Linear::load_columns(
                &weights.pp("down_proj"),
                inter,
                cfg.hidden_size,
                part.clone(),
            )?,
            intermediate_size: part.len(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = silu_mul(&self.gate_up_proj.forward(x)?, self.intermediate_size)?;
        self.down_proj.forward(&gated)
    }
}

/// What every layer of one forward pass shares: the batch layout, its rotary angles, and the
/// rank's collectives.
struct Step<'a> {
    batch: &'a BatchLayout,
    rotary: &'a RotaryEmbedding,
    angles: (Tensor, Tensor),
    comm: &'a dyn Communicator,
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderLayer {
    fn load(weights: &Weights, cfg: &TextConfig, rank: TpRank) -> Result<Self> {
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(
                &weights.pp("input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            self_attn: SelfAttention::load(&weights.pp("self_attn"), cfg, rank)?,
            post_attention_layernorm: RmsNorm::load(
                &weights.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: GatedMlp::load(&weights.pp("mlp"), cfg, rank)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        step: &Step,
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        let attended =
            self.self_attn
                .forward(&self.input_layernorm.forward(x)?, layer, step, cache)?;
        let x = (x + step.comm.all_reduce_sum(&attended)?)?;
        let mlp_out = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + step.comm.all_reduce_sum(&mlp_out)?)?)
    }
}

/// The Phi-4 decoder (one rank's part of it) with its embedding table and language-model head.
pub struct Phi4Decoder {
    embed_tokens: Tensor,
    /// The token ids this rank's rows of `embed_tokens` and `lm_head` stand for.
    vocab_part: Range<usize>,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    config: TextConfig,
    rank: TpRank,
    comm: Arc<dyn Communicator>,
}

impl Phi4Decoder {
    /// Loads rank `comm.rank()`'s part of `model.embed_tokens`, `model.layers.*`, `model.norm` and
    /// `lm_head` from `root` (the checkpoint's top level); a TP size that does not divide the
    /// query heads is an error.
    pub fn load(root: &Weights, cfg: &TextConfig, comm: Arc<dyn Communicator>) -> Result<Self> {
        TpRank::check_world(comm.world_size(), cfg)?;
        let rank = TpRank {
            rank: comm.rank(),
            world: comm.world_size(),
        };
        let model = root.pp("model");
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::load(&model.pp("layers").pp(i), cfg, rank))
            .collect::<Result<Vec<_>>>()?;
        let vocab_part = rank.part_of(cfg.vocab_size);
        let table_shape = [cfg.vocab_size, cfg.hidden_size];
        Ok(Phi4Decoder {
            embed_tokens: model.pp("embed_tokens").get_part(
                "weight",
                &table_shape,
                0,
                vocab_part.clone(),
            )?,
            lm_head: Linear::load_rows(
                &root.pp("lm_head"),
                cfg.hidden_size,
                cfg.vocab_size,
                std::slice::from_ref(&vocab_part),
            )?,
            vocab_part,
            layers,
            norm: RmsNorm::load(&model.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            rotary: RotaryEmbedding::new(cfg, root.dtype(), root.device())?,
            config: cfg.clone(),
            rank,
            comm,
        })
    }

    /// The decoder's sizes (the whole model's, whatever this rank holds).
    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// KV heads this rank stores per layer (all of them on a single rank).
    pub fn kv_heads(&self) -> usize {
        self.rank.heads(&self.config).kv_heads.len()
    }

    /// This rank's place in its tensor-parallel group ([`TpRank::SINGLE`] for a whole model).
    pub fn tp_rank(&self) -> TpRank {
        self.rank
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Embeddings `[L, hidden]` of token ids; ids outside the vocabulary are an error. Under
    /// tensor parallelism this is a collective: every rank calls it with the same ids.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::BadInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        if self.comm.world_size() == 1 {
            return Ok(self
                .embed_tokens
                .index_select(&Tensor::new(ids, self.device())?, 0)?);
        }
        // Each rank looks up the ids in its part of the vocabulary, zeros for the others; the
        // ranks' rows add up to the full embeddings.
        let part = &self.vocab_part;
        let mine = |id: &u32| part.contains(&(*id as usize));
        let local: Vec<u32> = ids
            .iter()
            .map(|id| if mine(id) { id - part.start as u32 } else { 0 })
            .collect();
        let mask: Vec<f32> = ids
            .iter()
            .map(|id| if mine(id) { 1.0 } else { 0.0 })
            .collect();
        let rows = self
            .embed_tokens
            .index_select(&Tensor::new(local, self.device())?, 0)?;
        let mask = Tensor::from_vec(mask, (ids.len(), 1), self.device())?.to_dtype(rows.dtype())?;
        self.comm.all_reduce_sum(&rows.broadcast_mul(&mask)?)
    }

    /// Runs `embeddings` `[T, hidden]`, laid out as `batch` says, through the decoder, returning
    /// f32 logits `[segments, vocab]` of each segment's last token.
    pub fn forward(
        &self,
        embeddings: &Tensor,
        batch: &BatchLayout,
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        let tokens = embeddings.dim(0)?;
        if tokens == 0 || tokens != batch.total_tokens() {
            return Err(ModelError::BadInput(format!(
                "a forward pass needs at least one token and as many as its layout ({tokens} vs {})",
                batch.total_tokens()
            )));
        }
        let step = Step {
            batch,
            rotary: &self.rotary,
            angles: self.rotary.angles(&batch.positions())?,
            comm: self.comm.as_ref(),
        };
        let mut x = embeddings.to_dtype(self.dtype())?;
        for (index, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, index, &step, cache)?;
        }
        let last_tokens = Tensor::new(batch.last_token_indices(), x.device())?;
        let last = self.norm.forward(&x.index_select(&last_tokens, 0)?)?;
        let logits = self.lm_head.forward(&last)?.to_dtype(DType::F32)?;
        self.comm.all_gather(&logits, 1)
    }
}
