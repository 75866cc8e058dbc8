//! The student: a Llama/Mistral-family decoder written for training on packed rows (every
//! sequence restarts its positions at 0 and attends only to itself) and for generation with a
//! key/value cache. Used by the trainer (training, checkpoints) and by the evaluator's
//! in-process backend (generation), so neither depends on the other.
//!
//! - [`config`]: `config.json`, checked against what the model computes;
//! - [`model`]: the decoder, its packed rows and its cache;
//! - [`fused`]: the ops the trainer runs, one pass each with their own backward;
//! - [`reference`]: the decoder's ops composed of candle primitives, differentiated by candle's
//!   autograd (the reference the tests check the fused ops against);
//! - [`generate`]: sampling with the cache;
//! - [`gguf`], [`weights`]: weights from GGUF files, safetensors and model folders.

pub mod config;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod reference;
pub mod weights;

/// candle as this crate builds it (with or without `cuda`), for tools that drive the model.
pub use candle_core;
pub use config::ModelConfig;
pub use model::{learnable_rows, KvCache, PackedRow, Student};
