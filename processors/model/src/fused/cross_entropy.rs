//! The output projection and the cross-entropy in one op, a chunk of rows at a time, so the
//! `rows x vocab` logits never exist all at once (at 16,384 rows and a 49,152-token vocabulary
//! they would be 3.2 GB in f32; a chunk of 256 rows is 50 MB).
//!
//! Forward, per chunk: `logits = hidden_chunk @ weight^T`, then one pass per row for its
//! log-sum-exp `lse` and its loss `lse - logits[target]`. Only `lse` (one number per row) is kept.
//! Backward, per chunk: the logits are recomputed and turned in place into their gradient
//! `g * (softmax - onehot(target)) = g * (exp(logits - lse) - onehot)`, then
//! `d hidden_chunk = G @ weight` and `d weight += G^T @ hidden_chunk`.
//!
//! Why the op is built this way: the work is matmuls, which candle already does well (gemm on
//! the CPU, cuBLAS on the GPU), so the forward and backward call candle's matmul on narrowed
//! chunks of detached tensors. To autograd the whole thing must still be ONE node, or candle
//! would keep every chunk's logits alive for its own backward: so the value is computed first
//! with detached tensors, and then attached to the graph by [`LinearCrossEntropy`], a
//! `CustomOp2` on (hidden, weight) whose forward only hands back that value and whose `bwd` does
//! the chunked recompute. The per-row passes (log-sum-exp, softmax gradient) are small custom
//! ops of their own, multi-threaded over rows.

use super::cpu::{cpu_slice, wide_dtype, Real};
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, DType, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Sum over rows of -log softmax(hidden @ weight^T)[target]: hidden `[n, h]`, weight
/// `[vocab, h]`, targets u32 `[n]`, computed `chunk_rows` rows at a time so n x vocab logits are
/// never all materialised (logits and softmax in f32). Backward gives d hidden and d weight,
/// recomputing each chunk's logits (saving only the per-row log-sum-exp).
///
/// The loss comes back as a scalar in f32 (f64 when hidden is f64), also for bf16 inputs.
pub fn linear_cross_entropy(hidden: &Tensor, weight: &Tensor, targets: &Tensor, chunk_rows: usize) -> Result<Tensor> {
    if !hidden.device().is_cpu() {
        // The composite maths, as before the fused op: autograd keeps every chunk's logits
        // anyway, so this route holds targets x vocab logits until a CUDA kernel replaces it.
        let logits = hidden.matmul(&weight.t()?)?;
        return crate::reference::cross_entropy_sum(&logits.to_dtype(wide_dtype(logits.dtype()))?, targets);
    }
    let (n, h) = hidden.dims2()?;
    let (_vocab, weight_h) = weight.dims2()?;
    if weight_h != h {
        bail!("linear_cross_entropy: hidden {:?} and weight {:?} differ in width", hidden.dims(), weight.dims());
    }
    if targets.dims() != [n] || targets.dtype() != DType::U32 {
        bail!("linear_cross_entropy: targets must be u32 [{n}], got {:?} {:?}", targets.dtype(), targets.dims());
    }
    if chunk_rows == 0 {
        bail!("linear_cross_entropy: chunk_rows must be positive");
    }
    let wide = wide_dtype(hidden.dtype());
    // The conversions stay in the graph (gradients flow back to bf16 tensors through them).
    let hidden = hidden.to_dtype(wide)?.contiguous()?;
    let weight = weight.to_dtype(wide)?.contiguous()?;
    let targets = targets.contiguous()?;

    let (h_detached, w_detached) = (hidden.detach(), weight.detach());
    let w_t = w_detached.t()?;
    let mut lse = Vec::with_capacity(n.div_ceil(chunk_rows));
    let mut loss = 0f64;
    for start in (0..n).step_by(chunk_rows) {
        let rows = chunk_rows.min(n - start);
        let logits = h_detached.narrow(0, start, rows)?.matmul(&w_t)?;
        let stats = logits.apply_op2_no_bwd(&targets.narrow(0, start, rows)?, &RowLogSumExp)?;
        lse.push(stats.get(0)?);
        loss += stats.get(1)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let lse = if lse.is_empty() { Tensor::zeros(0, wide, hidden.device())? } else { Tensor::cat(&lse, 0)? };
    hidden.apply_op2(&weight, LinearCrossEntropy { targets, lse, loss, chunk_rows })
}

/// The graph node: its forward returns the loss computed before it was applied; its backward
/// recomputes the logits chunk by chunk.
struct LinearCrossEntropy {
    targets: Tensor,
    /// Per-row log-sum-exp of the logits, `[n]`.
    lse: Tensor,
    loss: f64,
    chunk_rows: usize,
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-linear-cross-entropy"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match hs {
            CpuStorage::F32(_) => CpuStorage::F32(vec![self.loss as f32]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![self.loss]),
            other => bail!("{}: unsupported dtype {:?}", self.name(), other.dtype()),
        };
        Ok((out, Shape::from(())))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        bail!("{}: not yet implemented on CUDA", self.name())
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Detached, or every chunk's tensors would be recorded (and kept) as a graph.
        let (hidden, weight) = (hidden.detach(), weight.detach());
        let scale = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let n = hidden.dim(0)?;
        let w_t = weight.t()?;
        let mut d_hidden = Vec::with_capacity(n.div_ceil(self.chunk_rows));
        let mut d_weight: Option<Tensor> = None;
        for start in (0..n).step_by(self.chunk_rows) {
            let rows = self.chunk_rows.min(n - start);
            let h_chunk = hidden.narrow(0, start, rows)?;
            let logits = h_chunk.matmul(&w_t)?;
            let softmax_grad = SoftmaxGradient { scale };
            logits.inplace_op3(
                &self.lse.narrow(0, start, rows)?,
                &self.targets.narrow(0, start, rows)?,
                &softmax_grad,
            )?;
            d_hidden.push(logits.matmul(&weight)?);
            let d_weight_chunk = logits.t()?.matmul(&h_chunk)?;
            // Summed in place: `sum + chunk` would allocate a weight-sized tensor per chunk.
            match &d_weight {
                None => d_weight = Some(d_weight_chunk),
                Some(sum) => sum.inplace_op2(&d_weight_chunk, &AddAssign)?,
            }
        }
        let d_hidden = if d_hidden.is_empty() { hidden.zeros_like()? } else { Tensor::cat(&d_hidden, 0)? };
        let d_weight = match d_weight {
            Some(d) => d,
            None => weight.zeros_like()?,
        };
        Ok((Some(d_hidden), Some(d_weight)))
    }
}

/// Targets as a slice, each checked against the vocabulary (an out-of-range target is an error,
/// not a read past the row).
fn checked_targets<'a>(storage: &'a CpuStorage, layout: &Layout, vocab: usize) -> Result<&'a [u32]> {
    let targets: &[u32] = cpu_slice(storage, layout)?;
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("linear_cross_entropy: target {t} is past the vocabulary of {vocab}");
    }
    Ok(targets)
}

/// Inputs (logits `[rows, vocab]`, targets `[rows]`); output `[2, rows]`: each row's
/// log-sum-exp, then its loss `lse - logits[target]`.
struct RowLogSumExp;

impl CustomOp2 for RowLogSumExp {
    fn name(&self) -> &'static str {
        "fused-row-log-sum-exp"
    }

    fn cpu_fwd(&self, ls: &CpuStorage, ll: &Layout, ts: &CpuStorage, tl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = ll.shape().dims2()?;
        let targets = checked_targets(ts, tl, vocab)?;
        let out = match ls {
            CpuStorage::F32(_) => CpuStorage::F32(log_sum_exp::<f32>(cpu_slice(ls, ll)?, targets, vocab)),
            CpuStorage::F64(_) => CpuStorage::F64(log_sum_exp::<f64>(cpu_slice(ls, ll)?, targets, vocab)),
            other => bail!("{}: unsupported dtype {:?}", self.name(), other.dtype()),
        };
        Ok((out, Shape::from((2, rows))))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        bail!("{}: not yet implemented on CUDA", self.name())
    }
}

fn log_sum_exp<T: Real>(logits: &[T], targets: &[u32], vocab: usize) -> Vec<T> {
    let rows = targets.len();
    let mut out = vec![T::zero(); 2 * rows];
    let (lse, loss) = out.split_at_mut(rows);
    lse.par_iter_mut().zip(loss.par_iter_mut()).zip(logits.par_chunks(vocab).zip(targets.par_iter())).for_each(
        |((lse, loss), (row, &target))| {
            let max = row.iter().fold(T::NEG_INFINITY, |m, &v| m.maximum(v));
            let mut sum = T::zero();
            for &v in row {
                sum += (v - max).exp();
            }
            *lse = max + sum.ln();
            *loss = *lse - row[target as usize];
        },
    );
    out
}

/// In place on a chunk's logits, given its rows' log-sum-exp and targets:
/// `logits := scale * (exp(logits - lse) - onehot(target))`, the gradient of the summed loss
/// scaled by the incoming gradient.
struct SoftmaxGradient {
    scale: f64,
}

impl InplaceOp3 for SoftmaxGradient {
    fn name(&self) -> &'static str {
        "fused-softmax-gradient"
    }

    fn cpu_fwd(
        &self,
        ls: &mut CpuStorage,
        ll: &Layout,
        es: &CpuStorage,
        el: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<()> {
        let (_, vocab) = ll.shape().dims2()?;
        let Some((start, end)) = ll.contiguous_offsets() else {
            bail!("{}: expected contiguous logits", self.name());
        };
        let targets = checked_targets(ts, tl, vocab)?;
        match (ls, es) {
            (CpuStorage::F32(logits), CpuStorage::F32(_)) => {
                softmax_gradient::<f32>(&mut logits[start..end], cpu_slice(es, el)?, targets, vocab, self.scale)
            }
            (CpuStorage::F64(logits), CpuStorage::F64(_)) => {
                softmax_gradient::<f64>(&mut logits[start..end], cpu_slice(es, el)?, targets, vocab, self.scale)
            }
            (ls, _) => bail!("{}: unsupported dtypes {:?}, {:?}", self.name(), ls.dtype(), es.dtype()),
        }
        Ok(())
    }

    fn cuda_fwd(
        &self,
        _: &mut CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("{}: not yet implemented on CUDA", self.name())
    }
}

fn softmax_gradient<T: Real>(logits: &mut [T], lse: &[T], targets: &[u32], vocab: usize, scale: f64) {
    let scale = T::from_f64(scale);
    logits.par_chunks_mut(vocab).zip(lse.par_iter().zip(targets.par_iter())).for_each(|(row, (&lse, &target))| {
        for v in row.iter_mut() {
            *v = scale * (*v - lse).exp();
        }
        row[target as usize] -= scale;
    });
}

/// In place: `dst += src`, both contiguous and of the same shape (the gradient of the weight,
/// summed over chunks).
struct AddAssign;

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "fused-add-assign"
    }

    fn cpu_fwd(&self, ds: &mut CpuStorage, dl: &Layout, ss: &CpuStorage, sl: &Layout) -> Result<()> {
        let Some((start, end)) = dl.contiguous_offsets() else {
            bail!("{}: expected a contiguous destination", self.name());
        };
        if dl.shape() != sl.shape() {
            bail!("{}: shapes {:?} and {:?} differ", self.name(), dl.shape(), sl.shape());
        }
        match (ds, ss) {
            (CpuStorage::F32(dst), CpuStorage::F32(_)) => add_assign::<f32>(&mut dst[start..end], cpu_slice(ss, sl)?),
            (CpuStorage::F64(dst), CpuStorage::F64(_)) => add_assign::<f64>(&mut dst[start..end], cpu_slice(ss, sl)?),
            (ds, _) => bail!("{}: unsupported dtypes {:?}, {:?}", self.name(), ds.dtype(), ss.dtype()),
        }
        Ok(())
    }

    fn cuda_fwd(&self, _: &mut CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<()> {
        bail!("{}: not yet implemented on CUDA", self.name())
    }
}

fn add_assign<T: Real>(dst: &mut [T], src: &[T]) {
    const TASK_ELEMENTS: usize = 64 * 1024;
    dst.par_chunks_mut(TASK_ELEMENTS).zip(src.par_chunks(TASK_ELEMENTS)).for_each(|(dst, src)| {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    });
}
