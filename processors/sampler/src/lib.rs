//! The teacher sampler: reads `questions`, asks one teacher for `samples_per_question` answers
//! each, and writes one teacher-sample record per (question, teacher, attempt) to `samples`.
//!
//! # Layout
//! - `config`: settings (teacher, model, server or replay, prompt, sampling).
//! - `replay`: a teacher that serves recorded traces (JSONL/Parquet, or the assistant turn of
//!   Nemotron-v1 rows: how the paper got its DeepSeek-R1 traces) instead of HTTP.
//! - `processor`: question in -> samples out.
//!
//! A sample's id is derived from (question id, teacher, attempt), so a restarted sampler's
//! replays are dropped downstream, and a duplicate question is dropped before it costs a
//! teacher call (the runtime's de-duplication).

pub mod config;
mod processor;
pub mod replay;

pub use config::SamplerSettings;
pub use processor::Sampler;
