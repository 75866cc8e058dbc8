//! librdkafka's callbacks into the runner: partitions assigned and revoked, commits
//! acknowledged, statistics. They run on the thread that polls the consumer.
//!
//! A revocation is where a partition's state moves between replicas, so it settles
//! everything about the partition before returning (librdkafka rejoins the group, and the
//! partition reaches its next owner, only after it returns):
//! 1. fence: nothing more is produced for the revoked assignment (see `partitions`);
//! 2. flush: whatever was produced for it is acknowledged by the broker, so the next owner,
//!    which restores its state from the topics, sees it (a manifest this replica published
//!    is not shipped again there);
//! 3. commit what is done.

use crate::offsets::PartitionId;
use crate::partitions::Partitions;
use crate::processor::Assignment;
use crate::telemetry;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, Statistics, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) enum RebalanceEvent {
    Assigned(Vec<Assignment>),
    Revoked(Vec<PartitionId>),
}

/// What the callbacks share with the runner.
pub(crate) struct Group {
    pub processor: String,
    pub partitions: Arc<Partitions>,
    pub producer: FutureProducer,
    /// Delivery is exactly-once: commits go through the producer's transaction.
    pub transactional: bool,
    pub events: mpsc::UnboundedSender<RebalanceEvent>,
    /// Set once the runner stops: a revocation then waits for the producer only briefly
    /// (whatever it still holds dies with the process, so it cannot reach the broker late).
    pub closing: AtomicBool,
}

pub(crate) struct RuntimeContext {
    pub group: Arc<Group>,
}

fn partitions_of(list: &TopicPartitionList) -> Vec<PartitionId> {
    list.elements().iter().map(|e| PartitionId { topic: e.topic().to_string(), partition: e.partition() }).collect()
}

pub(crate) fn offsets_list(offsets: &[(PartitionId, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for (p, offset) in offsets {
        list.add_partition_offset(&p.topic, p.partition, Offset::Offset(*offset))?;
    }
    Ok(list)
}

/// Commits the open transaction with these input offsets, and opens the next one.
pub(crate) fn commit_transaction<C: ConsumerContext>(
    producer: &FutureProducer,
    consumer: &impl Consumer<C>,
    offsets: &[(PartitionId, i64)],
) -> KafkaResult<()> {
    let timeout = Duration::from_secs(30);
    if !offsets.is_empty() {
        let group = consumer
            .group_metadata()
            // Only a consumer that left its group has no metadata.
            .ok_or(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::State))?;
        producer.send_offsets_to_transaction(&offsets_list(offsets)?, &group, timeout)?;
    }
    producer.commit_transaction(timeout)?;
    producer.begin_transaction()
}

impl Group {
    /// Waits until the broker acknowledged everything produced so far. While the runner runs
    /// this waits as long as it takes (the group cannot rebalance without the broker either).
    fn flush(&self) {
        loop {
            match self.producer.flush(Duration::from_secs(30)) {
                Ok(()) => return,
                Err(e) if self.closing.load(Ordering::SeqCst) => {
                    tracing::warn!(processor = %self.processor, "outputs not acknowledged at shutdown: {e}");
                    return;
                }
                Err(e) => tracing::warn!(processor = %self.processor, "waiting for outputs of revoked partitions: {e}"),
            }
        }
    }
}

impl ClientContext for RuntimeContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(telemetry::CONSUMER_LAG, "processor" => self.group.processor.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        let group = &self.group;
        let partitions = partitions_of(list);
        let done = group.partitions.revoke(&partitions);
        let result = if group.transactional {
            commit_transaction(&group.producer, consumer, &done)
        } else {
            group.flush();
            if done.is_empty() {
                Ok(())
            } else {
                offsets_list(&done).and_then(|list| consumer.commit(&list, CommitMode::Sync))
            }
        };
        match result {
            Ok(()) if !done.is_empty() => {
                tracing::info!(processor = %group.processor, "committed {} revoked partition(s)", done.len())
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(processor = %group.processor, "commit on revoke failed (the new owner replays): {e}")
            }
        }
        let _ = group.events.send(RebalanceEvent::Revoked(partitions));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = self.group.partitions.assign(&partitions_of(list));
                let _ = self.group.events.send(RebalanceEvent::Assigned(assigned));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(processor = %self.group.processor, "rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let committed: Vec<(PartitionId, i64)> = offsets
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(offset) => {
                            Some((PartitionId { topic: e.topic().to_string(), partition: e.partition() }, offset))
                        }
                        _ => None,
                    })
                    .collect();
                self.group.partitions.committed(&committed);
                metrics::counter!(telemetry::COMMITS, "processor" => self.group.processor.clone()).increment(1);
            }
            Err(e) => {
                tracing::warn!(processor = %self.group.processor, "offset commit failed (retried at the next interval): {e}")
            }
        }
    }
}
