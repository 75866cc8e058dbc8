//! The consume -> process -> produce loop every processor with an input topic runs on.
//!
//! Guarantee (at-least-once, the default): an input offset is committed only after every
//! output of every record at or below it was acknowledged by the broker, or the record went to
//! the dead-letter topic. A kill at any moment therefore replays only records whose outputs
//! may be missing; the replayed outputs carry the same deterministic ids, and the next
//! processor drops them (see `dedup`). With `delivery = "exactly-once"` the outputs and the
//! input offsets are committed together in a Kafka transaction instead.
//!
//! 1. Subscribe the instance's consumer group to its input topics.
//! 2. For each record: register its offset as in flight, decode it (undecodable ->
//!    dead letter), drop it if its id was just seen (a replay), and hand it to
//!    `Processor::process` on its own task, at most `max_in_flight` at a time.
//! 3. Produce the outputs and wait for the broker's acks; retry retryable errors with
//!    backoff; dead-letter what fails for good.
//! 4. Mark the offset done; every `commit_interval` commit the contiguous done prefix of
//!    each partition.
//! 5. On rebalance: revoked partitions cancel their in-flight work and commit what is done;
//!    assigned partitions start fresh (and the processor's hooks run before their records).
//! 6. On shutdown: stop fetching, give in-flight work `shutdown_deadline` to finish, commit,
//!    return.

use crate::dedup::RecentIds;
use crate::kafka::Connection;
use crate::offsets::{InFlight, OffsetTracker, PartitionId};
use crate::processor::{ProcessError, Processor, RecordContext};
use crate::publisher::{FailedInput, PublishError, Publisher};
use crate::restore::{restore_outputs, restore_partitions};
use crate::settings::{Delivery, RuntimeSettings};
use crate::telemetry;
use crate::topology::{Topology, DEAD_LETTERS};
use backon::{ExponentialBuilder, Retryable};
use distillery_schemas::{decode, ErrorClass, Record};
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, Statistics, TopicPartitionList};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Which processor instance to run, and where.
#[derive(Clone)]
pub struct ProcessorRun {
    pub topology: Arc<Topology>,
    /// Instance name in the topology.
    pub name: String,
    /// Distinguishes replicas in headers, logs and transactional ids.
    pub replica: String,
    pub connection: Connection,
}

/// What one run did, for the caller's report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub records_in: u64,
    pub records_done: u64,
    pub outputs: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
}

#[derive(Default)]
struct Counters {
    records_in: AtomicU64,
    records_done: AtomicU64,
    outputs: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates: AtomicU64,
}

enum RebalanceEvent {
    Assigned(Vec<PartitionId>),
    Revoked(Vec<PartitionId>),
}

/// State shared by the loop, the record tasks and librdkafka's callbacks.
struct Shared {
    processor: String,
    tracker: Mutex<OffsetTracker>,
    recent: Mutex<RecentIds>,
    /// Cancels the in-flight work of a partition when it is revoked.
    cancel: Mutex<HashMap<PartitionId, CancellationToken>>,
    events: mpsc::UnboundedSender<RebalanceEvent>,
    /// Set when a record could neither be delivered nor dead-lettered: the loop stops so the
    /// record is replayed after a restart instead of being skipped.
    fatal: Mutex<Option<String>>,
    fatal_notify: Notify,
    counters: Counters,
    /// The transactional producer, when delivery is exactly-once.
    transactional: Option<FutureProducer>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave them inconsistent (every critical
    // section is a single map operation), so poisoning is ignored.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn partitions_of(list: &TopicPartitionList) -> Vec<PartitionId> {
    list.elements().iter().map(|e| PartitionId { topic: e.topic().to_string(), partition: e.partition() }).collect()
}

fn offsets_list(offsets: &[(PartitionId, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for (p, offset) in offsets {
        list.add_partition_offset(&p.topic, p.partition, Offset::Offset(*offset))?;
    }
    Ok(list)
}

struct RuntimeContext {
    shared: Arc<Shared>,
}

impl ClientContext for RuntimeContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(telemetry::CONSUMER_LAG, "processor" => self.shared.processor.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        let partitions = partitions_of(list);
        let mut done = Vec::new();
        {
            let mut tracker = lock(&self.shared.tracker);
            let mut cancel = lock(&self.shared.cancel);
            let mut recent = lock(&self.shared.recent);
            for p in &partitions {
                if let Some(token) = cancel.remove(p) {
                    token.cancel();
                }
                recent.forget(p);
                if let Some(offset) = tracker.revoke(p) {
                    done.push((p.clone(), offset));
                }
            }
        }
        if !done.is_empty() {
            let result = match &self.shared.transactional {
                Some(producer) => commit_transaction(producer, consumer, &done),
                None => offsets_list(&done).and_then(|list| consumer.commit(&list, CommitMode::Sync)),
            };
            match result {
                Ok(()) => {
                    tracing::info!(processor = %self.shared.processor, "committed {} revoked partition(s)", done.len())
                }
                Err(e) => {
                    tracing::warn!(processor = %self.shared.processor, "commit on revoke failed (the new owner replays): {e}")
                }
            }
        }
        let _ = self.shared.events.send(RebalanceEvent::Revoked(partitions));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                let mut tracker = lock(&self.shared.tracker);
                let mut cancel = lock(&self.shared.cancel);
                for p in &partitions {
                    tracker.assign(p.clone());
                    cancel.insert(p.clone(), CancellationToken::new());
                }
                let _ = self.shared.events.send(RebalanceEvent::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(processor = %self.shared.processor, "rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let mut tracker = lock(&self.shared.tracker);
                for e in offsets.elements() {
                    if let Offset::Offset(offset) = e.offset() {
                        tracker
                            .committed(&PartitionId { topic: e.topic().to_string(), partition: e.partition() }, offset);
                    }
                }
                metrics::counter!(telemetry::COMMITS, "processor" => self.shared.processor.clone()).increment(1);
            }
            Err(e) => {
                tracing::warn!(processor = %self.shared.processor, "offset commit failed (retried at the next interval): {e}")
            }
        }
    }
}

/// Commits the open transaction with these input offsets, and opens the next one.
fn commit_transaction<C: ConsumerContext>(
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

/// Runs `processor` as instance `run.name` until `shutdown` resolves or a record can neither
/// be delivered nor dead-lettered.
pub async fn run_processor<P: Processor>(
    processor: P,
    run: ProcessorRun,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RunSummary> {
    let topology = &run.topology;
    let instance = topology.processor(&run.name).map_err(anyhow::Error::msg)?;
    let settings = instance.runtime.clone();
    settings.check().map_err(anyhow::Error::msg)?;
    let group = topology.group_id(&run.name);
    let input_topics: Vec<String> = instance.inputs.iter().map(|t| topology.topic_name(t)).collect();
    let port_topics: HashMap<String, String> =
        instance.outputs.iter().map(|(port, topic)| (port.clone(), topology.topic_name(topic))).collect();
    let exactly_once = topology.kafka.delivery == Delivery::ExactlyOnce;

    let transactional_id = exactly_once.then(|| format!("{group}.{}", run.replica));
    let producer = run.connection.producer(transactional_id.as_deref())?;
    if exactly_once {
        producer.init_transactions(Duration::from_secs(30))?;
        producer.begin_transaction()?;
    }
    let publisher = Publisher::new(
        producer.clone(),
        &run.name,
        &run.replica,
        P::OUTPUTS,
        &port_topics,
        topology.topic_name(DEAD_LETTERS),
    )
    .map_err(anyhow::Error::msg)?;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        processor: run.name.clone(),
        tracker: Mutex::new(OffsetTracker::default()),
        recent: Mutex::new(RecentIds::new(settings.dedup_window)),
        cancel: Mutex::new(HashMap::new()),
        events: events_tx,
        fatal: Mutex::new(None),
        fatal_notify: Notify::new(),
        counters: Counters::default(),
        transactional: exactly_once.then(|| producer.clone()),
    });
    let consumer: StreamConsumer<RuntimeContext> =
        run.connection.consumer(&group, &settings, RuntimeContext { shared: shared.clone() })?;
    let topic_refs: Vec<&str> = input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(processor = %run.name, replica = %run.replica, group = %group, inputs = ?input_topics, "started");

    let processor = Arc::new(processor);
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let mut tasks = JoinSet::new();
    let mut commit_tick = tokio::time::interval(settings.commit_interval());
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_millis(settings.tick_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    let fatal = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break None,
            _ = shared.fatal_notify.notified() => break lock(&shared.fatal).clone(),
            Some(event) = events.recv() => on_rebalance(&*processor, &run, event).await?,
            _ = tick.tick() => {
                let emits = processor.on_tick().await;
                if !emits.is_empty() {
                    if let Err(e) = publisher.publish(&emits).await {
                        tracing::warn!(processor = %run.name, "tick outputs not delivered (retried at the next tick): {e}");
                    }
                }
            }
            _ = commit_tick.tick() => {
                if exactly_once {
                    // A transaction must hold every output of the offsets it commits: let the
                    // records in flight finish first.
                    while tasks.join_next().await.is_some() {}
                    let done = lock(&shared.tracker).to_commit();
                    commit_transaction(&producer, &consumer, &done)?;
                    let mut tracker = lock(&shared.tracker);
                    for (p, offset) in &done {
                        tracker.committed(p, *offset);
                    }
                } else {
                    commit_done(&consumer, &shared, CommitMode::Async);
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(processor = %run.name, "a record task panicked outside the processor: {e}");
                    }
                }
            }
            // Not polled while every slot is busy: the consumer's max.poll.interval.ms
            // (`max_poll_interval_ms`, 30 min by default) must outlast the slowest record.
            message = consumer.recv(), if permits.available_permits() > 0 => {
                let message = match message {
                    Ok(message) => message.detach(),
                    Err(e) => {
                        tracing::warn!(processor = %run.name, "consumer error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                // Hooks of newly assigned partitions run before their first record.
                while let Ok(event) = events.try_recv() {
                    on_rebalance(&*processor, &run, event).await?;
                }
                let partition = PartitionId { topic: message.topic().to_string(), partition: message.partition() };
                let Some(ticket) = lock(&shared.tracker).begin(&partition, message.offset()) else { continue };
                let cancel = lock(&shared.cancel).get(&partition).cloned().unwrap_or_default();
                shared.counters.records_in.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::RECORDS_IN, "processor" => run.name.clone(), "topic" => partition.topic.clone()).increment(1);
                let permit = permits.clone().acquire_owned().await?;
                let task = RecordTask {
                    processor: processor.clone(),
                    publisher: publisher.clone(),
                    shared: shared.clone(),
                    settings: settings.clone(),
                };
                tasks.spawn(async move {
                    task.run(message, ticket, cancel).await;
                    drop(permit);
                });
            }
        }
    };

    // Shutdown: finish or abandon in-flight work, then commit what is done.
    let deadline = settings.shutdown_deadline();
    if tokio::time::timeout(deadline, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(processor = %run.name, "{} record(s) still in flight after {deadline:?}: abandoned, they are replayed after restart", tasks.len());
        crate::shutdown::abandon_in_flight();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if fatal.is_none() {
        if exactly_once {
            let done = lock(&shared.tracker).to_commit();
            commit_transaction(&producer, &consumer, &done)?;
        } else {
            commit_done(&consumer, &shared, CommitMode::Sync);
        }
    }
    processor.on_shutdown().await;
    consumer.unsubscribe();
    let _ = producer.flush(Duration::from_secs(10));
    let c = &shared.counters;
    let summary = RunSummary {
        records_in: c.records_in.load(Ordering::Relaxed),
        records_done: c.records_done.load(Ordering::Relaxed),
        outputs: c.outputs.load(Ordering::Relaxed),
        dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
    };
    tracing::info!(processor = %run.name, ?summary, "stopped");
    match fatal {
        Some(error) => anyhow::bail!("stopped: {error}"),
        None => Ok(summary),
    }
}

fn commit_done(consumer: &StreamConsumer<RuntimeContext>, shared: &Shared, mode: CommitMode) {
    let done = lock(&shared.tracker).to_commit();
    if done.is_empty() {
        return;
    }
    let result = offsets_list(&done).and_then(|list| consumer.commit(&list, mode));
    match (result, mode) {
        (Ok(()), CommitMode::Sync) => {
            let mut tracker = lock(&shared.tracker);
            for (p, offset) in &done {
                tracker.committed(p, *offset);
            }
        }
        (Ok(()), CommitMode::Async) => {} // commit_callback records it
        (Err(e), _) => {
            tracing::warn!(processor = %shared.processor, "offset commit failed (retried at the next interval): {e}")
        }
    }
}

async fn on_rebalance<P: Processor>(processor: &P, run: &ProcessorRun, event: RebalanceEvent) -> anyhow::Result<()> {
    let name = run.name.as_str();
    let describe =
        |ps: &[PartitionId]| ps.iter().map(|p| format!("{}[{}]", p.topic, p.partition)).collect::<Vec<_>>().join(", ");
    match event {
        RebalanceEvent::Assigned(partitions) => {
            tracing::info!(processor = %name, "partitions assigned: {}", describe(&partitions));
            processor.on_assigned(&partitions).await;
            if !P::RESTORES_FROM_OUTPUTS.is_empty() && !partitions.is_empty() {
                let restored = restore_outputs(processor, run).await?;
                tracing::info!(processor = %name, "learned {restored} record(s) already published");
            }
            if P::RESTORES_FROM_INPUT && !partitions.is_empty() {
                let group = run.topology.group_id(name);
                let restored = restore_partitions(processor, name, &run.connection, &group, &partitions).await?;
                tracing::info!(processor = %name, "state restored from {restored} input record(s)");
            }
        }
        RebalanceEvent::Revoked(partitions) => {
            tracing::info!(processor = %name, "partitions revoked: {}", describe(&partitions));
            processor.on_revoked(&partitions).await;
        }
    }
    Ok(())
}

/// Everything one record's task needs.
struct RecordTask<P> {
    processor: Arc<P>,
    publisher: Publisher,
    shared: Arc<Shared>,
    settings: RuntimeSettings,
}

impl<P: Processor> RecordTask<P> {
    async fn run(self, message: OwnedMessage, ticket: InFlight, cancel: CancellationToken) {
        let started = Instant::now();
        let name = self.shared.processor.clone();
        metrics::gauge!(telemetry::IN_FLIGHT, "processor" => name.clone()).increment(1.0);
        let outcome = tokio::select! {
            // Revoked: abandon; the partition's new owner replays this record.
            _ = cancel.cancelled() => None,
            outcome = self.handle(&message, &ticket) => Some(outcome),
        };
        metrics::gauge!(telemetry::IN_FLIGHT, "processor" => name.clone()).decrement(1.0);
        match outcome {
            Some(Ok(())) => {
                lock(&self.shared.tracker).complete(&ticket);
                self.shared.counters.records_done.fetch_add(1, Ordering::Relaxed);
                metrics::histogram!(telemetry::PROCESS_SECONDS, "processor" => name)
                    .record(started.elapsed().as_secs_f64());
            }
            Some(Err(error)) => {
                let message = format!(
                    "record {}[{}]@{} could neither be delivered nor dead-lettered: {error}",
                    ticket.partition.topic, ticket.partition.partition, ticket.offset
                );
                tracing::error!(processor = %name, "{message}");
                lock(&self.shared.fatal).get_or_insert(message);
                self.shared.fatal_notify.notify_one();
            }
            None => {}
        }
    }

    /// Processes one record to completion: outputs acknowledged, or a dead letter
    /// acknowledged. An error here means neither happened.
    async fn handle(&self, message: &OwnedMessage, ticket: &InFlight) -> Result<(), PublishError> {
        let payload = message.payload().unwrap_or_default();
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let failed = FailedInput {
            source_topic: &ticket.partition.topic,
            partition: ticket.partition.partition,
            offset: ticket.offset,
            key,
            original: payload,
        };
        let input: P::Input = match decode(payload) {
            Ok(input) => input,
            Err(e) => {
                let reason = format!("cannot decode the record as {}: {e}", <P::Input as Record>::KIND);
                return self.dead_letter(failed, ErrorClass::User, &reason).await;
            }
        };
        if !lock(&self.shared.recent).first_time(&ticket.partition, input.id()) {
            self.shared.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::RECORDS_DUPLICATE, "processor" => self.shared.processor.clone()).increment(1);
            return Ok(());
        }
        let ctx = RecordContext {
            processor: self.shared.processor.clone(),
            topic: ticket.partition.topic.clone(),
            partition: ticket.partition.partition,
            offset: ticket.offset,
            key: key.map(str::to_string),
        };
        let s = &self.settings;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(s.retry_min_delay_ms))
            .with_max_delay(Duration::from_millis(s.retry_max_delay_ms))
            .with_max_times(s.retry_attempts.saturating_sub(1))
            .with_jitter();
        let attempt = || {
            let input = input.clone();
            let ctx = &ctx;
            async move {
                // A panic in one record's processing must not take the whole stream down.
                AssertUnwindSafe(self.processor.process(input, ctx)).catch_unwind().await.unwrap_or_else(|panic| {
                    Err(ProcessError::internal(format!("processor panicked: {}", panic_message(&panic))))
                })
            }
        };
        let result = attempt
            .retry(backoff)
            .when(|e: &ProcessError| e.retryable)
            .notify(|e: &ProcessError, delay| {
                metrics::counter!(telemetry::PROCESS_RETRIES, "processor" => self.shared.processor.clone())
                    .increment(1);
                tracing::debug!(processor = %self.shared.processor, "retrying in {delay:?}: {e}");
            })
            .await;
        let emits = match result {
            Ok(emits) => emits,
            Err(e) if e.retryable => {
                let reason = format!("gave up after {} attempts: {}", s.retry_attempts, e.message);
                return self.dead_letter(failed, e.class, &reason).await;
            }
            Err(e) => return self.dead_letter(failed, e.class, &e.message).await,
        };
        match self.publisher.publish(&emits).await {
            Ok(()) => {
                self.shared.counters.outputs.fetch_add(emits.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e @ (PublishError::UnknownPort(_) | PublishError::WrongKind { .. } | PublishError::Encode(_))) => {
                self.dead_letter(failed, ErrorClass::Internal, &e.to_string()).await
            }
            // The broker refused an output for good (too large, ...): the input is at fault.
            Err(e @ PublishError::Delivery { .. }) => self.dead_letter(failed, ErrorClass::User, &e.to_string()).await,
        }
    }

    async fn dead_letter(&self, failed: FailedInput<'_>, class: ErrorClass, reason: &str) -> Result<(), PublishError> {
        self.publisher.dead_letter(failed, class, reason).await?;
        self.shared.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
