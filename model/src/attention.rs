//! Attention over one sequence's keys and values, as the decoder and the vision encoder call it:
//! candle tensors in and out, the fused CPU kernel of `fovea_kernels::attention` in between.
//!
//! Grouped-query heads read their shared KV head in place, and keys may be a view into a larger
//! cache buffer (heads a fixed stride apart), so a decoding step copies nothing but its own query.
//! Tensors on a GPU are copied to host memory for the kernel and the output copied back.

use candle_core::{DType, Device, Tensor};
pub use fovea_kernels::attention::HeadGroups;
use fovea_kernels::attention::{AttentionShape, Mask, attention as fused_attention};

use crate::cpu::with_f32_slice;
use crate::error::{ModelError, Result};

/// Which keys each query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Query `i` sits at position `past + i` and sees keys `0..=past + i` (the decoder).
    Causal { past: usize },
    /// Every query sees every key (the vision encoder, within one image).
    Full,
}

/// Attention of `q` `[q_heads, L, D]` over `k`, `v` `[kv_heads, S, D]`, giving `[L, q_heads · D]`
/// in `q`'s dtype. Query head `h` reads KV head `groups.kv_head(h)` (for a whole model,
/// `h / (q_heads / kv_heads)`, as Hugging Face's `repeat_kv` does). Computed in f32.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    groups: HeadGroups,
    visibility: Visibility,
) -> Result<Tensor> {
    let (q_heads, q_len, head_dim) = q.dims3()?;
    let (kv_heads, kv_len, _) = k.dims3()?;
    if !groups.fits(q_heads, kv_heads) || v.dims3()? != (kv_heads, kv_len, head_dim) {
        return Err(ModelError::BadInput(format!(
            "attention shapes q {:?}, k {:?}, v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let q32 = q
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .contiguous()?;
    let (k32, k_stride) = heads_with_stride(k)?;
    let (v32, v_stride) = heads_with_stride(v)?;
    // Both views come from buffers of the same layout; fall back to packed copies if not.
    let (k32, v32, kv_head_stride) = if k_stride == v_stride {
        (k32, v32, k_stride)
    } else {
        (k32.contiguous()?, v32.contiguous()?, kv_len * head_dim)
    };
    let shape = AttentionShape {
        q_heads,
        kv_heads,
        groups,
        q_len,
        kv_len,
        head_dim,
        kv_head_stride,
        mask: match visibility {
            Visibility::Causal { past } => Mask::Causal { past },
            Visibility::Full => Mask::Full,
        },
    };
    let mut out = vec![0f32; q_heads * q_len * head_dim];
    with_f32_slice(&q32, |q_values| {
        with_f32_slice(&k32, |k_values| {
            with_f32_slice(&v32, |v_values| {
                fused_attention(q_values, k_values, v_values, shape, &mut out)
            })
        })
    })???;
    let out = Tensor::from_vec(out, (q_heads, q_len, head_dim), &Device::Cpu)?;
    let out = out
        .transpose(0, 1)?
        .reshape((q_len, q_heads * head_dim))?
        .to_dtype(q.dtype())?;
    Ok(out.to_device(q.device())?)
}

/// `t` `[heads, S, D]` as f32 in host memory whose rows are packed within each head, and the
/// element distance between consecutive heads (a cache view keeps its buffer's stride instead of
/// being copied).
fn heads_with_stride(t: &Tensor) -> Result<(Tensor, usize)> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (_, rows, head_dim) = t.dims3()?;
    let stride = t.stride();
    if stride[2] == 1 && stride[1] == head_dim {
        let head_stride = stride[0];
        return Ok((t, head_stride));
    }
    Ok((t.contiguous()?, rows * head_dim))
}
