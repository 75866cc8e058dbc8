//! The contract between a stage and the runtime: a [`Processor`] turns one input record into
//! output records; the runtime does everything Kafka (consume, commit, produce, dead letters).

use crate::offsets::PartitionId;
use distillery_schemas::{encode, ErrorClass, Record, RecordKind};
use std::future::Future;

/// An output port of a processor type: a name the topology maps to a topic, and the record
/// kind written there (checked by `distillery topology check` and again at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub name: &'static str,
    pub kind: RecordKind,
}

/// One stage of the pipeline. Implementations hold their settings and clients; the runtime
/// calls [`Processor::process`] concurrently (up to `max_in_flight` records at a time), so
/// `process` takes `&self` and keeps any mutable state behind its own locks.
pub trait Processor: Send + Sync + 'static {
    /// The record type this processor reads.
    type Input: Record;

    /// The ports it writes, with their record kinds.
    const OUTPUTS: &'static [PortSpec];

    /// Processes one record. `Ok(outputs)` (possibly empty) means done: the runtime produces
    /// the outputs and commits the input once the broker has acknowledged all of them.
    /// `Err` with a retryable error is retried with backoff; a permanent one (or an exhausted
    /// retry budget) sends the input to the dead-letter topic.
    fn process(
        &self,
        input: Self::Input,
        ctx: &RecordContext,
    ) -> impl Future<Output = Result<Vec<Emit>, ProcessError>> + Send;

    /// Called before the first record of newly assigned partitions is processed: restore
    /// state kept for them here.
    fn on_assigned(&self, _partitions: &[PartitionId]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called when partitions are taken away (rebalance) before their offsets are committed:
    /// drop state kept for them here.
    fn on_revoked(&self, _partitions: &[PartitionId]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once on graceful shutdown, after in-flight work finished or was abandoned.
    fn on_shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// True for processors whose state is rebuilt from their own input: when partitions are
    /// assigned, the runtime feeds every record below the group's committed offset to
    /// [`Processor::restore`] before any new record is processed. State thereby moves with
    /// its partition and survives restarts, with no store of its own.
    const RESTORES_FROM_INPUT: bool = false;

    /// Rebuilds state from one record that was already processed (its outputs were already
    /// delivered, so none are produced).
    fn restore(&self, _input: Self::Input, _ctx: &RecordContext) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Output ports whose records the processor must know about after a restart (the packer:
    /// which questions are already in published shards). On every assignment, before
    /// [`Processor::restore`], the runtime reads these ports' topics from the beginning and
    /// hands each record to [`Processor::restore_output`].
    const RESTORES_FROM_OUTPUTS: &'static [&'static str] = &[];

    /// Learns one record this processor (or an earlier run of it) already published.
    fn restore_output(&self, _port: &str, _payload: &[u8]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called every `tick_interval_ms`: outputs that the passing of time produces (expired
    /// joins). They are produced like any output; a replay of a tick yields the same ids.
    fn on_tick(&self) -> impl Future<Output = Vec<Emit>> + Send {
        async { Vec::new() }
    }
}

/// Where the record being processed came from.
#[derive(Debug, Clone)]
pub struct RecordContext {
    pub processor: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
}

/// An encoded output on one port. Build it with [`Emit::record`].
#[derive(Debug, Clone)]
pub struct Emit {
    pub port: &'static str,
    pub kind: RecordKind,
    pub key: String,
    pub id: String,
    pub payload: Vec<u8>,
}

impl Emit {
    /// Encodes `record` for `port`. Keyed by the record's key, identified by its id.
    pub fn record<R: Record>(port: &'static str, record: &R) -> Result<Emit, ProcessError> {
        let payload = encode(record).map_err(|e| ProcessError::internal(e.to_string()))?;
        Ok(Emit { port, kind: R::KIND, key: record.key().to_string(), id: record.id().to_string(), payload })
    }
}

/// Why a record could not be processed, and whether trying again could help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProcessError {
    pub class: ErrorClass,
    pub retryable: bool,
    pub message: String,
}

impl ProcessError {
    /// Bad input: dead-letter it, never retry.
    pub fn rejected(message: impl Into<String>) -> Self {
        ProcessError { class: ErrorClass::User, retryable: false, message: message.into() }
    }
    /// A server or service failed; retrying may help.
    pub fn transient(message: impl Into<String>) -> Self {
        ProcessError { class: ErrorClass::External, retryable: true, message: message.into() }
    }
    /// A server or service failed in a way retrying cannot fix (or already exhausted its own
    /// retries): dead-letter it.
    pub fn external(message: impl Into<String>) -> Self {
        ProcessError { class: ErrorClass::External, retryable: false, message: message.into() }
    }
    /// A bug: dead-letter the record so the stream goes on, and shout in the logs.
    pub fn internal(message: impl Into<String>) -> Self {
        ProcessError { class: ErrorClass::Internal, retryable: false, message: message.into() }
    }
}
