//! The arithmetic under the attention's CPU kernels: the float types they run in, a dot
//! product, weighted sums of rows (the kernels' workhorse: scores against a transposed key
//! block, probabilities times values, gradients) and a vectorisable exp. Written so that the
//! compiler vectorises them: independent accumulators, no library calls, no branches in the
//! lanes.
//!
//! `FMA` (a const parameter throughout) is true only in the kernels compiled for AVX2 and FMA
//! or above (see `cpu::dispatched!`): `a * b + c` is then one fused instruction.

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
    /// `self * a + b` in one rounding (one instruction where FMA is enabled).
    fn fused_mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! real {
    ($t:ty, $exp_nonpositive:expr) => {
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

real!(f32, exp_f32);
// f64 is for checking gradients: the library's exp, to the last bit.
real!(f64, f64::exp);

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
    while c + 64 <= d {
        lanes::<T, FMA, 64>(acc, c, w, rows, base, stride);
        c += 64;
    }
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
