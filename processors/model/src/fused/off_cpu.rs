//! The fused ops' maths on devices that have no kernels for them yet (CUDA): the composite
//! reference ops in the fused ops' layouts, differentiated by candle's autograd. Each fused op
//! routes here when its input is not on the CPU, so the `cuda` build trains and generates as
//! before the fused ops; a CUDA kernel replaces the route by filling the op's `cuda_fwd`.

use crate::reference::{attention, causal_mask};
use candle_core::{Result, Tensor};

/// `[len, n, head_dim]` -> `[n, len, head_dim]`.
fn heads_first(t: &Tensor) -> Result<Tensor> {
    t.transpose(0, 1)?.contiguous()
}

/// [`super::attention::packed_attention`]: one sequence at a time with a causal mask.
pub fn packed_attention(q: &Tensor, k: &Tensor, v: &Tensor, sequence_lengths: &[usize]) -> Result<Tensor> {
    if sequence_lengths.iter().sum::<usize>() != q.dim(0)? {
        candle_core::bail!(
            "packed_attention: sequence lengths {sequence_lengths:?} do not add up to the row's {}",
            q.dim(0)?
        );
    }
    if q.dim(0)? == 0 {
        return q.zeros_like();
    }
    let mut outputs = Vec::with_capacity(sequence_lengths.len());
    let mut start = 0;
    for &len in sequence_lengths.iter().filter(|&&len| len > 0) {
        let (q, k, v) = (q.narrow(0, start, len)?, k.narrow(0, start, len)?, v.narrow(0, start, len)?);
        let mask = causal_mask(len, 0, q.dtype(), q.device())?;
        let out = attention(&heads_first(&q)?, &heads_first(&k)?, &heads_first(&v)?, Some(&mask))?;
        outputs.push(out.transpose(0, 1)?);
        start += len;
    }
    Tensor::cat(&outputs, 0)?.contiguous()
}

/// [`super::attention::cached_attention`].
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, past: usize) -> Result<Tensor> {
    let mask = causal_mask(q.dim(0)?, past, q.dtype(), q.device())?;
    attention(&heads_first(q)?, &heads_first(k)?, &heads_first(v)?, Some(&mask))?.transpose(0, 1)?.contiguous()
}

/// [`super::rope::rope`] from the tables' halves `[max_positions, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, positions: &[u32]) -> Result<Tensor> {
    let ids = Tensor::from_slice(positions, positions.len(), x.device())?;
    let full = |half: &Tensor| -> Result<Tensor> {
        let picked = half.index_select(&ids, 0)?.to_dtype(x.dtype())?;
        Tensor::cat(&[&picked, &picked], 1)?.unsqueeze(1)
    };
    let (cos, sin) = (full(cos)?, full(sin)?);
    let half = x.dim(2)? / 2;
    let rotated = Tensor::cat(&[&x.narrow(2, half, half)?.neg()?, &x.narrow(2, 0, half)?], 2)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}
