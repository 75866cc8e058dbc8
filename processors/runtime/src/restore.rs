//! Rebuilding a processor's state after a restart or a rebalance: for processors with
//! `RESTORES_FROM_INPUT`, every record of a newly assigned partition below the group's
//! committed offset is read again (from the partition's start) and handed to
//! `Processor::restore` before new records are processed; `RESTORES_FROM_OUTPUTS` names output
//! ports whose whole topics are read first and handed to `Processor::restore_output`.

use crate::kafka::Connection;
use crate::offsets::PartitionId;
use crate::processor::{Processor, RecordContext};
use crate::reader::{is_transient, read_to_end};
use crate::runner::ProcessorRun;
use distillery_schemas::decode;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;
use tokio::sync::mpsc;

/// A record read back for restoring.
struct Replayed {
    partition: PartitionId,
    offset: i64,
    key: Option<String>,
    payload: Vec<u8>,
}

/// Restores `partitions`; returns how many records were replayed.
pub async fn restore_partitions<P: Processor>(
    processor: &P,
    name: &str,
    connection: &Connection,
    group: &str,
    partitions: &[PartitionId],
) -> anyhow::Result<u64> {
    let (tx, mut rx) = mpsc::channel::<Replayed>(1024);
    let (connection, group, partitions) = (connection.clone(), group.to_string(), partitions.to_vec());
    let reading = tokio::task::spawn_blocking(move || read_committed_history(&connection, &group, &partitions, &tx));
    let mut restored = 0;
    while let Some(record) = rx.recv().await {
        // Undecodable records were dead-lettered when first seen; they hold no state.
        let Ok(input) = decode::<P::Input>(&record.payload) else { continue };
        let ctx = RecordContext {
            processor: name.to_string(),
            topic: record.partition.topic.clone(),
            partition: record.partition.partition,
            offset: record.offset,
            key: record.key,
        };
        processor.restore(input, &ctx).await;
        restored += 1;
    }
    reading.await??;
    Ok(restored)
}

/// Hands every record already on the processor's restored output ports to
/// `Processor::restore_output`; returns how many.
pub async fn restore_outputs<P: Processor>(processor: &P, run: &ProcessorRun) -> anyhow::Result<u64> {
    let instance = run.topology.processor(&run.name).map_err(anyhow::Error::msg)?;
    let mut restored = 0;
    for port in P::RESTORES_FROM_OUTPUTS {
        let short = instance.outputs.get(*port).ok_or_else(|| anyhow::anyhow!("output port '{port}' is not mapped"))?;
        let (connection, topic) = (run.connection.clone(), run.topology.topic_name(short));
        let records =
            tokio::task::spawn_blocking(move || read_to_end(&connection, &topic, Duration::from_secs(600))).await??;
        for record in records {
            processor.restore_output(port, &record.payload).await;
            restored += 1;
        }
    }
    Ok(restored)
}

fn read_committed_history(
    connection: &Connection,
    group: &str,
    partitions: &[PartitionId],
    tx: &mpsc::Sender<Replayed>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(30);
    let mut wanted = TopicPartitionList::new();
    for p in partitions {
        wanted.add_partition(&p.topic, p.partition);
    }
    let committed = connection.group_reader(group)?.committed_offsets(wanted, timeout)?;
    for element in committed.elements() {
        let Offset::Offset(end) = element.offset() else { continue }; // nothing committed yet
        if end <= 0 {
            continue;
        }
        let partition = PartitionId { topic: element.topic().to_string(), partition: element.partition() };
        let reader: BaseConsumer = connection.reader()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&partition.topic, partition.partition, Offset::Beginning)?;
        reader.assign(&assignment)?;
        loop {
            let message = match reader.poll(timeout) {
                None => {
                    anyhow::bail!(
                        "restoring {}[{}]: no record within {timeout:?}",
                        partition.topic,
                        partition.partition
                    )
                }
                Some(Err(e)) if is_transient(&e) => continue,
                Some(message) => message?,
            };
            if message.offset() >= end {
                break;
            }
            let record = Replayed {
                partition: partition.clone(),
                offset: message.offset(),
                key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
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
