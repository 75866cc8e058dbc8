//! The runtime every processor runs on, and the only crate that talks to Kafka.
//!
//! # Layout
//! - `processor`: the [`Processor`] trait a stage implements (record in -> records out, plus
//!   optional hooks), [`Emit`] for outputs and [`ProcessError`] saying whether to retry.
//! - `runner`: the consume -> process -> produce loop with bounded concurrency,
//!   contiguous-offset commits, rebalances, retries, dead letters and graceful shutdown.
//! - `offsets`: which input offset may be committed. `dedup`: dropping replayed records.
//! - `restore`: rebuilding a stateful processor's state from its input on assignment.
//! - `publisher`: producing outputs and dead letters with their headers.
//! - `source`: what processors without an input topic (the feeder) run on.
//! - `reader`: reading a topic from the beginning (tools, tests, replays).
//! - `ordered`: reading a single-partition topic from a position the consumer stores itself
//!   (the trainer keeps it in its checkpoints).
//! - `topology` / `settings`: the declarative topology file and shared settings.
//! - `kafka`: construction of every client (all librdkafka settings live there).
//! - `admin`: creating a topology's topics. `broker`: the local Kafka-API broker.
//! - `bench`: the raw rdkafka baseline of `distillery bench runtime`.
//! - `objects`: object stores by URL (local files, S3).
//! - `shutdown`: SIGINT/SIGTERM. `telemetry`: logs and Prometheus metrics.

pub mod admin;
pub mod bench;
pub mod broker;
mod dedup;
pub mod kafka;
pub mod objects;
pub mod offsets;
pub mod ordered;
pub mod processor;
pub mod publisher;
pub mod reader;
mod restore;
pub mod runner;
pub mod settings;
pub mod shutdown;
pub mod source;
pub mod telemetry;
pub mod topology;

pub use kafka::Connection;
pub use offsets::PartitionId;
pub use processor::{Emit, PortSpec, ProcessError, Processor, RecordContext};
pub use runner::{run_processor, ProcessorRun, RunSummary};
pub use topology::{ProcessorTypeSpec, Topology};
