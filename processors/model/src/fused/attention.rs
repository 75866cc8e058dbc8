//! Causal attention over a packed row in one pass, flash-attention style, with its own backward.
//!
//! A packed row holds several sequences end to end; each query attends only to the keys of its
//! own sequence at or before it. Scores are never materialised: the forward streams over blocks
//! of keys with an online softmax and keeps, per (query, head), only the output and the
//! log-sum-exp of its scores (the op struct holds the latter behind a `Mutex`, for `bwd`). The
//! backward recomputes the probabilities from q, k and that log-sum-exp, so memory stays linear
//! in the row length: nothing `L x L`, scratch of one block per thread.
//!
//! Grouped-query attention by indexing: query head `h` reads kv head `h / (heads / kv_heads)`.
//!
//! Layout everywhere: q and the output `[len, heads, head_dim]`, k and v `[len, kv_heads,
//! head_dim]` (the projections reshaped, no transpose), all contiguous, so every inner loop
//! runs over `head_dim` contiguous values.
//!
//! The backward runs as a second custom op over (q, k, v) holding the output, its gradient and
//! the log-sum-exp, and returns dq, dk and dv in one flat buffer that `bwd` splits (views).
//!
//! CPU (`cpu`, over `simd`): rayon. The forward and the dq pass split the work over (head,
//! query block); the dk/dv pass over (kv head, key block), each work item owning its keys'
//! gradient rows, so no two threads ever write the same element (dq and dk/dv each recompute
//! the probabilities: two passes, no reduction, no per-thread copies of the gradients). The
//! kernels are compiled for baseline x86-64, AVX2+FMA and AVX-512 and the best the CPU has
//! runs. CUDA: `cuda_fwd` of both ops is where the kernels go; today they bail.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

mod cpu;
mod simd;

/// Queries per work item of the forward and the dq pass.
const QUERY_BLOCK: usize = 32;
/// Keys per block of the streaming softmax and per work item of the dk/dv pass.
const KEY_BLOCK: usize = 64;

/// Causal attention over a whole packed row: q `[len, heads, head_dim]`, k and v
/// `[len, kv_heads, head_dim]` (the projections reshaped, no transpose), sequences laid end to
/// end with lengths `sequence_lengths` (sum = len); a query attends only to keys of its own
/// sequence at or before it. GQA by indexing: query head h reads kv head h / (heads / kv_heads);
/// no repeated key/value copies. Returns `[len, heads, head_dim]` in q's dtype.
///
/// f32 and f64 are computed as they are; other float dtypes in f32 (converted here, so the
/// gradients flow back through the conversions).
pub fn packed_attention(q: &Tensor, k: &Tensor, v: &Tensor, sequence_lengths: &[usize]) -> Result<Tensor> {
    if !q.device().is_cpu() {
        return super::off_cpu::packed_attention(q, k, v, sequence_lengths);
    }
    let geometry = Geometry::of(q, k, v)?;
    let len = q.dim(0)?;
    if k.dim(0)? != len || v.dim(0)? != len {
        bail!("packed_attention: q has {len} positions, k {} and v {}", k.dim(0)?, v.dim(0)?);
    }
    if sequence_lengths.iter().sum::<usize>() != len {
        bail!("packed_attention: sequence lengths {sequence_lengths:?} do not add up to the row's {len}");
    }
    let mut segments = Vec::with_capacity(sequence_lengths.len());
    let mut start = 0;
    for &n in sequence_lengths.iter().filter(|&&n| n > 0) {
        segments.push(Segment { queries: start, len: n, keys: start, past: 0 });
        start += n;
    }
    let (dtype, (q, k, v)) = widened(q, k, v)?;
    let op = PackedAttention { geometry, segments, lse: Mutex::new(None) };
    q.apply_op3(&k, &v, op)?.to_dtype(dtype)
}

/// Generation: `len` new queries at positions `past..past + len` of ONE sequence against the
/// whole cache k/v `[past + len, kv_heads, head_dim]` (causal). Forward only (no backward needed).
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, past: usize) -> Result<Tensor> {
    if !q.device().is_cpu() {
        return super::off_cpu::cached_attention(q, k, v, past);
    }
    let geometry = Geometry::of(q, k, v)?;
    let len = q.dim(0)?;
    if k.dim(0)? != past + len || v.dim(0)? != past + len {
        bail!(
            "cached_attention: {len} queries after {past} need {} keys, got k {} and v {}",
            past + len,
            k.dim(0)?,
            v.dim(0)?
        );
    }
    let segments = if len > 0 { vec![Segment { queries: 0, len, keys: 0, past }] } else { Vec::new() };
    let (dtype, (q, k, v)) = widened(q, k, v)?;
    let op = PackedAttention { geometry, segments, lse: Mutex::new(None) };
    q.apply_op3_no_bwd(&k, &v, &op)?.to_dtype(dtype)
}

/// The inputs in the dtype the kernels compute in (f32 or f64), contiguous; and q's own dtype.
fn widened(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(DType, (Tensor, Tensor, Tensor))> {
    let dtype = q.dtype();
    let wide = super::cpu::wide_dtype(dtype);
    let prepare = |t: &Tensor| t.to_dtype(wide)?.contiguous();
    Ok((dtype, (prepare(q)?, prepare(k)?, prepare(v)?)))
}

/// Heads and sizes shared by every kernel.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Geometry {
    fn of(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Geometry> {
        let (_, heads, head_dim) = q.dims3()?;
        let (_, kv_heads, k_dim) = k.dims3()?;
        if v.dims3()?.1 != kv_heads || v.dims3()?.2 != head_dim || k_dim != head_dim {
            bail!(
                "attention: q {:?}, k {:?} and v {:?} disagree on heads or head_dim",
                q.shape(),
                k.shape(),
                v.shape()
            );
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            bail!("attention: {heads} query heads cannot share {kv_heads} kv heads");
        }
        Ok(Geometry { heads, kv_heads, head_dim, scale: 1.0 / (head_dim as f64).sqrt() })
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// A run of queries attending to a run of keys: query `t` (`0..len`, row `queries + t`) sees
/// keys `0..=past + t` (rows `keys + ..`). A packed row has one per sequence with `past = 0`;
/// generation one with the cache's length as `past`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    queries: usize,
    len: usize,
    keys: usize,
    past: usize,
}

/// Work items: `(segment, first, end)` blocks of at most `size` local indices in `0..extent(s)`.
fn blocks(segments: &[Segment], size: usize, extent: impl Fn(&Segment) -> usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (s, segment) in segments.iter().enumerate() {
        let n = extent(segment);
        out.extend((0..n).step_by(size).map(|first| (s, first, (first + size).min(n))));
    }
    out
}

/// The forward op. `lse` receives, when the forward runs, the log-sum-exp of each (query,
/// head)'s scaled scores, `[len, heads]` in the compute dtype, which `bwd` needs; it lives as
/// long as the op, i.e. as long as the graph that holds the output.
struct PackedAttention {
    geometry: Geometry,
    segments: Vec<Segment>,
    lse: Mutex<Option<Tensor>>,
}

impl CustomOp3 for PackedAttention {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, lse) = cpu::forward(self.geometry, &self.segments, (s1, l1), (s2, l2), (s3, l3))?;
        *self.lse.lock().expect("lse lock") = Some(lse);
        Ok((out, l1.shape().clone()))
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
        // The place for the CUDA kernel: one thread block per (head, query block), the same
        // streaming softmax, writing the output and the log-sum-exp.
        bail!("packed-attention: not yet implemented on CUDA")
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().expect("lse lock").clone();
        let Some(lse) = lse else { bail!("packed-attention: backward before forward") };
        let backward = PackedAttentionBackward {
            geometry: self.geometry,
            segments: self.segments.clone(),
            out: res.contiguous()?,
            grad_out: grad_res.contiguous()?,
            lse,
        };
        // One flat buffer dq | dk | dv, split here.
        let flat = q.apply_op3_no_bwd(k, v, &backward)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = flat.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = flat.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = flat.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The backward op, applied to (q, k, v); holds what else it reads. Returns dq, dk and dv
/// flattened one after the other.
struct PackedAttentionBackward {
    geometry: Geometry,
    segments: Vec<Segment>,
    out: Tensor,
    grad_out: Tensor,
    lse: Tensor,
}

impl CustomOp3 for PackedAttentionBackward {
    fn name(&self) -> &'static str {
        "packed-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, out_layout) = self.out.storage_and_layout();
        let (grad_out, grad_layout) = self.grad_out.storage_and_layout();
        let (lse, lse_layout) = self.lse.storage_and_layout();
        let (Storage::Cpu(out), Storage::Cpu(grad_out), Storage::Cpu(lse)) = (&*out, &*grad_out, &*lse) else {
            bail!("packed-attention-backward: saved tensors are not on the CPU")
        };
        let saved = ((out, out_layout), (grad_out, grad_layout), (lse, lse_layout));
        let grads = cpu::backward(self.geometry, &self.segments, ((s1, l1), (s2, l2), (s3, l3)), saved)?;
        let n = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        Ok((grads, Shape::from(n)))
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
        // The place for the CUDA kernels: dq per (head, query block), dk/dv per (kv head, key
        // block), recomputing the probabilities from the saved log-sum-exp as the CPU does.
        bail!("packed-attention-backward: not yet implemented on CUDA")
    }
}
