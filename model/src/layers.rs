//! Building blocks shared by the encoder and the decoder: linear layers and normalisations.
//!
//! Activations are 2-D `[tokens, features]` everywhere: a batch is a flat run of tokens, which is
//! what a continuous-batching engine feeds the model.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::weights::Weights;

/// `y = x · Wᵀ (+ b)`, with `W` stored `[out, in]` as in PyTorch.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` (and `bias` when `with_bias`) of a `[out_features, in_features]` layer.
    pub fn load(weights: &Weights, in_features: usize, out_features: usize, with_bias: bool) -> Result<Self> {
        let weight = weights.get("weight", &[out_features, in_features])?;
        let bias = if with_bias {
            Some(weights.get("bias", &[out_features])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Applies the layer to `[tokens, in]`, giving `[tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }

    /// The dtype of the weights (the layer's compute dtype).
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }
}

/// Root-mean-square normalisation with a learned scale (the decoder's norm).
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `weight` of size `dim`.
    pub fn load(weights: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: weights.get("weight", &[dim])?,
            eps: eps as f32,
        })
    }

    /// Normalises each row of `x`; accumulates in f32 whatever the dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)?)
    }
}

/// Layer normalisation with scale and bias (the encoder's norm).
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim`.
    pub fn load(weights: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: weights.get("weight", &[dim])?,
            bias: weights.get("bias", &[dim])?,
            eps: eps as f32,
        })
    }

    /// Normalises each row of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)?)
    }
}

/// Softmax over the last dimension, computed in f32 and returned in `dtype`.
pub fn softmax_f32(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let probs = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?;
    Ok(probs.to_dtype(dtype)?)
}

/// The last row of a `[tokens, features]` tensor, kept 2-D.
pub fn last_row(x: &Tensor) -> Result<Tensor> {
    let rows = x.dim(0)?;
    Ok(x.narrow(0, rows - 1, 1)?)
}

