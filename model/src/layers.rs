//! Building blocks shared by the encoder and the decoder: linear layers and normalisations.
//!
//! Activations are 2-D `[tokens, features]` everywhere: a batch is a flat run of tokens, which is
//! what a continuous-batching engine feeds the model.

use candle_core::{DType, Device, Tensor};
use fovea_kernels::matvec;

use crate::cpu::{map_f32, with_f32_slice};
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

    /// One layer computing several layers' outputs side by side (their weights stacked by rows).
    pub fn stack(layers: &[Linear]) -> Result<Self> {
        let weights: Vec<&Tensor> = layers.iter().map(|l| &l.weight).collect();
        let biases: Option<Vec<&Tensor>> = layers.iter().map(|l| l.bias.as_ref()).collect();
        Ok(Linear {
            weight: Tensor::cat(&weights, 0)?,
            bias: biases.map(|b| Tensor::cat(&b, 0)).transpose()?,
        })
    }

    /// Applies the layer to `[tokens, in]`, giving `[tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match skinny_matmul(x, &self.weight)? {
            Some(y) => y,
            None => x.matmul(&self.weight.t()?)?,
        };
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

/// `x · wᵀ` through the streaming kernel when `x` has few rows (decoding) and both are f32 on the
/// CPU; `None` when the general matmul should run instead.
fn skinny_matmul(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    let (rows, k) = x.dims2()?;
    let n = weight.dim(0)?;
    let eligible = rows <= matvec::MAX_ROWS
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.is_contiguous()
        && matches!(x.device(), Device::Cpu);
    if !eligible {
        return Ok(None);
    }
    let y = with_f32_slice(weight, |w_values| {
        map_f32(x, (rows, n), |x_values, out| {
            matvec::matmul_transposed(x_values, &w_values[..n * k], rows, k, n, out)
        })
    })??;
    Ok(Some(y))
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

/// Heads `first_head..first_head + count` of a fused projection `[L, heads · head_dim]`, as a
/// packed `[count, L, head_dim]` tensor (the layout attention takes).
pub fn split_heads(fused: &Tensor, first_head: usize, count: usize, head_dim: usize) -> Result<Tensor> {
    let len = fused.dim(0)?;
    Ok(fused
        .narrow(1, first_head * head_dim, count * head_dim)?
        .reshape((len, count, head_dim))?
        .transpose(0, 1)?
        .contiguous()?)
}

/// Softmax over the last dimension, computed in f32 and returned in `dtype`.
pub fn softmax_f32(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let probs = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?;
    Ok(probs.to_dtype(dtype)?)
}
