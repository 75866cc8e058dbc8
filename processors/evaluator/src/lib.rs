//! The evaluator: reads `checkpoints`, runs the configured benchmarks on each evaluated
//! checkpoint, and writes one eval-result per (checkpoint, benchmark) to `results`. Also the
//! paper's report (Table 1, the token ratio between styles, Figure 1) from the eval-results
//! and train-metrics topics.
//!
//! # Layout
//! - `config`: settings (benchmarks, sampling, backend, which checkpoints).
//! - `benchmark`: loading problems with the feeder's reader and row formats.
//! - `generate`: the [`Backend`] / [`Generator`] traits and the OpenAI-compatible server
//!   backend. An in-process backend (the trainer's candle model) implements the same traits:
//!   `Backend::open` loads the checkpoint's files, `Generator::generate` samples `n` texts
//!   (seed `settings.seed + j` for sample j) and returns them with [`Generation::from_text`];
//!   `Evaluator::new` picks it for `backend = "in-process"` (it refuses that backend until
//!   one is built in). Tests and tools can also pass any backend to `Evaluator::with_backend`.
//! - `launch`: with `server_command`, the server backend's own server process per checkpoint
//!   (started, waited for, stopped in `Generator::close`).
//! - `metrics`: pass@k (unbiased estimator), majority@k, tokens, truncation.
//! - `processor`: checkpoint in -> eval-results out, scored with the judge's rule verifier
//!   and, for what it cannot decide, the judge's LLM judge when `llm_judge` is set.
//! - `report` / `plot`: the Markdown report and its loss plot, as pure functions of the
//!   records; `report::read_topics` fetches those records from the broker.
//!
//! A result's id is `{checkpoint id}/{benchmark}`: a replayed checkpoint yields the same ids,
//! and the runtime's de-duplication drops the copies downstream.

pub mod benchmark;
pub mod config;
pub mod generate;
pub mod in_process;
pub mod launch;
pub mod metrics;
pub mod plot;
mod processor;
pub mod report;

pub use config::EvaluatorSettings;
pub use generate::{Backend, GenerateError, Generation, GenerationSettings, Generator, Prompt};
pub use processor::Evaluator;
