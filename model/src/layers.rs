//! Building blocks shared by the encoder and the decoder: linear layers and normalisations.
//!
//! Activations are 2-D `[tokens, features]` everywhere: a batch is a flat run of tokens, which is
//! what a continuous-batching engine feeds the model.

use std::ops::Range;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use fovea_kernels::matvec;
use half::slice::HalfFloatSliceExt;

use crate::cpu::map_f32;
use crate::error::{ModelError, Result};
use crate::weights::Weights;

/// `y = x · Wᵀ (+ b)`, with `W` stored `[out, in]` as in PyTorch.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` (and `bias` when `with_bias`) of a `[out_features, in_features]` layer.
    pub fn load(
        weights: &Weights,
        in_features: usize,
        out_features: usize,
        with_bias: bool,
    ) -> Result<Self> {
        let weight = weights.get("weight", &[out_features, in_features])?;
        let bias = if with_bias {
            Some(weights.get("bias", &[out_features])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// A column-parallel slice of a bias-free `[out_features, in_features]` layer: the output
    /// features in `rows` (several ranges, stacked in order, for fused projections), read from the
    /// checkpoint without loading the rest.
    pub fn load_rows(
        weights: &Weights,
        in_features: usize,
        out_features: usize,
        rows: &[Range<usize>],
    ) -> Result<Self> {
        let shape = [out_features, in_features];
        let parts = rows
            .iter()
            .map(|range| weights.get_part("weight", &shape, 0, range.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Linear {
            weight: Tensor::cat(&parts, 0)?,
            bias: None,
        })
    }

    /// A row-parallel slice of a bias-free `[out_features, in_features]` layer: the input
    /// features in `columns` (its output is a partial sum that ranks add up).
    pub fn load_columns(
        weights: &Weights,
        in_features: usize,
        out_features: usize,
        columns: Range<usize>,
    ) -> Result<Self> {
        Ok(Linear {
            weight: weights
                .get_part("weight", &[out_features, in_features], 1, columns)?
                .contiguous()?,
            bias: None,
        })
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

    /// Applies the layer to `[tokens, in]`, giving `[tokens, out]` in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, _) = x.dims2()?;
        let streamable = matches!(x.device(), Device::Cpu)
            && self.weight.is_contiguous()
            && rows <= matvec::MAX_ROWS;
        let y = match self.weight.dtype() {
            DType::F32 | DType::BF16 if streamable => self.stream_weights(x)?,
            // The GEMM library has no bf16 kernels: widen to f32, which is also what a bf16 GEMM
            // accumulates in.
            DType::BF16 => x
                .to_dtype(DType::F32)?
                .matmul(&self.weight.to_dtype(DType::F32)?.t()?)?
                .to_dtype(x.dtype())?,
            _ => x.matmul(&self.weight.t()?)?,
        };
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }

    /// `x · Wᵀ` for up to `matvec::MAX_ROWS` rows (an engine step of up to 512 tokens) with the
    /// streaming kernel, which reads each weight from memory once per call; f32 or bf16 weights.
    /// Longer inputs (a whole long prompt, an image's patches) go to the GEMM, whose packing pass
    /// pays off there.
    fn stream_weights(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, k) = x.dims2()?;
        let n = self.weight.dim(0)?;
        let (storage, layout) = self.weight.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(ModelError::BadInput(
                "the streaming kernel needs CPU weights".into(),
            ));
        };
        let weights = layout.start_offset()..layout.start_offset() + n * k;
        match cpu {
            CpuStorage::BF16(w) => {
                let w: &[u16] = w[weights].reinterpret_cast();
                map_f32(x, (rows, n), |x, out| {
                    matvec::matmul_transposed_bf16(x, w, rows, k, n, out)
                })
            }
            CpuStorage::F32(w) => {
                let w = &w[weights];
                map_f32(x, (rows, n), |x, out| {
                    matvec::matmul_transposed(x, w, rows, k, n, out)
                })
            }
            _ => Err(ModelError::BadInput(format!(
                "no streaming kernel for {:?} weights",
                self.weight.dtype()
            ))),
        }
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
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
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
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

/// Heads `first_head..first_head + count` of a fused projection `[L, heads · head_dim]`, as a
/// packed `[count, L, head_dim]` tensor (the layout attention takes).
pub fn split_heads(
    fused: &Tensor,
    first_head: usize,
    count: usize,
    head_dim: usize,
) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(rows: usize, columns: usize, seed: usize, dtype: DType) -> Tensor {
        let values: Vec<f32> = (0..rows * columns)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        Tensor::from_vec(values, (rows, columns), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// Every row count of an engine step streams the weights and agrees with the GEMM that
    /// longer inputs take (the first rows of `MAX_ROWS + 1`), for f32 and bf16 weights, with the
    /// bias.
    #[test]
    fn streamed_rows_agree_with_the_gemm_for_every_decoding_batch_size() {
        let (k, n) = (70, 301);
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            let layer = Linear {
                weight: pseudo_random(n, k, 1, dtype),
                bias: Some(pseudo_random(1, n, 2, dtype).squeeze(0).unwrap()),
            };
            let x = pseudo_random(matvec::MAX_ROWS + 1, k, 3, dtype);
            let by_gemm = layer.forward(&x).unwrap().to_dtype(DType::F32).unwrap();
            for rows in (1..=64).chain([65, 200, matvec::MAX_ROWS]) {
                let streamed = layer.forward(&x.narrow(0, 0, rows).unwrap()).unwrap();
                assert_eq!(streamed.dtype(), dtype);
                let expected = by_gemm.narrow(0, 0, rows).unwrap();
                let difference = (streamed.to_dtype(DType::F32).unwrap() - &expected)
                    .unwrap()
                    .abs()
                    .unwrap();
                let scale = expected
                    .abs()
                    .unwrap()
                    .max_keepdim(1)
                    .unwrap()
                    .max_keepdim(0)
                    .unwrap();
                let relative = (difference.max_keepdim(1).unwrap().max_keepdim(0).unwrap() / scale)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[0];
                assert!(
                    relative <= tolerance,
                    "{dtype:?}, {rows} rows: relative difference {relative}"
                );
            }
        }
    }
}
