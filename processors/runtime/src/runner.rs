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
//! 5. On rebalance: revoked partitions are fenced (nothing more is published for them), their
//!    in-flight work is cancelled, what was published is flushed and what is done committed
//!    (`rebalance`); assigned partitions are restored on a task of their own while the loop
//!    goes on, and their records wait for it (`restore`).
//! 6. Every `tick_interval`, once no restore runs, the processor's `on_tick` runs on a task of
//!    its own, publishing through the same fence (`outputs`).
//! 7. On shutdown: stop fetching, give in-flight work and the running tick
//!    `shutdown_deadline` to finish, commit, return.
//!
//! Nothing slow runs in the loop itself (restores, ticks and records are tasks), so commits,
//! rebalances and shutdown are never held up by an object store or a server that hangs.

use crate::kafka::Connection;
use crate::offsets::PartitionId;
use crate::outputs::Outputs;
use crate::partitions::Partitions;
use crate::processor::Processor;
use crate::publisher::Publisher;
use crate::rebalance::{commit_transaction, offsets_list, Group, RebalanceEvent, RuntimeContext};
use crate::record::{panic_message, Counters, Fatal, RecordTask};
use crate::restore::restore;
use crate::settings::{Delivery, RuntimeSettings};
use crate::telemetry;
use crate::topology::{Topology, DEAD_LETTERS};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

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

/// Runs `processor` as instance `run.name` until `shutdown` resolves, a record can neither be
/// delivered nor dead-lettered, or a restore fails.
pub async fn run_processor<P: Processor>(
    processor: P,
    run: ProcessorRun,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RunSummary> {
    let topology = &run.topology;
    let instance = topology.processor(&run.name).map_err(anyhow::Error::msg)?;
    let settings = instance.runtime.clone();
    settings.check().map_err(anyhow::Error::msg)?;
    let group_id = topology.group_id(&run.name);
    let input_topics: Vec<String> = instance.inputs.iter().map(|t| topology.topic_name(t)).collect();
    let port_topics: HashMap<String, String> =
        instance.outputs.iter().map(|(port, topic)| (port.clone(), topology.topic_name(topic))).collect();
    let exactly_once = topology.kafka.delivery == Delivery::ExactlyOnce;

    let transactional_id = exactly_once.then(|| format!("{group_id}.{}", run.replica));
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

    let partitions = Arc::new(Partitions::new(settings.dedup_window));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let group = Arc::new(Group {
        processor: run.name.clone(),
        partitions: partitions.clone(),
        producer: producer.clone(),
        transactional: exactly_once,
        events: events_tx,
        closing: AtomicBool::new(false),
    });
    let consumer: StreamConsumer<RuntimeContext> =
        run.connection.consumer(&group_id, &settings, RuntimeContext { group: group.clone() })?;
    let topic_refs: Vec<&str> = input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(processor = %run.name, replica = %run.replica, group = %group_id, inputs = ?input_topics, "started");

    let processor = Arc::new(processor);
    let counters = Arc::new(Counters::default());
    let fatal = Arc::new(Fatal::default());
    let outputs = Arc::new(Outputs::broker(publisher.clone(), partitions.clone()));
    let permits = Arc::new(Semaphore::new(settings.max_in_flight));
    let mut tasks = JoinSet::new();
    let mut restores: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut ticking: Option<JoinHandle<()>> = None;
    let mut commit_tick = tokio::time::interval(settings.commit_interval());
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_millis(settings.tick_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let rebalanced = |event| on_rebalance(&processor, &run, &publisher, &partitions, &settings, event);

    let stopped_by = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break None,
            _ = fatal.notify.notified() => break fatal.error(),
            Some(event) = events.recv() => {
                if let Some(restore) = rebalanced(event).await {
                    restores.spawn(restore);
                }
            }
            Some(restored) = restores.join_next(), if !restores.is_empty() => match restored {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Some(format!("restoring partitions failed: {e:#}")),
                Err(e) if e.is_panic() => break Some(format!("restoring partitions panicked: {e}")),
                Err(_) => {}
            },
            _ = tick.tick() => {
                let idle = ticking.as_ref().is_none_or(JoinHandle::is_finished);
                if idle && restores.is_empty() && !partitions.is_empty() && partitions.all_ready() {
                    ticking = Some(spawn_tick(processor.clone(), outputs.clone(), &partitions, &run.name));
                }
            }
            _ = commit_tick.tick() => {
                if exactly_once {
                    // A transaction must hold every output of the offsets it commits: let the
                    // records in flight finish first.
                    while tasks.join_next().await.is_some() {}
                    let done = partitions.to_commit();
                    commit_transaction(&producer, &consumer, &done)?;
                    partitions.committed(&done);
                } else {
                    commit_done(&consumer, &partitions, &run.name, CommitMode::Async);
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
                    if let Some(restore) = rebalanced(event).await {
                        restores.spawn(restore);
                    }
                }
                let partition = PartitionId { topic: message.topic().to_string(), partition: message.partition() };
                let Some(admitted) = partitions.admit(&partition, message.offset()) else { continue };
                counters.records_in.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::RECORDS_IN, "processor" => run.name.clone(), "topic" => partition.topic.clone()).increment(1);
                let permit = permits.clone().acquire_owned().await?;
                let task = RecordTask {
                    processor: processor.clone(),
                    name: run.name.clone(),
                    publisher: publisher.clone(),
                    partitions: partitions.clone(),
                    counters: counters.clone(),
                    fatal: fatal.clone(),
                    settings: settings.clone(),
                };
                tasks.spawn(async move {
                    task.run(message, admitted).await;
                    drop(permit);
                });
            }
        }
    };

    // Shutdown: stop restoring; finish or abandon in-flight work and the running tick (what
    // they had not published is rebuilt by the partitions' next owner); commit what is done.
    restores.abort_all();
    let deadline = settings.shutdown_deadline();
    let settle = async {
        while tasks.join_next().await.is_some() {}
        if let Some(tick) = ticking.as_mut() {
            let _ = tick.await;
        }
    };
    if tokio::time::timeout(deadline, settle).await.is_err() {
        tracing::warn!(processor = %run.name, "{} record(s) still in flight after {deadline:?}: abandoned, they are replayed after restart", tasks.len());
        crate::shutdown::abandon_in_flight();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if let Some(tick) = ticking.take() {
        tick.abort();
    }
    if stopped_by.is_none() {
        if exactly_once {
            let done = partitions.to_commit();
            commit_transaction(&producer, &consumer, &done)?;
        } else {
            commit_done(&consumer, &partitions, &run.name, CommitMode::Sync);
        }
    }
    processor.on_shutdown().await;
    group.closing.store(true, Ordering::SeqCst);
    consumer.unsubscribe();
    let _ = producer.flush(Duration::from_secs(10));
    let c = &counters;
    let summary = RunSummary {
        records_in: c.records_in.load(Ordering::Relaxed),
        records_done: c.records_done.load(Ordering::Relaxed),
        outputs: c.outputs.load(Ordering::Relaxed),
        dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
    };
    tracing::info!(processor = %run.name, ?summary, "stopped");
    match stopped_by {
        Some(error) => anyhow::bail!("stopped: {error}"),
        None => Ok(summary),
    }
}

fn commit_done(consumer: &StreamConsumer<RuntimeContext>, partitions: &Partitions, name: &str, mode: CommitMode) {
    let done = partitions.to_commit();
    if done.is_empty() {
        return;
    }
    let result = offsets_list(&done).and_then(|list| consumer.commit(&list, mode));
    match (result, mode) {
        (Ok(()), CommitMode::Sync) => partitions.committed(&done),
        (Ok(()), CommitMode::Async) => {} // the commit callback records it
        (Err(e), _) => tracing::warn!(processor = %name, "offset commit failed (retried at the next interval): {e}"),
    }
}

fn describe(partitions: impl Iterator<Item = PartitionId>) -> String {
    partitions.map(|p| format!("{}[{}]", p.topic, p.partition)).collect::<Vec<_>>().join(", ")
}

/// Runs the processor's hook for a rebalance; for an assignment, returns the restore to run
/// (on a task of its own), unless there is nothing to restore.
async fn on_rebalance<P: Processor>(
    processor: &Arc<P>,
    run: &ProcessorRun,
    publisher: &Publisher,
    partitions: &Arc<Partitions>,
    settings: &RuntimeSettings,
    event: RebalanceEvent,
) -> Option<impl Future<Output = anyhow::Result<()>> + Send + 'static> {
    let name = run.name.as_str();
    match event {
        RebalanceEvent::Revoked(revoked) => {
            tracing::info!(processor = %name, "partitions revoked: {}", describe(revoked.iter().cloned()));
            guarded(name, "on_revoked", processor.on_revoked(&revoked)).await;
            tracing::info!(processor = %name, "partitions held: {}", describe(partitions.held().into_iter()));
            None
        }
        RebalanceEvent::Assigned(assigned) => {
            tracing::info!(processor = %name, "partitions assigned: {}", describe(assigned.iter().map(|a| a.partition.clone())));
            guarded(name, "on_assigned", processor.on_assigned(&assigned)).await;
            tracing::info!(processor = %name, "partitions held: {}", describe(partitions.held().into_iter()));
            let look_back = if settings.dedup_window == 0 { 0 } else { settings.dedup_restore_records as i64 };
            let nothing_to_restore = !P::RESTORES_FROM_INPUT && P::RESTORES_FROM_OUTPUTS.is_empty() && look_back == 0;
            if assigned.is_empty() || nothing_to_restore {
                assigned.iter().for_each(|a| partitions.mark_ready(a));
                return None;
            }
            let (processor, run, publisher, partitions) =
                (processor.clone(), run.clone(), publisher.clone(), partitions.clone());
            Some(async move {
                // Stopped only when every partition it restores was revoked.
                let revoked: Vec<_> = assigned.iter().filter_map(|a| partitions.cancellation(&a.partition)).collect();
                let all_revoked = futures::future::join_all(revoked.iter().map(|c| c.cancelled()));
                tokio::select! {
                    _ = all_revoked => Ok(()),
                    restored = restore(&*processor, &run, &publisher, &partitions, &assigned, look_back) => {
                        let restored = restored?;
                        if !P::RESTORES_FROM_OUTPUTS.is_empty() {
                            tracing::info!(processor = %run.name, "learned {} record(s) already published", restored.outputs);
                        }
                        tracing::info!(
                            processor = %run.name, panicked = restored.panicked,
                            "state restored from {} input record(s): {}", restored.inputs, describe(assigned.iter().map(|a| a.partition.clone()))
                        );
                        assigned.iter().for_each(|a| partitions.mark_ready(a));
                        Ok(())
                    }
                }
            })
        }
    }
}

/// Runs a processor hook, logging a panic instead of passing it on.
async fn guarded(name: &str, hook: &str, future: impl Future<Output = ()>) {
    if let Err(panic) = AssertUnwindSafe(future).catch_unwind().await {
        tracing::error!(processor = %name, "{hook} panicked: {}", panic_message(&panic));
    }
}

/// Starts one run of the processor's `on_tick`, cancelled when partitions are revoked.
fn spawn_tick<P: Processor>(
    processor: Arc<P>,
    outputs: Arc<Outputs>,
    partitions: &Partitions,
    name: &str,
) -> JoinHandle<()> {
    let cancel = partitions.tick_cancellation();
    let name = name.to_string();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = guarded(&name, "on_tick", processor.on_tick(&outputs)) => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{Emit, PortSpec, ProcessError, RecordContext};
    use crate::reader::group_lag;
    use crate::testing::{question, TestCluster};
    use distillery_schemas::{Question, RecordKind};
    use std::sync::Mutex;
    use std::time::Instant;

    const TOPOLOGY: &str = r#"
experiment = "runner"
[topics.in]
schema = "question"
partitions = 1
[topics.out]
schema = "question"
partitions = 1
[processors.stage]
type = "passthrough"
inputs = ["in"]
outputs = { out = "out" }
runtime = { commit_interval_ms = 100, tick_interval_ms = 100, shutdown_deadline_ms = 2000 }
"#;

    /// Restores slowly and its tick never ends; logs what it does, in order.
    struct Slow(Arc<Mutex<Vec<String>>>);

    impl Slow {
        fn log(&self, event: String) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Processor for Slow {
        type Input = Question;
        const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "out", kind: RecordKind::Question }];
        const RESTORES_FROM_INPUT: bool = true;

        async fn process(&self, q: Question, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
            self.log(format!("process {}", q.id));
            Ok(vec![Emit::record("out", &q)?])
        }

        async fn restore(&self, q: Question, _ctx: &RecordContext) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.log(format!("restored {}", q.id));
        }

        async fn on_tick(&self, _outputs: &Outputs) {
            self.log("tick".into());
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    }

    fn lag(cluster: &TestCluster) -> i64 {
        group_lag(&cluster.connection(), &cluster.topology.group_id("stage"), &[cluster.topic("in")]).unwrap()
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `Slow` until the records are committed, then stops it; returns its events and
    /// how long the stop took.
    async fn run_until_committed(cluster: &TestCluster) -> (Vec<String>, Duration) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_processor(Slow(events.clone()), cluster.run("stage"), async {
            let _ = stopped.await;
        }));
        wait_for("the records processed and committed", || lag(cluster) == 0).await;
        let stopping = Instant::now();
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        let events = events.lock().unwrap().clone();
        (events, stopping.elapsed())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_partitions_records_wait_for_its_restore_and_a_hanging_tick_holds_up_nothing() {
        let cluster = TestCluster::start(TOPOLOGY).await;
        cluster.produce("in", 0, &[question("a", "p")]).await;
        let (events, stopping) = run_until_committed(&cluster).await;
        assert!(events.contains(&"process a".to_string()) && events.contains(&"tick".to_string()), "{events:?}");
        assert!(stopping < Duration::from_secs(5), "shutdown waited for the hanging tick: {stopping:?}");

        // The next run restores "a" (slowly) before it processes "b", which is already there;
        // no tick runs while it restores.
        cluster.produce("in", 0, &[question("b", "p")]).await;
        let (events, _) = run_until_committed(&cluster).await;
        let position =
            |event: &str| events.iter().position(|e| e == event).unwrap_or_else(|| panic!("{event}: {events:?}"));
        assert!(position("restored a") < position("process b"), "{events:?}");
        assert!(position("restored a") < position("tick"), "{events:?}");
        assert!(!events.contains(&"process a".to_string()), "a was committed: restored, not processed again");
    }
}
