//! Rebuilding a replica's state for newly assigned partitions, on a task of its own while the
//! loop goes on (their records wait for it):
//! 1. the processor's restored output ports (`RESTORES_FROM_OUTPUTS`) are read and handed to
//!    `Processor::restore_output`: a whole topic, or the partitions co-partitioned with the
//!    assigned ones;
//! 2. each assigned partition's records below the group's committed offset are read again:
//!    from the start for processors that rebuild state from their input
//!    (`RESTORES_FROM_INPUT`, each handed to `Processor::restore`), else the last
//!    `dedup_restore_records`. Either way their ids seed the partition's window of recent ids,
//!    so a replay that arrives after a rebalance costs no second call.
//!
//! A record whose restore panics is dead-lettered (as its processing would be) and the
//! restore goes on: a poison record must not crash-loop every replica it moves to.

use crate::kafka::Connection;
use crate::offsets::PartitionId;
use crate::partitions::Partitions;
use crate::processor::{Assignment, OutputScope, Processor, RecordContext};
use crate::publisher::{FailedInput, Publisher, HEADER_ID};
use crate::reader::{is_transient, read_partitions, read_to_end, ReadRecord};
use crate::record::panic_message;
use crate::runner::ProcessorRun;
use distillery_schemas::{decode, ErrorClass, Record};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tokio::sync::mpsc;

/// A record read back for restoring.
struct Replayed {
    assignment: Assignment,
    offset: i64,
    key: Option<String>,
    id: Option<String>,
    payload: Vec<u8>,
}

/// What a restore read.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub outputs: u64,
    pub inputs: u64,
    pub panicked: u64,
}

/// Restores `assigned` (see the module doc).
pub(crate) async fn restore<P: Processor>(
    processor: &P,
    run: &ProcessorRun,
    publisher: &Publisher,
    partitions: &Partitions,
    assigned: &[Assignment],
    look_back: i64,
) -> anyhow::Result<Restored> {
    let mut restored = Restored { outputs: restore_outputs(processor, run, assigned).await?, ..Restored::default() };
    let (tx, mut rx) = mpsc::channel::<Replayed>(1024);
    let group = run.topology.group_id(&run.name);
    let from_start = P::RESTORES_FROM_INPUT;
    let (connection, owned) = (run.connection.clone(), assigned.to_vec());
    let reading = tokio::task::spawn_blocking(move || {
        read_committed_history(&connection, &group, &owned, from_start, look_back, &tx)
    });
    while let Some(record) = rx.recv().await {
        let decoded =
            if record.id.is_none() || P::RESTORES_FROM_INPUT { decode::<P::Input>(&record.payload).ok() } else { None };
        // Undecodable records were dead-lettered when first seen; they hold no state.
        let Some(id) = record.id.clone().or_else(|| decoded.as_ref().map(|input| input.id().to_string())) else {
            continue;
        };
        partitions.first_time(&record.assignment.partition, &id);
        restored.inputs += 1;
        let Some(input) = decoded.filter(|_| P::RESTORES_FROM_INPUT) else { continue };
        let ctx = RecordContext {
            processor: run.name.clone(),
            topic: record.assignment.partition.topic.clone(),
            partition: record.assignment.partition.partition,
            offset: record.offset,
            key: record.key.clone(),
            generation: record.assignment.generation,
        };
        if let Err(panic) = AssertUnwindSafe(processor.restore(input, &ctx)).catch_unwind().await {
            restored.panicked += 1;
            let reason = format!("processor panicked while restoring: {}", panic_message(&panic));
            tracing::error!(processor = %run.name, partition = ctx.partition, offset = ctx.offset, "{reason}");
            let failed = FailedInput {
                source_topic: &ctx.topic,
                partition: ctx.partition,
                offset: ctx.offset,
                key: ctx.key.as_deref(),
                original: &record.payload,
            };
            let owner = [record.assignment.clone()];
            publisher.dead_letter_held(failed, ErrorClass::Internal, &reason, || partitions.holds(&owner)).await?;
        }
    }
    reading.await??;
    Ok(restored)
}

/// Hands the records already on the processor's restored output ports to
/// `Processor::restore_output`; returns how many.
async fn restore_outputs<P: Processor>(
    processor: &P,
    run: &ProcessorRun,
    assigned: &[Assignment],
) -> anyhow::Result<u64> {
    let instance = run.topology.processor(&run.name).map_err(anyhow::Error::msg)?;
    let mut restored = 0;
    for output in P::RESTORES_FROM_OUTPUTS {
        let port = output.port;
        let short = instance.outputs.get(port).ok_or_else(|| anyhow::anyhow!("output port '{port}' is not mapped"))?;
        let (connection, topic) = (run.connection.clone(), run.topology.topic_name(short));
        match output.scope {
            OutputScope::WholeTopic => {
                let records =
                    tokio::task::spawn_blocking(move || read_to_end(&connection, &topic, Duration::from_secs(600)))
                        .await??;
                for record in records {
                    processor.restore_output(port, None, &record.payload).await;
                    restored += 1;
                }
            }
            OutputScope::AssignedPartitions => {
                let owners: HashMap<i32, Assignment> =
                    assigned.iter().map(|a| (a.partition.partition, a.clone())).collect();
                let numbers: Vec<i32> = owners.keys().copied().collect();
                let inputs: Vec<PartitionId> = assigned.iter().map(|a| a.partition.clone()).collect();
                let records: Vec<ReadRecord> = tokio::task::spawn_blocking(move || {
                    check_co_partitioned(&connection, &topic, &inputs)?;
                    read_partitions(&connection, &topic, &numbers, Duration::from_secs(600))
                })
                .await??;
                for record in records {
                    processor.restore_output(port, owners.get(&record.partition), &record.payload).await;
                    restored += 1;
                }
            }
        }
    }
    Ok(restored)
}

/// An output read by partition number must have as many partitions as each input topic.
fn check_co_partitioned(connection: &Connection, output: &str, inputs: &[PartitionId]) -> anyhow::Result<()> {
    let reader: BaseConsumer = connection.reader()?;
    let count = |topic: &str| -> anyhow::Result<usize> {
        let metadata = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        Ok(metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len()))
    };
    let output_partitions = count(output)?;
    for input in inputs {
        let input_partitions = count(&input.topic)?;
        anyhow::ensure!(
            input_partitions == output_partitions,
            "{output} has {output_partitions} partitions and {} has {input_partitions}: a processor that restores \
             from its outputs by partition needs them co-partitioned (the same count)",
            input.topic
        );
    }
    Ok(())
}

fn read_committed_history(
    connection: &Connection,
    group: &str,
    assigned: &[Assignment],
    from_start: bool,
    look_back: i64,
    tx: &mpsc::Sender<Replayed>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(30);
    let mut wanted = TopicPartitionList::new();
    for a in assigned {
        wanted.add_partition(&a.partition.topic, a.partition.partition);
    }
    let committed = connection.group_reader(group)?.committed_offsets(wanted, timeout)?;
    for element in committed.elements() {
        let Offset::Offset(end) = element.offset() else { continue }; // nothing committed yet
        let start = if from_start { 0 } else { end - look_back };
        if end <= 0 || start >= end {
            continue;
        }
        let Some(assignment) = assigned
            .iter()
            .find(|a| a.partition.topic == element.topic() && a.partition.partition == element.partition())
        else {
            continue;
        };
        let reader: BaseConsumer = connection.reader()?;
        let (low, _) = reader.fetch_watermarks(element.topic(), element.partition(), timeout)?;
        let first = start.max(low);
        if first >= end {
            continue; // what was committed is gone (retention)
        }
        let mut assignment_list = TopicPartitionList::new();
        assignment_list.add_partition_offset(element.topic(), element.partition(), Offset::Offset(first))?;
        reader.assign(&assignment_list)?;
        loop {
            let message = match reader.poll(timeout) {
                None => anyhow::bail!(
                    "restoring {}[{}]: no record within {timeout:?}",
                    element.topic(),
                    element.partition()
                ),
                Some(Err(e)) if is_transient(&e) => continue,
                Some(message) => message?,
            };
            if message.offset() >= end {
                break;
            }
            let id = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == HEADER_ID)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            let record = Replayed {
                assignment: assignment.clone(),
                offset: message.offset(),
                key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                id,
                payload: message.payload().unwrap_or_default().to_vec(),
            };
            if tx.blocking_send(record).is_err() {
                return Ok(());
            }
            if message.offset() + 1 >= end {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{Emit, PortSpec, ProcessError, RestoredOutput};
    use crate::reader::read_to_end;
    use crate::testing::{question, TestCluster};
    use distillery_schemas::{DeadLetter, Question, RecordKind};
    use rdkafka::consumer::CommitMode;
    use std::sync::Mutex;

    const TOPOLOGY: &str = r#"
experiment = "restore"
[topics.in]
schema = "question"
partitions = 2
[topics.out]
schema = "question"
partitions = 2
[processors.stage]
type = "passthrough"
inputs = ["in"]
outputs = { out = "out" }
"#;

    /// Records what it is asked to restore; restoring a "poison" question panics.
    #[derive(Default)]
    struct Recorder<const FROM_INPUT: bool> {
        restored: Mutex<Vec<(i32, i64, u64)>>,
        outputs: Mutex<Vec<(Option<Assignment>, String)>>,
    }

    impl<const FROM_INPUT: bool> Processor for Recorder<FROM_INPUT> {
        type Input = Question;
        const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "out", kind: RecordKind::Question }];
        const RESTORES_FROM_INPUT: bool = FROM_INPUT;
        const RESTORES_FROM_OUTPUTS: &'static [RestoredOutput] =
            &[RestoredOutput { port: "out", scope: OutputScope::AssignedPartitions }];

        async fn process(&self, _q: Question, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
            Ok(Vec::new())
        }

        async fn restore(&self, q: Question, ctx: &RecordContext) {
            assert!(q.problem != "poison", "poisoned");
            self.restored.lock().unwrap().push((ctx.partition, ctx.offset, ctx.generation));
        }

        async fn restore_output(&self, _port: &str, owner: Option<&Assignment>, payload: &[u8]) {
            let id = decode::<Question>(payload).unwrap().id;
            self.outputs.lock().unwrap().push((owner.cloned(), id));
        }
    }

    /// Partition 0 of `in`: a, poison, b (committed), c (not); partition 1: x (committed).
    /// `out` holds one record per partition.
    async fn cluster() -> TestCluster {
        let cluster = TestCluster::start(TOPOLOGY).await;
        let inputs = ["a", "poison", "b", "c"].map(|id| question(id, if id == "poison" { "poison" } else { "p" }));
        cluster.produce("in", 0, &inputs).await;
        cluster.produce("in", 1, &[question("x", "p")]).await;
        cluster.produce("out", 0, &[question("out-0", "p")]).await;
        cluster.produce("out", 1, &[question("out-1", "p")]).await;
        let mut committed = TopicPartitionList::new();
        committed.add_partition_offset(&cluster.topic("in"), 0, Offset::Offset(3)).unwrap();
        committed.add_partition_offset(&cluster.topic("in"), 1, Offset::Offset(1)).unwrap();
        let group = cluster.connection().group_reader(&cluster.topology.group_id("stage")).unwrap();
        group.commit(&committed, CommitMode::Sync).unwrap();
        cluster
    }

    fn publisher(cluster: &TestCluster) -> Publisher {
        let ports = HashMap::from([("out".to_string(), cluster.topic("out"))]);
        let producer = cluster.connection().producer(None).unwrap();
        Publisher::new(producer, "stage", "t", Recorder::<true>::OUTPUTS, &ports, cluster.topic("dead-letters"))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_assigned_partition_is_rebuilt_from_its_committed_records_and_its_own_outputs() {
        let cluster = cluster().await;
        let partitions = Partitions::new(100);
        let assigned = partitions.assign(&[PartitionId { topic: cluster.topic("in"), partition: 0 }]);
        let recorder = Recorder::<true>::default();
        let restored = restore(&recorder, &cluster.run("stage"), &publisher(&cluster), &partitions, &assigned, 1000)
            .await
            .unwrap();
        assert_eq!((restored.outputs, restored.inputs, restored.panicked), (1, 3, 1));
        let generation = assigned[0].generation;
        assert_eq!(*recorder.restored.lock().unwrap(), [(0, 0, generation), (0, 2, generation)], "below the commit");
        assert_eq!(
            *recorder.outputs.lock().unwrap(),
            [(Some(assigned[0].clone()), "out-0".to_string())],
            "only the co-partitioned output partition"
        );
        // The poison record is dead-lettered; the window knows the restored ids.
        let letters =
            read_to_end(&cluster.connection(), &cluster.topic("dead-letters"), Duration::from_secs(30)).unwrap();
        let letter: DeadLetter = decode(&letters[0].payload).unwrap();
        assert_eq!((letter.error.as_str(), letter.source_offset), ("processor panicked while restoring: poisoned", 1));
        let p0 = &assigned[0].partition;
        assert!(!partitions.first_time(p0, "b") && !partitions.first_time(p0, "a"));
        assert!(partitions.first_time(p0, "c"), "c was not committed: it is processed, not seeded");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stateless_processor_seeds_its_window_from_the_last_committed_records_only() {
        let cluster = cluster().await;
        let partitions = Partitions::new(100);
        let assigned = partitions.assign(&[PartitionId { topic: cluster.topic("in"), partition: 0 }]);
        let recorder = Recorder::<false>::default();
        let restored =
            restore(&recorder, &cluster.run("stage"), &publisher(&cluster), &partitions, &assigned, 2).await.unwrap();
        assert_eq!((restored.inputs, restored.panicked), (2, 0), "offsets 1 and 2; nothing restored into state");
        assert!(recorder.restored.lock().unwrap().is_empty());
        let p0 = &assigned[0].partition;
        assert!(!partitions.first_time(p0, "b") && !partitions.first_time(p0, "poison"));
        assert!(partitions.first_time(p0, "a"), "older than the look-back");
    }
}
