//! The optimizer's element-wise passes, in place: the AdamW update of one parameter (weight,
//! moments and gradient read once, weight and moments written back into their own storage),
//! gradient accumulation (`dst += src`) and the sum of squares behind the global gradient norm.
//!
//! Nothing here allocates per step beyond a scalar: an update over SmolLM2's 135M weights
//! touches ~2 GB of f32 state, so a fresh tensor per formula term (the composite form) costs
//! both memory and bandwidth. The passes run over rayon chunks on the CPU; `cuda_fwd` is where
//! the CUDA kernels go (today the trainer keeps the composite form on other devices).
//!
//! The update reproduces the composite form's operation order term by term (candle's
//! `tensor * f64` is `x * mul + 0` in the tensor's dtype), so on the CPU it gives the same bits
//! as the composite for the same clip factor.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, InplaceOp1, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::Cell;

/// Elements per rayon task: large enough that scheduling is noise, small enough that a
/// 768-wide norm weight and a 38M-element embedding both spread over the cores.
const CHUNK: usize = 1 << 14;

/// One AdamW step's scalars (the same for every parameter of the step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Factor applied to the gradient first (global-norm clipping; 1 when not clipping).
    pub clip: f64,
    /// 1-based step number, for bias correction.
    pub step: u64,
}

/// Updates `weight` and `moments` in place from `grad`: `moments` is `[2, ..]` holding
/// `2 * numel` elements (first moment, then second), `grad` has the weight's element count. All three share one float
/// dtype (f32 or f64), are contiguous and live on the CPU.
pub fn adamw_update(weight: &Tensor, moments: &Tensor, grad: &Tensor, step: &AdamWStep) -> Result<()> {
    let n = weight.elem_count();
    if grad.elem_count() != n || moments.dims().first() != Some(&2) || moments.elem_count() != 2 * n {
        bail!(
            "adamw: weight {:?}, moments {:?} and grad {:?} do not match (moments must be [2, ..] with 2 x numel elements)",
            weight.shape(),
            moments.shape(),
            grad.shape()
        )
    }
    if weight.dtype() != moments.dtype() || weight.dtype() != grad.dtype() {
        bail!(
            "adamw: weight {:?}, moments {:?} and grad {:?} must share a dtype",
            weight.dtype(),
            moments.dtype(),
            grad.dtype()
        )
    }
    // candle hands an in-place op one mutable storage; the moments' op lends its slice to the
    // weight's op, so the single pass below sees all three.
    moments.inplace_op2(grad, &MomentsPass { weight, step: *step })
}

/// Adds `src` into `dst` in place (same element count and dtype, f32 or f64, contiguous, CPU).
pub fn add_assign(dst: &Tensor, src: &Tensor) -> Result<()> {
    if dst.elem_count() != src.elem_count() || dst.dtype() != src.dtype() {
        bail!("add_assign: {:?} {:?} += {:?} {:?}", dst.shape(), dst.dtype(), src.shape(), src.dtype())
    }
    dst.inplace_op2(src, &AddAssign)
}

/// The sum of the squares of every element, accumulated in f64: a scalar f64 tensor on the
/// tensor's device, so a caller sums many of them and reads back once.
pub fn sum_squares(t: &Tensor) -> Result<Tensor> {
    t.apply_op1_no_bwd(&SumSquares)
}

/// The float types the passes run on, and how to see them in a `CpuStorage`.
trait Real: candle_core::WithDType + Send + Sync {
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [f32]> {
        match storage {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn slice_mut(storage: &mut CpuStorage) -> Option<&mut [f64]> {
        match storage {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
}

/// The contiguous elements a layout addresses, or an error naming the op.
fn span(layout: &Layout, op: &str) -> Result<std::ops::Range<usize>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(start..end),
        None => bail!("{op}: needs contiguous tensors"),
    }
}

fn view<'a, T: Real>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    Ok(&storage.as_slice::<T>()?[span(layout, op)?])
}

fn view_mut<'a, T: Real>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [T]> {
    let range = span(layout, op)?;
    let dtype = storage.dtype();
    match T::slice_mut(storage) {
        Some(slice) => Ok(&mut slice[range]),
        None => bail!("{op}: unexpected dtype {dtype:?}"),
    }
}

fn not_on_cuda(op: &str) -> Result<()> {
    bail!("{op}: not yet implemented on CUDA (use the composite form there)")
}

/// Outer op, on the moments: takes their slice and the gradient's, then runs the weight's op.
struct MomentsPass<'a> {
    weight: &'a Tensor,
    step: AdamWStep,
}

impl MomentsPass<'_> {
    fn run<T: Real>(&self, moments: &mut CpuStorage, lm: &Layout, grad: &CpuStorage, lg: &Layout) -> Result<()> {
        let moments = view_mut::<T>(moments, lm, "adamw")?;
        let grad = view::<T>(grad, lg, "adamw")?;
        self.weight.inplace_op1(&WeightPass { moments: Cell::new(Some(moments)), grad, step: self.step })
    }
}

impl InplaceOp2 for MomentsPass<'_> {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(&self, moments: &mut CpuStorage, lm: &Layout, grad: &CpuStorage, lg: &Layout) -> Result<()> {
        match moments {
            CpuStorage::F32(_) => self.run::<f32>(moments, lm, grad, lg),
            CpuStorage::F64(_) => self.run::<f64>(moments, lm, grad, lg),
            other => bail!("adamw: moments must be f32 or f64, not {:?}", other.dtype()),
        }
    }

    fn cuda_fwd(
        &self,
        _: &mut candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<()> {
        not_on_cuda("adamw")
    }
}

/// Inner op, on the weight: the one pass over (weight, first, second, grad).
struct WeightPass<'a, T> {
    /// Lent by [`MomentsPass`]; taken once (`cpu_fwd` has `&self`).
    moments: Cell<Option<&'a mut [T]>>,
    grad: &'a [T],
    step: AdamWStep,
}

impl<T: Real> InplaceOp1 for WeightPass<'_, T> {
    fn name(&self) -> &'static str {
        "adamw-weight"
    }

    fn cpu_fwd(&self, weight: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let weight = view_mut::<T>(weight, layout, "adamw")?;
        let Some(moments) = self.moments.take() else { bail!("adamw: the moments were already used") };
        let (first, second) = moments.split_at_mut(weight.len());
        let s = &self.step;
        let t = |x: f64| T::from_f64(x);
        // The composite form's scalars, converted to T as candle's affine converts them.
        let (clip, beta1, one_minus_beta1) = (t(s.clip), t(s.beta1), t(1.0 - s.beta1));
        let (beta2, one_minus_beta2) = (t(s.beta2), t(1.0 - s.beta2));
        let inverse_correction1 = t(1.0 / (1.0 - s.beta1.powi(s.step as i32)));
        let inverse_correction2 = t(1.0 / (1.0 - s.beta2.powi(s.step as i32)));
        let (eps, decay, lr, zero) = (t(s.eps), t(1.0 - s.lr * s.weight_decay), t(s.lr), t(0.0));
        weight
            .par_chunks_mut(CHUNK)
            .zip(first.par_chunks_mut(CHUNK))
            .zip(second.par_chunks_mut(CHUNK))
            .zip(self.grad.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| {
                for i in 0..w.len() {
                    let g = g[i] * clip + zero;
                    m[i] = (m[i] * beta1 + zero) + (g * one_minus_beta1 + zero);
                    v[i] = (v[i] * beta2 + zero) + ((g * g) * one_minus_beta2 + zero);
                    let first_hat = m[i] * inverse_correction1 + zero;
                    let second_hat = v[i] * inverse_correction2 + zero;
                    let update = first_hat / (second_hat.sqrt() + eps);
                    w[i] = (w[i] * decay + zero) - (update * lr + zero);
                }
            });
        Ok(())
    }

    fn cuda_fwd(&self, _: &mut candle_core::CudaStorage, _: &Layout) -> Result<()> {
        not_on_cuda("adamw")
    }
}

/// `dst += src`, element-wise.
struct AddAssign;

impl AddAssign {
    fn run<T: Real>(dst: &mut CpuStorage, ld: &Layout, src: &CpuStorage, ls: &Layout) -> Result<()> {
        let dst = view_mut::<T>(dst, ld, "add_assign")?;
        let src = view::<T>(src, ls, "add_assign")?;
        dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d += *s;
            }
        });
        Ok(())
    }
}

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "add-assign"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, ld: &Layout, src: &CpuStorage, ls: &Layout) -> Result<()> {
        match dst {
            CpuStorage::F32(_) => AddAssign::run::<f32>(dst, ld, src, ls),
            CpuStorage::F64(_) => AddAssign::run::<f64>(dst, ld, src, ls),
            other => bail!("add_assign: f32 or f64 only, not {:?}", other.dtype()),
        }
    }

    fn cuda_fwd(
        &self,
        _: &mut candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<()> {
        not_on_cuda("add_assign")
    }
}

/// Sum of squares in f64. Per-chunk partial sums are added in chunk order, so the result does
/// not depend on the thread count (a restarted run must reproduce every clip factor).
struct SumSquares;

fn sum_squares_of<T: Real>(values: &[T]) -> f64 {
    let partials: Vec<f64> =
        values.par_chunks(CHUNK).map(|chunk| chunk.iter().map(|x| x.to_f64() * x.to_f64()).sum::<f64>()).collect();
    partials.iter().sum()
}

impl CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "sum-squares"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let sum = match storage {
            CpuStorage::F32(_) => sum_squares_of(view::<f32>(storage, layout, "sum_squares")?),
            CpuStorage::F64(_) => sum_squares_of(view::<f64>(storage, layout, "sum_squares")?),
            other => bail!("sum_squares: f32 or f64 only, not {:?}", other.dtype()),
        };
        Ok((CpuStorage::F64(vec![sum]), Shape::from(())))
    }

    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        bail!("sum_squares: not yet implemented on CUDA (use the composite form there)")
    }
}
