//! RMSNorm in one pass per row, with its own backward.
//!
//! Forward: `y = x * r * w` with `r = 1 / sqrt(mean(x^2) + eps)` per row. Backward, for the
//! incoming gradient `g`:
//! `dx_j = r * w_j * g_j - r^3 * x_j / hidden * sum_i(g_i * w_i * x_i)` and
//! `dw_i = sum over rows of g_i * x_i * r`.
//! `r` is recomputed in the backward (one pass over the row) rather than saved.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{cpu_slice, rows_per_task, wide_dtype, Real};

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dim; x `[n, hidden]` (any leading dims
/// flattened), weight `[hidden]`. Statistics in f32 (f64 for f64 input). Backward gives dx and
/// dweight (dweight reduced over rows; multi-threaded without races: per-thread partials).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return crate::reference::rms_norm(x, weight, eps);
    }
    let hidden = x.dim(candle_core::D::Minus1)?;
    if weight.dims() != [hidden] {
        bail!("rms_norm: weight {:?} does not match the last dim of x {:?}", weight.dims(), x.dims());
    }
    let dtype = x.dtype();
    let wide = wide_dtype(dtype);
    let x_wide = x.to_dtype(wide)?.contiguous()?;
    let w_wide = weight.to_dtype(wide)?.contiguous()?;
    x_wide.apply_op2(&w_wide, RmsNorm { eps })?.to_dtype(dtype)
}

struct RmsNorm {
    eps: f64,
}

fn same_dtype(a: &CpuStorage, b: &CpuStorage, op: &str) -> Result<()> {
    if a.dtype() != b.dtype() {
        bail!("{op}: mixed dtypes {:?} and {:?}", a.dtype(), b.dtype());
    }
    Ok(())
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        same_dtype(xs, ws, self.name())?;
        let out = match xs {
            CpuStorage::F32(_) => CpuStorage::F32(norm_fwd::<f32>(cpu_slice(xs, xl)?, cpu_slice(ws, wl)?, self.eps)),
            CpuStorage::F64(_) => CpuStorage::F64(norm_fwd::<f64>(cpu_slice(xs, xl)?, cpu_slice(ws, wl)?, self.eps)),
            other => bail!("{}: unsupported dtype {:?}", self.name(), other.dtype()),
        };
        Ok((out, xl.shape().clone()))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        bail!("{}: not yet implemented on CUDA", self.name())
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let hidden = w.elem_count();
        let total = x.elem_count();
        // One op computes both gradients into one buffer `[dx (n * hidden) | dw (hidden)]`,
        // so the row statistics are computed once for both.
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBackward { eps: self.eps })?;
        let dx = packed.narrow(0, 0, total)?.reshape(x.shape())?;
        let dw = packed.narrow(0, total, hidden)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Inverse RMS of one row, accumulated in the row's own type (f32 statistics for f32 rows).
fn inverse_rms<T: Real>(row: &[T], eps: T) -> T {
    let mut sum = T::zero();
    for &v in row {
        sum += v * v;
    }
    T::one() / (sum / T::from_f64(row.len() as f64) + eps).sqrt()
}

fn norm_fwd<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let hidden = w.len();
    let eps = T::from_f64(eps);
    let mut out = vec![T::zero(); x.len()];
    let block = rows_per_task(x.len() / hidden.max(1), hidden) * hidden;
    out.par_chunks_mut(block).zip(x.par_chunks(block)).for_each(|(out, x)| {
        for (out, x) in out.chunks_mut(hidden).zip(x.chunks(hidden)) {
            let r = inverse_rms(x, eps);
            for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
                *o = xi * r * wi;
            }
        }
    });
    out
}

/// The backward of [`RmsNorm`]: inputs (x, weight, grad), output `[dx | dweight]` flattened.
struct RmsNormBackward {
    eps: f64,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_dtype(xs, ws, self.name())?;
        same_dtype(xs, gs, self.name())?;
        let out = match xs {
            CpuStorage::F32(_) => {
                CpuStorage::F32(norm_bwd::<f32>(cpu_slice(xs, xl)?, cpu_slice(ws, wl)?, cpu_slice(gs, gl)?, self.eps))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(norm_bwd::<f64>(cpu_slice(xs, xl)?, cpu_slice(ws, wl)?, cpu_slice(gs, gl)?, self.eps))
            }
            other => bail!("{}: unsupported dtype {:?}", self.name(), other.dtype()),
        };
        Ok((out, Shape::from(xl.shape().elem_count() + wl.shape().elem_count())))
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
}

fn norm_bwd<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> Vec<T> {
    let hidden = w.len();
    let rows = x.len() / hidden.max(1);
    let eps = T::from_f64(eps);
    let inverse_hidden = T::from_f64(1.0 / hidden as f64);
    let mut out = vec![T::zero(); x.len() + hidden];
    let (dx, dw) = out.split_at_mut(x.len());
    // dweight sums over rows: each task accumulates its own partial row, summed afterwards in
    // task order, so the result is race-free and the same on every run.
    let block_rows = rows_per_task(rows, hidden);
    let tasks = rows.div_ceil(block_rows);
    let mut partials = vec![T::zero(); tasks * hidden];
    let block = block_rows * hidden;
    dx.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(g.par_chunks(block))
        .zip(partials.par_chunks_mut(hidden))
        .for_each(|(((dx, x), g), dw)| {
            for ((dx, x), g) in dx.chunks_mut(hidden).zip(x.chunks(hidden)).zip(g.chunks(hidden)) {
                let r = inverse_rms(x, eps);
                let mut dot = T::zero();
                for ((&gi, &wi), &xi) in g.iter().zip(w).zip(x) {
                    dot += gi * wi * xi;
                }
                let correction = r * r * r * inverse_hidden * dot;
                for (((d, &gi), &wi), (&xi, dwi)) in dx.iter_mut().zip(g).zip(w).zip(x.iter().zip(dw.iter_mut())) {
                    *d = r * wi * gi - correction * xi;
                    *dwi += gi * xi * r;
                }
            }
        });
    for partial in partials.chunks(hidden) {
        for (d, &p) in dw.iter_mut().zip(partial) {
            *d += p;
        }
    }
    out
}
