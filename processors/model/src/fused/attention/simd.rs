//! The arithmetic under the attention's CPU kernels: the float types they run in, dot
//! products, weighted sums of rows and a vectorisable exp. Written so that the compiler
//! vectorises them (independent accumulators, no library calls, no branches in the lanes);
//! where it does that badly (four dot products at once), AVX2 intrinsics for f32.
//!
//! `FMA` (a const parameter throughout) is true only in the kernels compiled for AVX2 and FMA
//! (see `cpu::dispatched!`): `a * b + c` is then one fused instruction.

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Sub};

use candle_core::WithDType;

/// The float types the kernels run in.
pub(super) trait Real:
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
    /// `exp(self)` for `self <= 0` (probabilities from shifted scores), in a form the compiler
    /// vectorises: no library call.
    fn exp_nonpositive(self) -> Self;
    fn of(x: f64) -> Self;
    /// `x . r[i]` for four rows `r[i]` as long as `x`. `FMA` is true only in the kernels
    /// compiled for AVX2 and FMA, where f32 uses those instructions directly (the compiler
    /// vectorises the portable loop across the four rows, badly).
    #[inline(always)]
    fn dot4<const FMA: bool>(x: &[Self], r: [&[Self]; 4]) -> [Self; 4] {
        dot4_portable::<Self, FMA>(x, r)
    }
    /// `self * a + b` in one rounding (one instruction where FMA is enabled).
    fn fused_mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! real {
    ($t:ty, $exp_nonpositive:expr, { $($extra:item)* }) => {
        impl Real for $t {
            const ZERO: $t = 0.0;
            const NEG_INFINITY: $t = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn exp(self) -> $t {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> $t {
                <$t>::ln(self)
            }
            $($extra)*
            #[inline(always)]
            fn exp_nonpositive(self) -> $t {
                $exp_nonpositive(self)
            }
            #[inline(always)]
            fn of(x: f64) -> $t {
                x as $t
            }
            #[inline(always)]
            fn fused_mul_add(self, a: $t, b: $t) -> $t {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}

real!(f32, exp_f32, {
    #[inline(always)]
    fn dot4<const FMA: bool>(x: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: `FMA` is true only where this CPU has AVX2 and FMA (see `dispatched!`).
            return unsafe { dot4_avx2(x, r) };
        }
        dot4_portable::<f32, FMA>(x, r)
    }
});
// f64 is for checking gradients: the library's exp, to the last bit.
real!(f64, f64::exp, {});

/// `exp(x)` for `x <= 0` in f32 (Cephes' `expf`, relative error about 1e-7): `x = n ln2 + r`
/// with `|r| <= ln2 / 2`, a degree-6 polynomial for `exp(r)`, `2^n` built in the exponent bits.
/// Branch-free (selects and integer conversions only), so loops of it vectorise.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // Below this 2^n would be subnormal; exp is then under 1e-37, nothing next to the row's
    // largest probability (1).
    let x = if x < -87.0 { -87.0 } else { x };
    // Round to nearest by the 1.5 * 2^23 trick (no library `round` call on baseline x86-64):
    // `shifted`'s low mantissa bits hold the integer `n`, read without a saturating conversion.
    let shifter = 12_582_912.0f32;
    let shifted = x * std::f32::consts::LOG2_E + shifter;
    let n = shifted - shifter;
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(shifter.to_bits() as i32);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits((n_bits.wrapping_add(127) as u32) << 23)
}

/// `a * b + c`, fused when compiled with FMA (without it, `mul_add` would be a slow library call).
#[inline(always)]
fn madd<T: Real, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.fused_mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product with eight independent accumulators, so that the compiler vectorises it (a
/// single running sum is a dependency chain it may not reorder).
#[inline(always)]
pub(super) fn dot<T: Real, const FMA: bool>(a: &[T], b: &[T]) -> T {
    let b = &b[..a.len()];
    let mut acc = [T::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = T::ZERO;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = madd::<T, FMA>(*x, *y, tail);
    }
    for (x, y) in ca.zip(cb) {
        for lane in 0..8 {
            acc[lane] = madd::<T, FMA>(x[lane], y[lane], acc[lane]);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[j] = x . rows[base + j * stride..][..d]` for every `j < out.len()`, four rows at a
/// time: four independent sums hide the adds' latency and share the loads of `x`.
#[inline(always)]
pub(super) fn dots<T: Real, const FMA: bool>(x: &[T], rows: &[T], base: usize, stride: usize, out: &mut [T]) {
    let d = x.len();
    let done = out.len() / 4 * 4;
    let mut quads = out.chunks_exact_mut(4);
    for (i, quad) in (&mut quads).enumerate() {
        let first = base + 4 * i * stride;
        let (r0, r1) = (&rows[first..first + d], &rows[first + stride..first + stride + d]);
        let (r2, r3) =
            (&rows[first + 2 * stride..first + 2 * stride + d], &rows[first + 3 * stride..first + 3 * stride + d]);
        let sums = T::dot4::<FMA>(x, [r0, r1, r2, r3]);
        quad.copy_from_slice(&sums);
    }
    for (j, o) in quads.into_remainder().iter_mut().enumerate() {
        *o = dot::<T, FMA>(x, &rows[base + (done + j) * stride..][..d]);
    }
}

/// `Real::dot4`, portable.
#[inline(always)]
fn dot4_portable<T: Real, const FMA: bool>(x: &[T], r: [&[T]; 4]) -> [T; 4] {
    r.map(|row| dot::<T, FMA>(x, row))
}

/// `Real::dot4` for f32 with AVX2 and FMA: one 8-lane accumulator per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot4_avx2(x: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let d = x.len();
    assert!(r.iter().all(|row| row.len() >= d));
    let whole = d / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    while c < whole {
        // SAFETY (loads): `c + 8 <= whole <= d` and every row holds at least `d` values.
        let xs = _mm256_loadu_ps(x.as_ptr().add(c));
        for (a, row) in acc.iter_mut().zip(&r) {
            *a = _mm256_fmadd_ps(xs, _mm256_loadu_ps(row.as_ptr().add(c)), *a);
        }
        c += 8;
    }
    let mut out = [0.0f32; 4];
    for ((o, a), row) in out.iter_mut().zip(acc).zip(&r) {
        let half = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let pairs = _mm_hadd_ps(half, half);
        let mut sum = _mm_cvtss_f32(_mm_hadd_ps(pairs, pairs));
        for c in whole..d {
            sum = x[c].mul_add(row[c], sum);
        }
        *o = sum;
    }
    out
}

/// `count` weights a stride apart: `.0[j * .1]` for `j < .2` (a row or a column of a tile).
#[derive(Clone, Copy)]
pub(super) struct Weights<'a, T>(pub(super) &'a [T], pub(super) usize, pub(super) usize);

/// `acc += sum_j w[j] * rows[base + j * stride..][..d]`, 32 lanes of `acc` at a time held in
/// registers across every `j` (instead of loading and storing `acc` once per row).
#[inline(always)]
pub(super) fn accumulate<T: Real, const FMA: bool>(
    acc: &mut [T],
    w: Weights<T>,
    rows: &[T],
    base: usize,
    stride: usize,
) {
    let d = acc.len();
    let mut c = 0;
    while c + 32 <= d {
        lanes::<T, FMA, 32>(acc, c, w, rows, base, stride);
        c += 32;
    }
    while c + 8 <= d {
        lanes::<T, FMA, 8>(acc, c, w, rows, base, stride);
        c += 8;
    }
    while c < d {
        lanes::<T, FMA, 1>(acc, c, w, rows, base, stride);
        c += 1;
    }
}

/// `accumulate` for the `W` lanes of `acc` from `c`.
#[inline(always)]
fn lanes<T: Real, const FMA: bool, const W: usize>(
    acc: &mut [T],
    c: usize,
    w: Weights<T>,
    rows: &[T],
    base: usize,
    stride: usize,
) {
    let mut r: [T; W] = acc[c..c + W].try_into().expect("W lanes");
    let Weights(values, step, count) = w;
    for (j, &weight) in values.iter().step_by(step).take(count).enumerate() {
        let row: &[T; W] = rows[base + j * stride + c..][..W].try_into().expect("W lanes");
        for lane in 0..W {
            r[lane] = madd::<T, FMA>(weight, row[lane], r[lane]);
        }
    }
    acc[c..c + W].copy_from_slice(&r);
}
