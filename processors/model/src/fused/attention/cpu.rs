//! The CPU kernels of the fused attention: the streaming-softmax forward, the dq pass and the
//! dk/dv pass, over rayon. Every inner loop runs over `head_dim` contiguous values; scratch is
//! one block per thread, allocated once per thread and call, never per query.
//!
//! Each kernel is compiled three times, portable, for AVX2 with FMA and for AVX-512, and the
//! best the CPU has runs (chosen at run time: the workspace builds for baseline x86-64).
//!
//! One query's scores against a key block are a sum of the block's transposed rows weighted by
//! the query (`simd::accumulate`), like the probabilities times the values: every hot loop is
//! the same lane-parallel multiply-add, no horizontal sums.

use candle_core::{bail, CpuStorage, Device, Layout, Result, Tensor};
use rayon::prelude::*;

use super::simd::{accumulate, dot, Real, Weights};
use super::{blocks, Geometry, Segment, KEY_BLOCK, QUERY_BLOCK};

/// A storage and the layout to read it with.
pub(super) type Input<'a> = (&'a CpuStorage, &'a Layout);

/// Forward over q, k, v (f32 or f64, contiguous): the output's storage and the log-sum-exp
/// `[len, heads]` of each (query, head)'s scaled scores, for the backward.
pub(super) fn forward(g: Geometry, segments: &[Segment], q: Input, k: Input, v: Input) -> Result<(CpuStorage, Tensor)> {
    match q.0 {
        CpuStorage::F32(_) => forward_typed::<f32>(g, segments, q, k, v, Isa::best()),
        CpuStorage::F64(_) => forward_typed::<f64>(g, segments, q, k, v, Isa::best()),
        _ => bail!("packed-attention: computes in f32 or f64 only"),
    }
}

/// Backward: dq, dk and dv flattened one after the other, from q, k, v and the saved output,
/// the output's gradient and the log-sum-exp.
pub(super) fn backward(
    g: Geometry,
    segments: &[Segment],
    (q, k, v): (Input, Input, Input),
    (out, grad_out, lse): (Input, Input, Input),
) -> Result<CpuStorage> {
    match q.0 {
        CpuStorage::F32(_) => backward_typed::<f32>(g, segments, (q, k, v), (out, grad_out, lse), Isa::best()),
        CpuStorage::F64(_) => backward_typed::<f64>(g, segments, (q, k, v), (out, grad_out, lse), Isa::best()),
        _ => bail!("packed-attention-backward: computes in f32 or f64 only"),
    }
}

fn forward_typed<T: Real>(
    g: Geometry,
    segments: &[Segment],
    q: Input,
    k: Input,
    v: Input,
    isa: Isa,
) -> Result<(CpuStorage, Tensor)> {
    let (q, k, v) = (values::<T>(q)?, values::<T>(k)?, values::<T>(v)?);
    let rows = q.len() / (g.heads * g.head_dim);
    let mut out = vec![T::ZERO; q.len()];
    let mut lse = vec![T::ZERO; rows * g.heads];
    let job = Job { g, segments, q, k, v, grad_out: &[], lse: &[], delta: &[] };
    let query_blocks = blocks(segments, QUERY_BLOCK, |s| s.len);
    let (out_rows, lse_rows) = (Disjoint(out.as_mut_ptr()), Disjoint(lse.as_mut_ptr()));
    (0..g.heads * query_blocks.len()).into_par_iter().for_each_init(
        || Scratch::new(g.head_dim),
        |scratch, item| {
            forward_item(isa, &job, query_blocks[item / g.heads], item % g.heads, scratch, out_rows, lse_rows)
        },
    );
    let lse = Tensor::from_vec(lse, (rows, g.heads), &Device::Cpu)?;
    Ok((T::to_cpu_storage_owned(out), lse))
}

fn backward_typed<T: Real>(
    g: Geometry,
    segments: &[Segment],
    (q, k, v): (Input, Input, Input),
    (out, grad_out, lse): (Input, Input, Input),
    isa: Isa,
) -> Result<CpuStorage> {
    let (q, k, v) = (values::<T>(q)?, values::<T>(k)?, values::<T>(v)?);
    let (out, grad_out, lse) = (values::<T>(out)?, values::<T>(grad_out)?, values::<T>(lse)?);
    let d = g.head_dim;
    // D = rowsum(dO * O) per (query, head): the softmax backward's `sum_j P_ij dP_ij`.
    let mut delta = vec![T::ZERO; lse.len()];
    delta
        .par_iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = dot::<T, false>(&grad_out[i * d..(i + 1) * d], &out[i * d..(i + 1) * d]));
    let job = Job { g, segments, q, k, v, grad_out, lse, delta: &delta };
    let mut grads = vec![T::ZERO; q.len() + 2 * k.len()];
    let (dq, dkv) = grads.split_at_mut(q.len());
    let (dk, dv) = dkv.split_at_mut(k.len());
    // dq over (head, query block): each item owns its queries' rows.
    let query_blocks = blocks(segments, QUERY_BLOCK, |s| s.len);
    let dq_rows = Disjoint(dq.as_mut_ptr());
    (0..g.heads * query_blocks.len()).into_par_iter().for_each_init(
        || Scratch::new(d),
        |scratch, item| dq_item(isa, &job, query_blocks[item / g.heads], item % g.heads, scratch, dq_rows),
    );
    // dk and dv over (kv head, key block): each item owns its keys' rows and sums over every
    // query head of its group and every query that sees its keys.
    let key_blocks = blocks(segments, KEY_BLOCK, |s| s.past + s.len);
    let (dk_rows, dv_rows) = (Disjoint(dk.as_mut_ptr()), Disjoint(dv.as_mut_ptr()));
    (0..g.kv_heads * key_blocks.len()).into_par_iter().for_each_init(
        || Scratch::new(d),
        |scratch, item| {
            dkv_item(isa, &job, key_blocks[item / g.kv_heads], item % g.kv_heads, scratch, dk_rows, dv_rows)
        },
    );
    Ok(T::to_cpu_storage_owned(grads))
}

/// What the kernels read (the backward's extras empty in the forward). With
/// `P = exp(S - lse)`, `dP = dO V^T` and `dS = P * (dP - D)`: `dQ = scale dS K`,
/// `dK = scale dS^T Q`, `dV = P^T dO`.
struct Job<'a, T> {
    g: Geometry,
    segments: &'a [Segment],
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    grad_out: &'a [T],
    lse: &'a [T],
    delta: &'a [T],
}

impl<T: Real> Job<'_, T> {
    /// Offset of key (or value) `u` of `segment` for kv head `kv`; the next key is a stride on.
    fn key(&self, segment: &Segment, u: usize, kv: usize) -> usize {
        ((segment.keys + u) * self.g.kv_heads + kv) * self.g.head_dim
    }

    fn stride(&self) -> usize {
        self.g.kv_heads * self.g.head_dim
    }

    /// Query row `row` (its offset) times the scale, into `into`.
    fn scaled_query(&self, row: usize, into: &mut [T]) {
        let scale = T::of(self.g.scale);
        for (x, y) in into.iter_mut().zip(&self.q[row..row + self.g.head_dim]) {
            *x = *y * scale;
        }
    }
}

/// One thread's buffers: a block of scaled queries, two blocks of accumulated rows, running
/// maxima and sums, one key block's scores and `dP`, the dk/dv pass's `P` and `dS` tiles, and
/// one block of keys and of values transposed.
struct Scratch<T> {
    queries: Vec<T>,
    acc: Vec<T>,
    acc2: Vec<T>,
    max: Vec<T>,
    sum: Vec<T>,
    scores: Vec<T>,
    dp: Vec<T>,
    tile_p: Vec<T>,
    tile_ds: Vec<T>,
    keys_t: Vec<T>,
    values_t: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(d: usize) -> Self {
        let rows = QUERY_BLOCK.max(KEY_BLOCK);
        Scratch {
            queries: vec![T::ZERO; rows * d],
            acc: vec![T::ZERO; rows * d],
            acc2: vec![T::ZERO; rows * d],
            max: vec![T::ZERO; rows],
            sum: vec![T::ZERO; rows],
            scores: vec![T::ZERO; KEY_BLOCK],
            dp: vec![T::ZERO; KEY_BLOCK],
            tile_p: vec![T::ZERO; QUERY_BLOCK * KEY_BLOCK],
            tile_ds: vec![T::ZERO; QUERY_BLOCK * KEY_BLOCK],
            keys_t: vec![T::ZERO; d * KEY_BLOCK],
            values_t: vec![T::ZERO; d * KEY_BLOCK],
        }
    }
}

type Block = (usize, usize, usize);

/// Streaming softmax for one (head, query block), key block by key block (each stays in
/// cache across the block's queries): per query a running maximum `m`, a running sum `l` of
/// `exp(score - m)` and the running `sum p v`, rescaled whenever `m` grows. Writes
/// `out = acc / l` and `lse = m + ln l`.
#[inline(always)]
fn forward_body<T: Real, const FMA: bool>(
    job: &Job<T>,
    (s, first, end): Block,
    h: usize,
    scratch: &mut Scratch<T>,
    out: Disjoint<T>,
    lse: Disjoint<T>,
) {
    let (heads, d, stride) = (job.g.heads, job.g.head_dim, job.stride());
    let segment = job.segments[s];
    let kv = h / job.g.group();
    let n = end - first;
    let Scratch { queries, acc, max, sum, scores, keys_t, .. } = scratch;
    acc[..n * d].fill(T::ZERO);
    max[..n].fill(T::NEG_INFINITY);
    sum[..n].fill(T::ZERO);
    for t in 0..n {
        job.scaled_query(((segment.queries + first + t) * heads + h) * d, &mut queries[t * d..(t + 1) * d]);
    }
    let visible = segment.past + end;
    for key_first in (0..visible).step_by(KEY_BLOCK) {
        let key_end = (key_first + KEY_BLOCK).min(visible);
        let base = job.key(&segment, key_first, kv);
        transpose_block(job.k, base, stride, key_end - key_first, d, keys_t);
        for t in 0..n {
            let seen = key_end.min(segment.past + first + t + 1);
            if seen <= key_first {
                continue;
            }
            let scores = &mut scores[..seen - key_first];
            block_dots::<T, FMA>(&queries[t * d..(t + 1) * d], keys_t, scores);
            let block_max = scores.iter().fold(T::NEG_INFINITY, |m, &x| if x > m { x } else { m });
            let acc = &mut acc[t * d..(t + 1) * d];
            if block_max > max[t] {
                let correction = (max[t] - block_max).exp();
                sum[t] *= correction;
                acc.iter_mut().for_each(|a| *a *= correction);
                max[t] = block_max;
            }
            let m = max[t];
            scores.iter_mut().for_each(|x| *x = (*x - m).exp_nonpositive());
            sum[t] += scores.iter().fold(T::ZERO, |a, &x| a + x);
            accumulate::<T, FMA>(acc, Weights(scores, 1, scores.len()), job.v, base, stride);
        }
    }
    for t in 0..n {
        let slot = (segment.queries + first + t) * heads + h;
        let inverse = T::of(1.0) / sum[t];
        // SAFETY: (query, h) belongs to this work item only.
        let out = unsafe { out.row(slot * d, d) };
        for (o, a) in out.iter_mut().zip(&acc[t * d..(t + 1) * d]) {
            *o = *a * inverse;
        }
        unsafe { lse.row(slot, 1)[0] = max[t] + sum[t].ln() };
    }
}

/// dq for one (head, query block), key block by key block like the forward.
#[inline(always)]
fn dq_body<T: Real, const FMA: bool>(
    job: &Job<T>,
    (s, first, end): Block,
    h: usize,
    scratch: &mut Scratch<T>,
    dq: Disjoint<T>,
) {
    let (heads, d, stride) = (job.g.heads, job.g.head_dim, job.stride());
    let segment = job.segments[s];
    let kv = h / job.g.group();
    let n = end - first;
    let Scratch { queries, acc, scores, dp, keys_t, values_t, .. } = scratch;
    acc[..n * d].fill(T::ZERO);
    for t in 0..n {
        job.scaled_query(((segment.queries + first + t) * heads + h) * d, &mut queries[t * d..(t + 1) * d]);
    }
    let visible = segment.past + end;
    for key_first in (0..visible).step_by(KEY_BLOCK) {
        let key_end = (key_first + KEY_BLOCK).min(visible);
        let base = job.key(&segment, key_first, kv);
        transpose_block(job.k, base, stride, key_end - key_first, d, keys_t);
        transpose_block(job.v, base, stride, key_end - key_first, d, values_t);
        for t in 0..n {
            let seen = key_end.min(segment.past + first + t + 1);
            if seen <= key_first {
                continue;
            }
            let m = seen - key_first;
            let slot = (segment.queries + first + t) * heads + h;
            let grad = &job.grad_out[slot * d..(slot + 1) * d];
            block_dots::<T, FMA>(&queries[t * d..(t + 1) * d], keys_t, &mut scores[..m]);
            block_dots::<T, FMA>(grad, values_t, &mut dp[..m]);
            let (lse, delta) = (job.lse[slot], job.delta[slot]);
            for (dp, score) in dp[..m].iter_mut().zip(&scores[..m]) {
                *dp = (*score - lse).exp_nonpositive() * (*dp - delta);
            }
            accumulate::<T, FMA>(&mut acc[t * d..(t + 1) * d], Weights(&dp[..m], 1, m), job.k, base, stride);
        }
    }
    let scale = T::of(job.g.scale);
    for t in 0..n {
        let slot = (segment.queries + first + t) * heads + h;
        // SAFETY: (query, h) belongs to this work item only.
        let dq = unsafe { dq.row(slot * d, d) };
        for (o, a) in dq.iter_mut().zip(&acc[t * d..(t + 1) * d]) {
            *o = *a * scale;
        }
    }
}

/// dk and dv for one (kv head, key block): the block's keys and values stay in cache while
/// the queries that see them stream past, a query block at a time: first the block's `P` and
/// `dS` tiles (a row per query), then each key's gradient rows summed over the block's queries
/// (a column of the tiles) in registers.
#[inline(always)]
fn dkv_body<T: Real, const FMA: bool>(
    job: &Job<T>,
    (s, first, end): Block,
    kv: usize,
    scratch: &mut Scratch<T>,
    dk: Disjoint<T>,
    dv: Disjoint<T>,
) {
    let (heads, d, stride, group) = (job.g.heads, job.g.head_dim, job.stride(), job.g.group());
    let scale = T::of(job.g.scale);
    let segment = job.segments[s];
    let n = end - first;
    let base = job.key(&segment, first, kv);
    let Scratch { acc: dk_acc, acc2: dv_acc, scores, dp, tile_p, tile_ds, keys_t, values_t, .. } = scratch;
    dk_acc[..n * d].fill(T::ZERO);
    dv_acc[..n * d].fill(T::ZERO);
    transpose_block(job.k, base, stride, n, d, keys_t);
    transpose_block(job.v, base, stride, n, d, values_t);
    for h in kv * group..(kv + 1) * group {
        // The first query that sees key `first` is `first - past`.
        let queries = first.saturating_sub(segment.past)..segment.len;
        for chunk in (queries.start..queries.end).step_by(QUERY_BLOCK) {
            let count = (queries.end - chunk).min(QUERY_BLOCK);
            let slot0 = (segment.queries + chunk) * heads + h;
            for i in 0..count {
                let slot = slot0 + i * heads;
                let row = slot * d;
                let m = end.min(segment.past + chunk + i + 1) - first;
                block_dots::<T, FMA>(&job.q[row..row + d], keys_t, &mut scores[..m]);
                block_dots::<T, FMA>(&job.grad_out[row..row + d], values_t, &mut dp[..m]);
                let (lse, delta) = (job.lse[slot], job.delta[slot]);
                for (score, dp) in scores[..m].iter_mut().zip(&mut dp[..m]) {
                    *score = (*score * scale - lse).exp_nonpositive();
                    *dp = *score * (*dp - delta);
                }
                // Keys after the query (the block's diagonal) weigh nothing.
                let (p_row, ds_row) = (&mut tile_p[i * KEY_BLOCK..][..n], &mut tile_ds[i * KEY_BLOCK..][..n]);
                p_row[..m].copy_from_slice(&scores[..m]);
                ds_row[..m].copy_from_slice(&dp[..m]);
                p_row[m..].fill(T::ZERO);
                ds_row[m..].fill(T::ZERO);
            }
            let rows = slot0 * d;
            for j in 0..n {
                let (dv_row, dk_row) = (&mut dv_acc[j * d..(j + 1) * d], &mut dk_acc[j * d..(j + 1) * d]);
                let (p_column, ds_column) =
                    (Weights(&tile_p[j..], KEY_BLOCK, count), Weights(&tile_ds[j..], KEY_BLOCK, count));
                accumulate::<T, FMA>(dv_row, p_column, job.grad_out, rows, heads * d);
                accumulate::<T, FMA>(dk_row, ds_column, job.q, rows, heads * d);
            }
        }
    }
    for j in 0..n {
        let row = base + j * stride;
        // SAFETY: (key, kv) belongs to this work item only (segments' keys do not overlap in a
        // packed row, the only place with a backward).
        unsafe {
            for (o, a) in dk.row(row, d).iter_mut().zip(&dk_acc[j * d..(j + 1) * d]) {
                *o = *a * scale;
            }
            dv.row(row, d).copy_from_slice(&dv_acc[j * d..(j + 1) * d]);
        }
    }
}

/// Rows `base + j * stride` (`j < n`) of `src` transposed: `dst[c * KEY_BLOCK + j]`. A query's
/// scores against the block are then a sum of `dst`'s rows weighted by the query's values,
/// computed lane-parallel over keys with no horizontal sums (done once per block and reused
/// by all the queries that see it).
fn transpose_block<T: Copy>(src: &[T], base: usize, stride: usize, n: usize, d: usize, dst: &mut [T]) {
    for j in 0..n {
        for (c, x) in src[base + j * stride..][..d].iter().enumerate() {
            dst[c * KEY_BLOCK + j] = *x;
        }
    }
}

/// `out[j] = x . key j` for the keys of a block transposed by `transpose_block`.
#[inline(always)]
fn block_dots<T: Real, const FMA: bool>(x: &[T], transposed: &[T], out: &mut [T]) {
    out.fill(T::ZERO);
    accumulate::<T, FMA>(out, Weights(x, 1, x.len()), transposed, 0, KEY_BLOCK);
}

/// The instruction sets the kernels are compiled for; the best this CPU has runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Isa {
    Portable,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F besides (twice the lanes where the CPU runs them at full width).
    Avx512,
}

impl Isa {
    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx2") && has!("fma") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// `$name(isa, args)` runs `$body` compiled for `isa` (as `$avx2` or `$avx512`; the workspace
/// builds for baseline x86-64, which has neither).
macro_rules! dispatched {
    ($name:ident, $avx2:ident, $avx512:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name<T: Real>(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            match isa {
                // SAFETY: `isa` is `Isa::best()` or below: this CPU has these instructions.
                Isa::Avx512 => return unsafe { $avx512::<T>($($arg),*) },
                Isa::Avx2 => return unsafe { $avx2::<T>($($arg),*) },
                Isa::Portable => {}
            }
            let _ = isa;
            $body::<T, false>($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<T: Real>($($arg: $ty),*) {
            $body::<T, true>($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn $avx512<T: Real>($($arg: $ty),*) {
            $body::<T, true>($($arg),*)
        }
    };
}

dispatched!(forward_item, forward_item_avx2, forward_item_avx512, forward_body, (job: &Job<T>, block: Block, h: usize, scratch: &mut Scratch<T>, out: Disjoint<T>, lse: Disjoint<T>));
dispatched!(dq_item, dq_item_avx2, dq_item_avx512, dq_body, (job: &Job<T>, block: Block, h: usize, scratch: &mut Scratch<T>, dq: Disjoint<T>));
dispatched!(dkv_item, dkv_item_avx2, dkv_item_avx512, dkv_body, (job: &Job<T>, block: Block, kv: usize, scratch: &mut Scratch<T>, dk: Disjoint<T>, dv: Disjoint<T>));

/// The contiguous values of a storage under its layout.
fn values<'a, T: Real>((storage, layout): (&'a CpuStorage, &Layout)) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("packed-attention: input is not contiguous") };
    Ok(&storage.as_slice::<T>()?[start..end])
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Shape;

    fn storage(seed: u32, n: usize) -> (CpuStorage, Layout) {
        // A fixed, irregular sequence in [-1.5, 1.5).
        let values =
            (0..n as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 3000) as f32 / 1000.0 - 1.5).collect();
        (CpuStorage::F32(values), Layout::contiguous(Shape::from(n)))
    }

    /// The kernels compiled for AVX2 and for AVX-512 agree with the portable ones (the tests
    /// of the public functions run whichever this CPU takes), across every lane path of head_dim 44
    /// (32 + 8 + 4) and blocks cut by sequence ends.
    #[test]
    fn every_instruction_set_agrees_with_the_portable_kernels() {
        let (heads, kv_heads, head_dim, len) = (4, 2, 44, 100);
        let g = Geometry { heads, kv_heads, head_dim, scale: 1.0 / (head_dim as f64).sqrt() };
        let segments =
            [Segment { queries: 0, len: 70, keys: 0, past: 0 }, Segment { queries: 70, len: 30, keys: 70, past: 0 }];
        let (q, k, v) = (
            storage(1, len * heads * head_dim),
            storage(2, len * kv_heads * head_dim),
            storage(3, len * kv_heads * head_dim),
        );
        let grad = storage(4, len * heads * head_dim);
        fn input(s: &(CpuStorage, Layout)) -> Input<'_> {
            (&s.0, &s.1)
        }
        let run = |isa: Isa| {
            let (out, lse) = forward_typed::<f32>(g, &segments, input(&q), input(&k), input(&v), isa).unwrap();
            let lse = lse.to_vec2::<f32>().unwrap().concat();
            let lse = (CpuStorage::F32(lse.clone()), Layout::contiguous(Shape::from(lse.len())));
            let out = (out, Layout::contiguous(Shape::from(len * heads * head_dim)));
            let grads = backward_typed::<f32>(
                g,
                &segments,
                (input(&q), input(&k), input(&v)),
                (input(&out), input(&grad), input(&lse)),
                isa,
            )
            .unwrap();
            [out.0, lse.0, grads].map(|s| s.as_slice::<f32>().unwrap().to_vec())
        };
        let portable = run(Isa::Portable);
        let available = [Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| *isa as u8 <= Isa::best() as u8);
        for (isa, fast) in available.map(|isa| (isa, run(isa))) {
            for (name, (a, b)) in ["out", "lse", "grads"].iter().zip(fast.iter().zip(&portable)) {
                let error = a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0f32, f32::max);
                assert!(error < 1e-5, "{name}: {isa:?} vs portable {error}");
            }
        }
    }
}
