//! Consumer-trainer: reads shard manifests from `shards.{style}`, fetches the shards from the
//! object store, trains a Llama/Mistral-family student on their packed rows with candle, and
//! publishes `train-metrics` every step and a `checkpoints` event after every completed
//! checkpoint upload.

pub mod checkpoint;
pub mod config;
pub mod feed;
pub mod optim;
pub mod schedule;
pub mod train;

/// candle as the trainer builds it (with or without `cuda`), for tools such as
/// `distillery bench trainer` that drive the model directly.
pub use candle_core;
pub use config::TrainerSettings;
/// The model crate, re-exported for tools that train through this crate.
pub use distillery_model;
pub use distillery_model::{KvCache, ModelConfig, PackedRow, Student};
pub use train::{run, TrainSummary, OUTPUTS};
