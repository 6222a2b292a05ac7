//! The SigLIP-2 NaFlex vision tower and the MLP projector into the decoder's embedding space.
//!
//! Images are encoded in packed batches: the patches of every image in a batch are stacked into
//! one sequence, so each linear layer is one GEMM over all of them, while attention runs per image
//! (it never crosses images). Each image's patches go through a linear patch embedding, plus the
//! learned 16×16 position grid resized to the image's patch grid, then through the pre-norm
//! encoder layers. Features come from the second-to-last layer with no
//! post-layernorm and no pooling head, as the model was trained; the projector maps them to tokens.

use std::ops::Range;

use candle_core::{DType, Tensor};

use crate::activation::gelu_tanh;
use crate::attention::{HeadGroups, Visibility, attention};
use crate::config::{ModelConfig, VisionConfig};
use crate::error::{ModelError, Result};
use crate::layers::{LayerNorm, Linear, split_heads};
use crate::preprocess::resize_position_grid;
use crate::weights::Weights;

struct EncoderAttention {
    /// `q_proj`, `k_proj` and `v_proj` stacked into one projection (one GEMM instead of three).
    qkv_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl EncoderAttention {
    fn load(weights: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let proj = |name: &str| Linear::load(&weights.pp(name), hidden, hidden, true);
        Ok(EncoderAttention {
            qkv_proj: Linear::stack(&[proj("q_proj")?, proj("k_proj")?, proj("v_proj")?])?,
            out_proj: proj("out_proj")?,
            num_heads: cfg.num_heads,
            head_dim: hidden / cfg.num_heads,
        })
    }

    /// Self-attention of packed images `x`, each image's rows (`images`) attending only to
    /// themselves.
    fn forward(&self, x: &Tensor, images: &[Range<usize>]) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(x)?;
        let attended = images
            .iter()
            .map(|rows| {
                let qkv = qkv.narrow(0, rows.start, rows.len())?;
                let heads = |part: usize| {
                    split_heads(&qkv, part * self.num_heads, self.num_heads, self.head_dim)
                };
                attention(
                    &heads(0)?,
                    &heads(1)?,
                    &heads(2)?,
                    HeadGroups::even(1, 1),
                    Visibility::Full,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        self.out_proj.forward(&Tensor::cat(&attended, 0)?)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: EncoderAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(weights: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let (hidden, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(&weights.pp("layer_norm1"), hidden, eps)?,
            self_attn: EncoderAttention::load(&weights.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::load(&weights.pp("layer_norm2"), hidden, eps)?,
            fc1: Linear::load(
                &weights.pp("mlp").pp("fc1"),
                hidden,
                cfg.intermediate_size,
                true,
            )?,
            fc2: Linear::load(
                &weights.pp("mlp").pp("fc2"),
                cfg.intermediate_size,
                hidden,
                true,
            )?,
        })
    }

    fn forward(&self, x: &Tensor, images: &[Range<usize>]) -> Result<Tensor> {
        let x = (x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, images)?)?;
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let activated = gelu_tanh(&hidden)?;
        let mlp = self.fc2.forward(&activated)?;
        Ok((x + mlp)?)
    }
}

/// SigLIP-2 NaFlex encoder, truncated after the second-to-last layer.
pub struct VisionTower {
    patch_embedding: Linear,
    /// The learned position grid as `[hidden, side, side]` f32, ready for resizing.
    position_grid: Vec<f32>,
    layers: Vec<EncoderLayer>,
    config: VisionConfig,
}

impl VisionTower {
    /// Loads `embeddings.*` and the used `encoder.layers.*` under `weights` (the `vision_model` prefix).
    pub fn load(weights: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let embeddings = weights.pp("embeddings");
        let side = cfg.position_grid_side;
        let positions = embeddings
            .pp("position_embedding")
            .get("weight", &[side * side, cfg.hidden_size])?;
        let position_grid = positions
            .to_dtype(DType::F32)?
            .t()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let layers = (0..cfg.used_layers())
            .map(|i| EncoderLayer::load(&weights.pp("encoder").pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionTower {
            patch_embedding: Linear::load(
                &embeddings.pp("patch_embedding"),
                cfg.patch_dim(),
                cfg.hidden_size,
                true,
            )?,
            position_grid,
            layers,
            config: cfg.clone(),
        })
    }

    /// Encodes a batch of images, each given as its patches `[grid_h · grid_w, patch_dim]` and
    /// grid, into features `[patches, hidden]` stacked in batch order: `[Σ patches, hidden]`.
    pub fn encode_batch(&self, images: &[(&Tensor, usize, usize)]) -> Result<Tensor> {
        let side = self.config.position_grid_side;
        let hidden = self.config.hidden_size;
        let dtype = self.patch_embedding.dtype();
        let mut rows = Vec::with_capacity(images.len());
        let mut positions = Vec::with_capacity(images.len());
        for &(patches, grid_h, grid_w) in images {
            let (count, dim) = patches.dims2()?;
            if count != grid_h * grid_w || dim != self.config.patch_dim() {
                return Err(ModelError::BadInput(format!(
                    "image patches are [{count}, {dim}], expected [{}, {}] for a {grid_h}x{grid_w} grid",
                    grid_h * grid_w,
                    self.config.patch_dim()
                )));
            }
            let start = rows
                .last()
                .map_or(0, |previous: &Range<usize>| previous.end);
            rows.push(start..start + count);
            let resized =
                resize_position_grid(&self.position_grid, hidden, side, side, grid_h, grid_w);
            positions.push(Tensor::from_vec(
                resized,
                (count, hidden),
                patches.device(),
            )?);
        }
        let patches: Vec<Tensor> = images
            .iter()
            .map(|(patches, _, _)| (*patches).clone())
            .collect();
        let patches = Tensor::cat(&patches, 0)?.to_dtype(dtype)?;
        let positions = Tensor::cat(&positions, 0)?.to_dtype(dtype)?;
        let mut x = (self.patch_embedding.forward(&patches)? + positions)?;
        for layer in &self.layers {
            x = layer.forward(&x, &rows)?;
        }
        Ok(x)
    }
}

/// `Linear → GELU (erf) → Linear`: vision features to decoder embeddings (`model.mm_projector`).
pub struct Projector {
    first: Linear,
    second: Linear,
}

impl Projector {
    /// Loads `0.{weight,bias}` and `2.{weight,bias}` under `weights`.
    pub fn load(weights: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let (vision, text) = (cfg.vision.hidden_size, cfg.text.hidden_size);
        Ok(Projector {
            first: Linear::load(&weights.pp(0), vision, text, true)?,
            second: Linear::load(&weights.pp(2), text, text, true)?,
        })
    }

    /// `[N, vision_hidden]` → `[N, text_hidden]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.second
            .forward(&self.first.forward(features)?.gelu_erf()?)
    }
}
