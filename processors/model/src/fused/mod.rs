//! The decoder's ops fused into one pass each, with their own backward (candle custom ops):
//! what the trainer runs. Each saves only what its backward needs (attention: the output and
//! the log-sum-exp; cross-entropy: the log-sum-exp per row) and recomputes the rest, so memory
//! grows linearly with the row length. `crate::reference` holds the same maths composed of
//! candle primitives; the tests check every op here against it and against finite differences.
//!
//! Each op runs multi-threaded on the CPU; its `cuda_fwd` is where the CUDA kernel goes. Until
//! the kernels exist, inputs on another device take the composite maths of [`off_cpu`].

pub mod adamw;
pub mod attention;
pub(crate) mod cpu;
pub mod cross_entropy;
pub mod norm;
pub mod off_cpu;
pub mod rope;
pub mod swiglu;
