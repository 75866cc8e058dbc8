//! Consumer-trainer: reads shard manifests from `shards.{style}`, fetches the shards from the
//! object store, trains a Llama/Mistral-family student on their packed rows with candle, and
//! publishes `train-metrics` every step and a `checkpoints` event after every completed
//! checkpoint upload.

pub mod checkpoint;
pub mod config;
pub mod feed;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod model_config;
pub mod ops;
pub mod optim;
pub mod schedule;
pub mod train;

/// candle as the trainer builds it (with or without `cuda`), for tools such as
/// `distillery bench trainer` that drive the model directly.
pub use candle_core;
pub use config::TrainerSettings;
pub use model::{KvCache, PackedRow, Student};
pub use model_config::ModelConfig;
pub use train::{run, TrainSummary, OUTPUTS};
