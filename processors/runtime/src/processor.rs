//! The contract between a stage and the runtime: a [`Processor`] turns one input record into
//! output records; the runtime does everything Kafka (consume, commit, produce, dead letters).

use crate::offsets::PartitionId;
use crate::outputs::Outputs;
use distillery_schemas::{encode, ErrorClass, Record, RecordKind};
use std::future::Future;

/// An output port of a processor type: a name the topology maps to a topic, and the record
/// kind written there (checked by `distillery topology check` and again at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub name: &'static str,
    pub kind: RecordKind,
}

/// A partition as this replica holds it. `generation` is new at every assignment, so work
/// begun under an earlier assignment of the same partition (a task that outlived the
/// revocation) is recognised as stale, and its outputs are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Assignment {
    pub partition: PartitionId,
    pub generation: u64,
}

/// An output port whose records a processor learns again whenever partitions are assigned
/// (see [`Processor::RESTORES_FROM_OUTPUTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredOutput {
    pub port: &'static str,
    pub scope: OutputScope,
}

/// Which part of a restored output topic is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputScope {
    /// Every partition (the packer's one-partition shards topic).
    WholeTopic,
    /// The partitions with the numbers of the assigned input partitions: the output is
    /// co-partitioned with the input (same partition count, keyed by the same key), so they
    /// hold exactly the outputs of the assigned partitions' records.
    AssignedPartitions,
}

/// One stage of the pipeline. Implementations hold their settings and clients; the runtime
/// calls [`Processor::process`] concurrently (up to `max_in_flight` records at a time), so
/// `process` takes `&self` and keeps any mutable state behind its own locks.
///
/// State kept for a partition must follow the partition: start it in `on_assigned`, rebuild it
/// in `restore` / `restore_output`, drop it in `on_revoked`, and ignore calls whose
/// [`RecordContext::generation`] is not the one `on_assigned` gave (a stale task). The runtime
/// refuses to publish anything that depends on a partition this replica no longer holds, and
/// a partition's next owner starts only after everything this replica published for it is
/// acknowledged, so whatever was published is seen by the restore that follows.
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

    /// Called when partitions are assigned, before their state is restored and before their
    /// first record: start keeping state for them, under these generations.
    fn on_assigned(&self, _assigned: &[Assignment]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called when partitions are taken away (rebalance, shutdown). Their in-flight work was
    /// cancelled and anything still to be published for them is refused: drop the state kept
    /// for them here; their next owner rebuilds it.
    fn on_revoked(&self, _partitions: &[PartitionId]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once on graceful shutdown, after in-flight work finished or was abandoned.
    fn on_shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// True for processors whose state is rebuilt from their own input: when partitions are
    /// assigned, the runtime feeds every record below the group's committed offset to
    /// [`Processor::restore`] before any new record of them is processed. State thereby moves
    /// with its partition and survives restarts, with no store of its own.
    const RESTORES_FROM_INPUT: bool = false;

    /// Rebuilds state from one record that was already processed (its outputs were already
    /// delivered, so none are produced). A panic here dead-letters the record, as in
    /// [`Processor::process`].
    fn restore(&self, _input: Self::Input, _ctx: &RecordContext) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Output ports whose records the processor must know about after a restart or a
    /// rebalance (the packer: which questions are already in published shards; the
    /// agreement: which questions expired). On every assignment, before
    /// [`Processor::restore`], the runtime reads them and hands each record to
    /// [`Processor::restore_output`].
    const RESTORES_FROM_OUTPUTS: &'static [RestoredOutput] = &[];

    /// Learns one record this processor (or an earlier run of it) already published. `owner`
    /// is the assigned input partition it belongs to ([`OutputScope::AssignedPartitions`]),
    /// or None for a whole topic.
    fn restore_output(
        &self,
        _port: &str,
        _owner: Option<&Assignment>,
        _payload: &[u8],
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called every `tick_interval_ms` while no restore is running, on a task of its own
    /// (never two at once) that is cancelled when partitions are revoked or the processor
    /// stops: outputs that the passing of time produces (expired joins, the packer's shards),
    /// published through `outputs`, which refuses them once a partition they depend on is no
    /// longer this replica's. Mark them done only after `publish` returned Ok; a replay of a
    /// tick must yield the same ids.
    fn on_tick(&self, _outputs: &Outputs) -> impl Future<Output = ()> + Send {
        async {}
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
    /// The generation of the partition's assignment this record was read under (see
    /// [`Assignment`]).
    pub generation: u64,
}

impl RecordContext {
    /// The partition and generation the record belongs to.
    pub fn assignment(&self) -> Assignment {
        Assignment {
            partition: PartitionId { topic: self.topic.clone(), partition: self.partition },
            generation: self.generation,
        }
    }
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
