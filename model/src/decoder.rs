//! The Phi-4 decoder (Phi-3 architecture): token embedding, pre-norm layers of grouped-query
//! attention with a fused `qkv_proj` and RoPE, a SiLU-gated MLP with a fused `gate_up_proj`, a final
//! RMSNorm and an untied `lm_head`.
//!
//! The decoder takes input embeddings rather than token ids, so that image features can be spliced
//! in by the caller, and reads and writes keys and values only through a [`KvCache`].

use candle_core::{DType, Device, Tensor};

use crate::batch::BatchLayout;
use crate::config::TextConfig;
use crate::activation::silu_mul;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::layers::{Linear, RmsNorm, split_heads};
use crate::rotary::RotaryEmbedding;
use crate::weights::Weights;

/// Self-attention with a fused Q|K|V projection.
struct SelfAttention {
    qkv_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(weights: &Weights, cfg: &TextConfig) -> Result<Self> {
        let qkv_out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim;
        Ok(SelfAttention {
            qkv_proj: Linear::load(&weights.pp("qkv_proj"), cfg.hidden_size, qkv_out, false)?,
            o_proj: Linear::load(&weights.pp("o_proj"), cfg.num_heads * cfg.head_dim, cfg.hidden_size, false)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `[T, hidden]` → `[T, hidden]` for the tokens of `step`.
    fn forward(&self, x: &Tensor, layer: usize, step: &Step, cache: &mut dyn KvCache) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(x)?;
        let heads = |first_head, count| split_heads(&qkv, first_head, count, self.head_dim);
        let q = step.rotary.apply(&heads(0, self.num_heads)?, &step.angles)?;
        let k = step.rotary.apply(&heads(self.num_heads, self.num_kv_heads)?, &step.angles)?;
        let v = heads(self.num_heads + self.num_kv_heads, self.num_kv_heads)?;
        let attended = cache.attend(layer, step.batch, &q, &k, &v)?;
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
    fn load(weights: &Weights, cfg: &TextConfig) -> Result<Self> {
        let inter = cfg.intermediate_size;
        Ok(GatedMlp {
            gate_up_proj: Linear::load(&weights.pp("gate_up_proj"), cfg.hidden_size, 2 * inter, false)?,
            down_proj: Linear::load(&weights.pp("down_proj"), inter, cfg.hidden_size, false)?,
            intermediate_size: inter,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = silu_mul(&self.gate_up_proj.forward(x)?, self.intermediate_size)?;
        self.down_proj.forward(&gated)
    }
}

/// What every layer of one forward pass shares: the batch layout and its rotary angles.
struct Step<'a> {
    batch: &'a BatchLayout,
    rotary: &'a RotaryEmbedding,
    angles: (Tensor, Tensor),
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderLayer {
    fn load(weights: &Weights, cfg: &TextConfig) -> Result<Self> {
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(&weights.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            self_attn: SelfAttention::load(&weights.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                &weights.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: GatedMlp::load(&weights.pp("mlp"), cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, layer: usize, step: &Step, cache: &mut dyn KvCache) -> Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, layer, step, cache)?;
        let x = (x + attended)?;
        let mlp_out = self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + mlp_out)?)
    }
}

/// The Phi-4 decoder with its embedding table and language-model head.
pub struct Phi4Decoder {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    config: TextConfig,
}

impl Phi4Decoder {
    /// Loads `model.embed_tokens`, `model.layers.*`, `model.norm` and `lm_head` from `root` (the checkpoint's top level).
    pub fn load(root: &Weights, cfg: &TextConfig) -> Result<Self> {
        let model = root.pp("model");
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::load(&model.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Phi4Decoder {
            embed_tokens: model.pp("embed_tokens").get("weight", &[cfg.vocab_size, cfg.hidden_size])?,
            layers,
            norm: RmsNorm::load(&model.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            lm_head: Linear::load(&root.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, false)?,
            rotary: RotaryEmbedding::new(cfg, root.dtype(), root.device())?,
            config: cfg.clone(),
        })
    }

    /// The decoder's sizes.
    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Embeddings `[L, hidden]` of token ids; ids outside the vocabulary are an error.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::BadInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let ids = Tensor::new(ids, self.device())?;
        Ok(self.embed_tokens.index_select(&ids, 0)?)
    }

    /// Runs `embeddings` `[T, hidden]`, laid out as `batch` says, through the decoder, returning
    /// f32 logits `[segments, vocab]` of each segment's last token.
    pub fn forward(&self, embeddings: &Tensor, batch: &BatchLayout, cache: &mut dyn KvCache) -> Result<Tensor> {
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
        };
        let mut x = embeddings.to_dtype(self.dtype())?;
        for (index, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, index, &step, cache)?;
        }
        let last_tokens = Tensor::new(batch.last_token_indices(), x.device())?;
        let last = self.norm.forward(&x.index_select(&last_tokens, 0)?)?;
        Ok(self.lm_head.forward(&last)?.to_dtype(DType::F32)?)
    }
}
