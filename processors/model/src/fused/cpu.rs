//! Small CPU helpers the fused ops share: the float types their kernels run in, the dtype they
//! compute in, a contiguous tensor's elements, and how many rows one parallel task takes.

use candle_core::{bail, CpuStorage, DType, Layout, Result, WithDType};

/// The float types the CPU kernels run in: f32 (also for bf16/f16 inputs, converted before the
/// op) and f64 (for the finite-difference tests). The few transcendental functions the kernels
/// need, without adding a dependency on `num-traits`.
pub(crate) trait Real: WithDType {
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn maximum(self, other: Self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn maximum(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
real!(f32);
real!(f64);

/// The dtype an op computes in: f64 for f64 input, f32 otherwise (bf16/f16 are widened).
pub(crate) fn wide_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// The elements of a contiguous CPU tensor. The public functions make their inputs contiguous
/// before applying an op, so a strided layout here is a bug, reported rather than misread.
pub(crate) fn cpu_slice<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&T::cpu_storage_as_slice(storage)?[start..end]),
        None => bail!("fused op: expected a contiguous tensor, got strides {:?}", layout.stride()),
    }
}

/// Rows per parallel task: enough tasks to balance the threads, few enough that each has a few
/// thousand elements to amortise the scheduling.
pub(crate) fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads();
    let by_balance = rows.div_ceil(tasks);
    let by_size = 4096usize.div_ceil(row_len.max(1));
    by_balance.max(by_size).max(1)
}
