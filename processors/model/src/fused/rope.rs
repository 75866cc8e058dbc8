//! Rotary position embedding in one pass, each token at its own position, with its own backward.
//!
//! Hugging Face layout (`rotate_half`): dimension `i < head_dim / 2` pairs with `i + head_dim / 2`
//! and the pair `(a, b)` rotates by the angle `position * theta^(-2i / head_dim)`:
//! `(a cos - b sin, b cos + a sin)`. A rotation is orthogonal, so the backward is the rotation of
//! the incoming gradient by the negative angle; nothing is saved.
//!
//! Positions come per token rather than as one range, so a packed row (positions restarting at 0
//! for each sequence) is rotated in one call, without slicing per sequence.

use super::cpu::{cpu_slice, rows_per_task, wide_dtype, Real};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Cos/sin tables for positions 0..max_positions, `[max_positions, head_dim / 2]`, built ONCE
/// per run on the device (f32; f64 when asked for f64).
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    head_dim: usize,
    max_positions: usize,
}

impl RopeTables {
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, dtype: DType, device: &Device) -> Result<RopeTables> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("rope: head_dim {head_dim} must be even and positive");
        }
        let half = head_dim / 2;
        // Angles in f64 whatever the table's dtype, as the reference tables are built.
        let inverse_frequencies: Vec<f64> =
            (0..half).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for position in 0..max_positions {
            for &frequency in &inverse_frequencies {
                let angle = position as f64 * frequency;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let dtype = wide_dtype(dtype);
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?,
            head_dim,
            max_positions,
        })
    }

    /// The cos and sin tables, `[max_positions, head_dim / 2]`.
    pub fn halves(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The head dimension the tables were built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// Rotary embedding, Hugging Face layout (rotate_half: pairs (i, i + head_dim/2)), of
/// x `[len, heads, head_dim]` where token t has position positions[t] (positions restart at 0
/// for each packed sequence; for generation they are past..past+len). Backward = rotation by
/// the negative angle. An error if a position >= max_positions.
pub fn rope(x: &Tensor, tables: &RopeTables, positions: &[u32]) -> Result<Tensor> {
    let (len, _heads, head_dim) = x.dims3()?;
    if head_dim != tables.head_dim {
        bail!("rope: x has head_dim {head_dim}, the tables {}", tables.head_dim);
    }
    if positions.len() != len {
        bail!("rope: {} positions for {len} tokens", positions.len());
    }
    if let Some(&position) = positions.iter().find(|&&p| p as usize >= tables.max_positions) {
        bail!("rope: position {position} is past the tables' {} positions", tables.max_positions);
    }
    if !x.device().is_cpu() {
        return super::off_cpu::rope(x, &tables.cos, &tables.sin, positions);
    }
    let dtype = x.dtype();
    let wide = wide_dtype(dtype);
    // Tables in another dtype than the compute dtype (f32 tables, f64 input) are converted for
    // this call only; build them in the dtype the model runs in to avoid it.
    let (cos, sin) = if tables.cos.dtype() == wide {
        (tables.cos.clone(), tables.sin.clone())
    } else {
        (tables.cos.to_dtype(wide)?, tables.sin.to_dtype(wide)?)
    };
    let op = Rope { positions: Arc::from(positions), inverse: false };
    x.to_dtype(wide)?.contiguous()?.apply_op3(&cos, &sin, op)?.to_dtype(dtype)
}

/// Inputs (x, cos, sin); `inverse` rotates by the negative angle (the backward).
struct Rope {
    positions: Arc<[u32]>,
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        if self.inverse {
            "fused-rope-backward"
        } else {
            "fused-rope"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, heads, head_dim) = xl.shape().dims3()?;
        let row = heads * head_dim;
        let out = match (xs, cs, ss) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(rotate::<f32>(
                cpu_slice(xs, xl)?,
                cpu_slice(cs, cl)?,
                cpu_slice(ss, sl)?,
                &self.positions,
                row,
                head_dim,
                self.inverse,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(rotate::<f64>(
                cpu_slice(xs, xl)?,
                cpu_slice(cs, cl)?,
                cpu_slice(ss, sl)?,
                &self.positions,
                row,
                head_dim,
                self.inverse,
            )),
            _ => bail!("{}: unsupported dtypes {:?}, {:?}, {:?}", self.name(), xs.dtype(), cs.dtype(), ss.dtype()),
        };
        Ok((out, xl.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        bail!("{}: not yet implemented on CUDA", self.name())
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = Rope { positions: self.positions.clone(), inverse: !self.inverse };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        // The tables are constants: no gradient.
        Ok((Some(dx), None, None))
    }
}

/// Rotates every head of every token; tokens are split across threads.
fn rotate<T: Real>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    positions: &[u32],
    row: usize,
    head_dim: usize,
    inverse: bool,
) -> Vec<T> {
    let half = head_dim / 2;
    let mut out = vec![T::zero(); x.len()];
    let tokens_per_task = rows_per_task(positions.len(), row);
    out.par_chunks_mut(tokens_per_task * row)
        .zip(x.par_chunks(tokens_per_task * row))
        .zip(positions.par_chunks(tokens_per_task))
        .for_each(|((out, x), positions)| {
            for ((out, x), &position) in out.chunks_mut(row).zip(x.chunks(row)).zip(positions) {
                let at = position as usize * half;
                let (cos, sin) = (&cos[at..at + half], &sin[at..at + half]);
                for (out, x) in out.chunks_mut(head_dim).zip(x.chunks(head_dim)) {
                    let (out_first, out_second) = out.split_at_mut(half);
                    let (first, second) = x.split_at(half);
                    for i in 0..half {
                        let (a, b, c) = (first[i], second[i], cos[i]);
                        let s = if inverse { T::zero() - sin[i] } else { sin[i] };
                        out_first[i] = a * c - b * s;
                        out_second[i] = b * c + a * s;
                    }
                }
            }
        });
    out
}
