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
//! CPU: rayon. The forward and the dq pass split the work over (head, query block); the dk/dv
//! pass over (kv head, key block), each work item owning its keys' gradient rows, so no two
//! threads ever write the same element. CUDA: `cuda_fwd` is where the kernels go.

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Sub};
use std::sync::Mutex;

use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use rayon::prelude::*;

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
    let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
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
        let (out, lse) = match s1 {
            CpuStorage::F32(_) => forward_storage::<f32>(self, (s1, l1), (s2, l2), (s3, l3))?,
            CpuStorage::F64(_) => forward_storage::<f64>(self, (s1, l1), (s2, l2), (s3, l3))?,
            _ => bail!("packed-attention: computes in f32 or f64 only"),
        };
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
        let (q, k, v) = ((s1, l1), (s2, l2), (s3, l3));
        let saved = ((out, out_layout), (grad_out, grad_layout), (lse, lse_layout));
        let grads = match s1 {
            CpuStorage::F32(_) => backward_storage::<f32>(self, q, k, v, saved)?,
            CpuStorage::F64(_) => backward_storage::<f64>(self, q, k, v, saved)?,
            _ => bail!("packed-attention-backward: computes in f32 or f64 only"),
        };
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

/// The float types the kernels run in.
trait Real:
    WithDType
    + Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
    + MulAssign
{
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn of(x: f64) -> Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    fn exp(self) -> f32 {
        f32::exp(self)
    }
    fn ln(self) -> f32 {
        f32::ln(self)
    }
    fn of(x: f64) -> f32 {
        x as f32
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn ln(self) -> f64 {
        f64::ln(self)
    }
    fn of(x: f64) -> f64 {
        x
    }
}

/// The contiguous values of a storage under its layout.
fn values<'a, T: Real>((storage, layout): (&'a CpuStorage, &Layout)) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("packed-attention: input is not contiguous") };
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Dot product with eight independent accumulators, so that the compiler vectorises it (a
/// single running sum is a dependency chain it may not reorder).
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let b = &b[..a.len()];
    let mut acc = [T::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = T::ZERO;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += *x * *y;
    }
    for (x, y) in ca.zip(cb) {
        for lane in 0..8 {
            acc[lane] += x[lane] * y[lane];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out += a * x`.
#[inline(always)]
fn axpy<T: Real>(out: &mut [T], a: T, x: &[T]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o += a * *x;
    }
}

/// An output buffer that work items write at disjoint places from several threads.
#[derive(Clone, Copy)]
struct Disjoint<T>(*mut T);

// SAFETY: only used through `row`, whose callers write rows no other work item writes.
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    /// SAFETY: `start..start + len` lies in the buffer and no other thread touches it meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

type Input<'a> = (&'a CpuStorage, &'a Layout);

fn forward_storage<T: Real>(op: &PackedAttention, q: Input, k: Input, v: Input) -> Result<(CpuStorage, Tensor)> {
    let (q, k, v) = (values::<T>(q)?, values::<T>(k)?, values::<T>(v)?);
    let g = op.geometry;
    let rows = q.len() / (g.heads * g.head_dim);
    let mut out = vec![T::ZERO; q.len()];
    let mut lse = vec![T::ZERO; rows * g.heads];
    forward::<T>(g, &op.segments, q, k, v, &mut out, &mut lse);
    let lse = Tensor::from_vec(lse, (rows, g.heads), &Device::Cpu)?;
    Ok((T::to_cpu_storage_owned(out), lse))
}

/// Streaming softmax over key blocks for every (head, query block): per query a running
/// maximum `m`, a running sum `l` of `exp(score - m)` and the running output `sum p v`, all
/// rescaled whenever `m` grows. Writes `out = acc / l` and `lse = m + ln l`.
fn forward<T: Real>(g: Geometry, segments: &[Segment], q: &[T], k: &[T], v: &[T], out: &mut [T], lse: &mut [T]) {
    let (heads, kv_heads, d, group) = (g.heads, g.kv_heads, g.head_dim, g.group());
    let scale = T::of(g.scale);
    let query_blocks = blocks(segments, QUERY_BLOCK, |s| s.len);
    let (out_rows, lse_rows) = (Disjoint(out.as_mut_ptr()), Disjoint(lse.as_mut_ptr()));
    (0..heads * query_blocks.len()).into_par_iter().for_each_init(
        || ForwardScratch::<T>::new(d),
        |scratch, item| {
            let (h, (s, first, end)) = (item % heads, query_blocks[item / heads]);
            let segment = segments[s];
            let kv = h / group;
            let n = end - first;
            scratch.reset(n, d);
            let ForwardScratch { queries, acc, max, sum, scores } = scratch;
            for t in 0..n {
                let row = ((segment.queries + first + t) * heads + h) * d;
                for (x, y) in queries[t * d..(t + 1) * d].iter_mut().zip(&q[row..row + d]) {
                    *x = *y * scale;
                }
            }
            // Keys visible to the block's last query; blocks of them stay in cache across queries.
            let visible = segment.past + end;
            for key_first in (0..visible).step_by(KEY_BLOCK) {
                let key_end = (key_first + KEY_BLOCK).min(visible);
                for t in 0..n {
                    let seen = key_end.min(segment.past + first + t + 1);
                    if seen <= key_first {
                        continue;
                    }
                    let query = &queries[t * d..(t + 1) * d];
                    let mut block_max = T::NEG_INFINITY;
                    for (score, u) in scores.iter_mut().zip(key_first..seen) {
                        let row = ((segment.keys + u) * kv_heads + kv) * d;
                        *score = dot(query, &k[row..row + d]);
                        if *score > block_max {
                            block_max = *score;
                        }
                    }
                    let acc = &mut acc[t * d..(t + 1) * d];
                    if block_max > max[t] {
                        let correction = (max[t] - block_max).exp();
                        sum[t] *= correction;
                        acc.iter_mut().for_each(|a| *a *= correction);
                        max[t] = block_max;
                    }
                    for (score, u) in scores.iter().zip(key_first..seen) {
                        let p = (*score - max[t]).exp();
                        sum[t] += p;
                        let row = ((segment.keys + u) * kv_heads + kv) * d;
                        axpy(acc, p, &v[row..row + d]);
                    }
                }
            }
            for t in 0..n {
                let position = segment.queries + first + t;
                let inverse = T::of(1.0) / sum[t];
                // SAFETY: (position, h) belongs to this work item only.
                let out = unsafe { out_rows.row((position * heads + h) * d, d) };
                for (o, a) in out.iter_mut().zip(&acc[t * d..(t + 1) * d]) {
                    *o = *a * inverse;
                }
                unsafe { lse_rows.row(position * heads + h, 1)[0] = max[t] + sum[t].ln() };
            }
        },
    );
}

/// One thread's buffers for a query block: scaled queries, running outputs, maxima and sums,
/// and the scores of one key block.
struct ForwardScratch<T> {
    queries: Vec<T>,
    acc: Vec<T>,
    max: Vec<T>,
    sum: Vec<T>,
    scores: Vec<T>,
}

impl<T: Real> ForwardScratch<T> {
    fn new(d: usize) -> Self {
        ForwardScratch {
            queries: vec![T::ZERO; QUERY_BLOCK * d],
            acc: vec![T::ZERO; QUERY_BLOCK * d],
            max: vec![T::ZERO; QUERY_BLOCK],
            sum: vec![T::ZERO; QUERY_BLOCK],
            scores: vec![T::ZERO; KEY_BLOCK],
        }
    }

    fn reset(&mut self, n: usize, d: usize) {
        self.acc[..n * d].iter_mut().for_each(|a| *a = T::ZERO);
        self.max[..n].iter_mut().for_each(|m| *m = T::NEG_INFINITY);
        self.sum[..n].iter_mut().for_each(|s| *s = T::ZERO);
    }
}

type Saved<'a> = (Input<'a>, Input<'a>, Input<'a>);

fn backward_storage<T: Real>(
    op: &PackedAttentionBackward,
    q: Input,
    k: Input,
    v: Input,
    (out, grad_out, lse): Saved,
) -> Result<CpuStorage> {
    let (q, k, v) = (values::<T>(q)?, values::<T>(k)?, values::<T>(v)?);
    let (out, grad_out, lse) = (values::<T>(out)?, values::<T>(grad_out)?, values::<T>(lse)?);
    let g = op.geometry;
    let d = g.head_dim;
    // D = rowsum(dO * O) per (query, head): the softmax backward's `sum_j P_ij dP_ij`.
    let mut delta = vec![T::ZERO; lse.len()];
    delta
        .par_iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = dot(&grad_out[i * d..(i + 1) * d], &out[i * d..(i + 1) * d]));
    let mut grads = vec![T::ZERO; q.len() + 2 * k.len()];
    let (dq, dkv) = grads.split_at_mut(q.len());
    let (dk, dv) = dkv.split_at_mut(k.len());
    let tensors = Backward { g, segments: &op.segments, q, k, v, grad_out, lse, delta: &delta };
    tensors.dq(dq);
    tensors.dkv(dk, dv);
    Ok(T::to_cpu_storage_owned(grads))
}

/// What both backward passes read. With `P = exp(S - lse)`, `dP = dO V^T` and
/// `dS = P * (dP - D)`: `dQ = scale dS K`, `dK = scale dS^T Q`, `dV = P^T dO`.
struct Backward<'a, T> {
    g: Geometry,
    segments: &'a [Segment],
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    grad_out: &'a [T],
    lse: &'a [T],
    delta: &'a [T],
}

impl<T: Real> Backward<'_, T> {
    /// dq over (head, query block): each item owns its queries' rows.
    fn dq(&self, dq: &mut [T]) {
        let Backward { g, segments, q, k, v, grad_out, lse, delta } = *self;
        let (heads, kv_heads, d) = (g.heads, g.kv_heads, g.head_dim);
        let scale = T::of(g.scale);
        let query_blocks = blocks(segments, QUERY_BLOCK, |s| s.len);
        let dq_rows = Disjoint(dq.as_mut_ptr());
        (0..heads * query_blocks.len()).into_par_iter().for_each_init(
            || vec![T::ZERO; d],
            |query, item| {
                let (h, (s, first, end)) = (item % heads, query_blocks[item / heads]);
                let segment = segments[s];
                let kv = h / g.group();
                for t in first..end {
                    let slot = (segment.queries + t) * heads + h;
                    let row = slot * d;
                    for (x, y) in query.iter_mut().zip(&q[row..row + d]) {
                        *x = *y * scale;
                    }
                    let grad = &grad_out[row..row + d];
                    // SAFETY: (query, h) belongs to this work item only; the buffer starts zeroed.
                    let dq = unsafe { dq_rows.row(row, d) };
                    for u in 0..=segment.past + t {
                        let key = ((segment.keys + u) * kv_heads + kv) * d;
                        let p = (dot(query, &k[key..key + d]) - lse[slot]).exp();
                        let ds = p * (dot(grad, &v[key..key + d]) - delta[slot]);
                        axpy(dq, ds, &k[key..key + d]);
                    }
                    dq.iter_mut().for_each(|x| *x *= scale);
                }
            },
        );
    }

    /// dk and dv over (kv head, key block): each item owns its keys' rows and sums over every
    /// query head of its group and every query that sees its keys.
    fn dkv(&self, dk: &mut [T], dv: &mut [T]) {
        let Backward { g, segments, q, k, v, grad_out, lse, delta } = *self;
        let (heads, kv_heads, d, group) = (g.heads, g.kv_heads, g.head_dim, g.group());
        let scale = T::of(g.scale);
        let key_blocks = blocks(segments, KEY_BLOCK, |s| s.past + s.len);
        let (dk_rows, dv_rows) = (Disjoint(dk.as_mut_ptr()), Disjoint(dv.as_mut_ptr()));
        (0..kv_heads * key_blocks.len()).into_par_iter().for_each_init(
            || (vec![T::ZERO; d], vec![T::ZERO; KEY_BLOCK * d], vec![T::ZERO; KEY_BLOCK * d]),
            |(query, dk_acc, dv_acc), item| {
                let (kv, (s, first, end)) = (item % kv_heads, key_blocks[item / kv_heads]);
                let segment = segments[s];
                let n = end - first;
                dk_acc[..n * d].iter_mut().for_each(|x| *x = T::ZERO);
                dv_acc[..n * d].iter_mut().for_each(|x| *x = T::ZERO);
                for h in kv * group..(kv + 1) * group {
                    // The first query that sees key `first` is `first - past`.
                    for t in first.saturating_sub(segment.past)..segment.len {
                        let slot = (segment.queries + t) * heads + h;
                        let row = slot * d;
                        for (x, y) in query.iter_mut().zip(&q[row..row + d]) {
                            *x = *y * scale;
                        }
                        let grad = &grad_out[row..row + d];
                        let seen = end.min(segment.past + t + 1);
                        for u in first..seen {
                            let key = ((segment.keys + u) * kv_heads + kv) * d;
                            let p = (dot(query, &k[key..key + d]) - lse[slot]).exp();
                            let at = (u - first) * d;
                            axpy(&mut dv_acc[at..at + d], p, grad);
                            let ds = p * (dot(grad, &v[key..key + d]) - delta[slot]);
                            axpy(&mut dk_acc[at..at + d], ds, query);
                        }
                    }
                }
                for u in 0..n {
                    let row = ((segment.keys + first + u) * kv_heads + kv) * d;
                    // SAFETY: (key, kv) belongs to this work item only (segments' keys do not
                    // overlap in a packed row, the only place with a backward).
                    unsafe {
                        dk_rows.row(row, d).copy_from_slice(&dk_acc[u * d..(u + 1) * d]);
                        dv_rows.row(row, d).copy_from_slice(&dv_acc[u * d..(u + 1) * d]);
                    }
                }
            },
        );
    }
}
