//! Rotary position embedding (NeoX layout: the two halves of the rotated dimensions pair up),
//! with precomputed cos/sin tables computed the way Hugging Face does, in f32.

use candle_core::{DType, Device, Tensor};

use crate::config::TextConfig;
use crate::error::{ModelError, Result};

/// cos/sin tables for every position up to `max_position_embeddings`.
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
    head_dim: usize,
}

impl RotaryEmbedding {
    /// Builds the tables for `cfg`, stored in `dtype` (as the reference casts them to the activations' dtype).
    pub fn new(cfg: &TextConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.rotary_dim / 2;
        let theta = cfg.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / cfg.rotary_dim as f32))
            .collect();
        let positions = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for position in 0..positions {
            for &freq in &inv_freq {
                let angle = position as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(RotaryEmbedding {
            cos: Tensor::from_vec(cos, (positions, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (positions, half), device)?.to_dtype(dtype)?,
            rotary_dim: cfg.rotary_dim,
            head_dim: cfg.head_dim,
        })
    }

    /// The cos and sin rows `[T, rotary_dim / 2]` of `positions`, for [`RotaryEmbedding::apply`].
    pub fn angles(&self, positions: &[u32]) -> Result<(Tensor, Tensor)> {
        let max_positions = self.cos.dim(0)?;
        if let Some(&beyond) = positions.iter().find(|&&p| p as usize >= max_positions) {
            return Err(ModelError::BadInput(format!(
                "position {beyond} exceeds max_position_embeddings ({max_positions})"
            )));
        }
        let index = Tensor::new(positions, self.cos.device())?;
        Ok((
            self.cos.index_select(&index, 0)?,
            self.sin.index_select(&index, 0)?,
        ))
    }

    /// Rotates `x` `[heads, T, head_dim]` whose rows sit at the positions `angles` was made for.
    pub fn apply(&self, x: &Tensor, angles: &(Tensor, Tensor)) -> Result<Tensor> {
        let (cos, sin) = (&angles.0, &angles.1);
        let x = x.unsqueeze(0)?;
        let rotated = if self.rotary_dim == self.head_dim {
            candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?
        } else {
            let rot = x.narrow(3, 0, self.rotary_dim)?.contiguous()?;
            let pass = x.narrow(3, self.rotary_dim, self.head_dim - self.rotary_dim)?;
            Tensor::cat(&[&candle_nn::rotary_emb::rope(&rot, cos, sin)?, &pass], 3)?
        };
        Ok(rotated.squeeze(0)?)
    }
}
