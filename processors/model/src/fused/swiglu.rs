//! SwiGLU, `silu(gate) * up`, in one pass with its own backward.
//!
//! With `s = sigmoid(gate)`: `silu(gate) = gate * s` and `silu'(gate) = s * (1 + gate * (1 - s))`,
//! so for the incoming gradient `g`: `d gate = g * up * silu'(gate)` and `d up = g * silu(gate)`.
//! Nothing is saved: the backward recomputes `s` from `gate`.

use super::cpu::{cpu_slice, wide_dtype, Real};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise the scheduling.
const TASK_ELEMENTS: usize = 16 * 1024;

/// silu(gate) * up, elementwise, with its backward.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !gate.device().is_cpu() {
        return crate::reference::swiglu(gate, up);
    }
    if gate.dims() != up.dims() {
        bail!("swiglu: gate {:?} and up {:?} differ in shape", gate.dims(), up.dims());
    }
    let dtype = gate.dtype();
    let wide = wide_dtype(dtype);
    let gate_wide = gate.to_dtype(wide)?.contiguous()?;
    let up_wide = up.to_dtype(wide)?.contiguous()?;
    gate_wide.apply_op2(&up_wide, SwiGlu)?.to_dtype(dtype)
}

struct SwiGlu;

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (T::zero() - x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (gs, us) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(forward::<f32>(cpu_slice(gs, gl)?, cpu_slice(us, ul)?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(forward::<f64>(cpu_slice(gs, gl)?, cpu_slice(us, ul)?))
            }
            _ => bail!("{}: unsupported dtypes {:?}, {:?}", self.name(), gs.dtype(), us.dtype()),
        };
        Ok((out, gl.shape().clone()))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        bail!("{}: not yet implemented on CUDA", self.name())
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        // Both gradients come out of one pass into one buffer `[d gate | d up]`.
        let packed = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward)?;
        let d_gate = packed.narrow(0, 0, n)?.reshape(gate.shape())?;
        let d_up = packed.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

fn forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); gate.len()];
    out.par_chunks_mut(TASK_ELEMENTS).zip(gate.par_chunks(TASK_ELEMENTS).zip(up.par_chunks(TASK_ELEMENTS))).for_each(
        |(out, (gate, up))| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        },
    );
    out
}

/// The backward of [`SwiGlu`]: inputs (gate, up, grad), output `[d gate | d up]` flattened.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "fused-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (gs, us, ds) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(backward::<f32>(cpu_slice(gs, gl)?, cpu_slice(us, ul)?, cpu_slice(ds, dl)?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(backward::<f64>(cpu_slice(gs, gl)?, cpu_slice(us, ul)?, cpu_slice(ds, dl)?))
            }
            _ => bail!("{}: unsupported dtypes {:?}, {:?}, {:?}", self.name(), gs.dtype(), us.dtype(), ds.dtype()),
        };
        Ok((out, Shape::from(2 * gl.shape().elem_count())))
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

fn backward<T: Real>(gate: &[T], up: &[T], grad: &[T]) -> Vec<T> {
    let n = gate.len();
    let mut out = vec![T::zero(); 2 * n];
    let (d_gate, d_up) = out.split_at_mut(n);
    d_gate
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(d_up.par_chunks_mut(TASK_ELEMENTS))
        .zip(gate.par_chunks(TASK_ELEMENTS).zip(up.par_chunks(TASK_ELEMENTS)).zip(grad.par_chunks(TASK_ELEMENTS)))
        .for_each(|((d_gate, d_up), ((gate, up), grad))| {
            for ((dg, du), ((&g, &u), &d)) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(gate.iter().zip(up).zip(grad))
            {
                let s = sigmoid(g);
                *dg = d * u * s * (T::one() + g * (T::one() - s));
                *du = d * g * s;
            }
        });
    out
}
