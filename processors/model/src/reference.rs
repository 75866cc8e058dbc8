//! The differentiable building blocks of the decoder.
//!
//! candle 0.11's fused ops (`candle_nn::ops::softmax_last_dim`, `rms_norm`, `layer_norm`,
//! `RmsNorm::forward`, `rotary_emb::rope*`) have no backward pass: everything upstream of them
//! silently gets no gradient (candle issues #2168, #3011, #3568). Every op here is composed of
//! primitives that candle differentiates (`exp`, `sqrt`, `broadcast_*`, `narrow`, `cat`,
//! `matmul`, `index_select`, `gather`), so gradients reach every weight. The tests check them
//! against finite differences.

use candle_core::{DType, Device, Result, Tensor, D};

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension, computed in f32 (or f64 when
/// the input is f64) whatever the compute dtype, as Hugging Face's `LlamaRMSNorm` does.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let x = x.to_dtype(wide)?;
    let inverse_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let normed = x.broadcast_mul(&inverse_rms)?.to_dtype(dtype)?;
    normed.broadcast_mul(&weight.to_dtype(dtype)?)
}

/// Softmax over the last dimension. The row maximum is subtracted for stability and detached:
/// softmax is invariant to that shift, so its gradient is exactly zero and need not be traced.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// log(softmax(x)) over the last dimension, without forming the softmax.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Cos and sin tables of rotary position embeddings for positions `0..len`, shape
/// `[len, head_dim]` (each frequency repeated for both halves, the Hugging Face layout).
pub struct RotaryTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RotaryTables {
    pub fn new(head_dim: usize, theta: f64, len: usize, dtype: DType, device: &Device) -> Result<RotaryTables> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for position in 0..len {
            for i in 0..head_dim {
                let inverse_frequency = 1.0 / theta.powf((2 * (i % half)) as f64 / head_dim as f64);
                let angle = position as f64 * inverse_frequency;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, (len, head_dim), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (len, head_dim), device)?.to_dtype(dtype)?,
        })
    }

    /// The tables for positions `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, start, len)?, self.sin.narrow(0, start, len)?))
    }
}

/// Rotary embedding of `x` with shape `[heads, len, head_dim]`, `cos`/`sin` `[len, head_dim]`:
/// `x * cos + rotate_half(x) * sin` where `rotate_half([a, b]) = [-b, a]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let head_dim = x.dim(D::Minus1)?;
    let half = head_dim / 2;
    let first = x.narrow(D::Minus1, 0, half)?;
    let second = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
    x.broadcast_mul(&cos.to_dtype(x.dtype())?)? + rotated.broadcast_mul(&sin.to_dtype(x.dtype())?)?
}

/// An additive causal mask `[len, past + len]` for `len` new positions after `past` cached
/// ones: 0 where the key is at or before the query, -inf after it.
pub fn causal_mask(len: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..past + len).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (len, past + len), device)?.to_dtype(dtype)
}

/// Causal attention of one sequence: `q` `[heads, len, head_dim]`, `k`/`v`
/// `[kv_heads, len_kv, head_dim]` (grouped-query: each kv head serves `heads / kv_heads` query
/// heads). `mask` is added to the scores (`None` when a single query attends to a full cache).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (heads, _, head_dim) = q.dims3()?;
    let (kv_heads, len_kv, _) = k.dims3()?;
    let group = heads / kv_heads;
    let (k, v) = if group == 1 {
        (k.clone(), v.clone())
    } else {
        let repeat = |t: &Tensor| -> Result<Tensor> {
            t.unsqueeze(1)?.broadcast_as((kv_heads, group, len_kv, head_dim))?.reshape((heads, len_kv, head_dim))
        };
        (repeat(k)?, repeat(v)?)
    };
    let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let weights = softmax_last_dim(&scores)?;
    weights.matmul(&v.contiguous()?)
}

/// Sum over rows of `-log p(target)`: `logits` `[n, vocab]`, `targets` `[n]` (u32).
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = log_softmax_last_dim(logits)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?;
    picked.sum_all()?.neg()
}
