//! The runtime every processor runs on, and the only crate that talks to Kafka.
//!
//! # Layout
//! - `processor`: the [`Processor`] trait a stage implements (record in -> records out, plus
//!   optional hooks), [`Emit`] for outputs and [`ProcessError`] saying whether to retry.
//! - `runner`: the consume -> process -> produce loop with bounded concurrency,
//!   contiguous-offset commits, rebalances, retries, dead letters and graceful shutdown.
//!   `record`: one input record's task. `rebalance`: librdkafka's callbacks (fence, flush,
//!   commit on revocation).
//! - `partitions`: what a replica keeps per partition it holds (offsets, the assignment's
//!   generation that fences its outputs, cancellation, readiness, recent ids).
//! - `offsets`: which input offset may be committed. `dedup`: dropping replayed records.
//! - `restore`: rebuilding a processor's state (and its window of recent ids) on assignment.
//! - `publisher`: producing outputs and dead letters with their headers. `outputs`: what a
//!   processor's tick publishes through, fenced by the partitions it depends on.
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
pub mod outputs;
mod partitions;
pub mod processor;
pub mod publisher;
pub mod reader;
mod rebalance;
mod record;
mod restore;
pub mod runner;
pub mod settings;
pub mod shutdown;
pub mod source;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod topology;

pub use kafka::Connection;
pub use offsets::PartitionId;
pub use outputs::Outputs;
pub use processor::{Assignment, Emit, OutputScope, PortSpec, ProcessError, Processor, RecordContext, RestoredOutput};
pub use runner::{run_processor, ProcessorRun, RunSummary};
pub use topology::{ProcessorTypeSpec, Topology};
