//! Reading a whole topic from the beginning to its current end, without a consumer group:
//! for tools (`distillery tail`), tests, benchmarks and the feeder's check for ids it already
//! published. Blocking; call it from `spawn_blocking` in async code.

use crate::kafka::Connection;
use crate::publisher::HEADER_ID;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    pub fn from_message<M: Message>(message: &M) -> ReadRecord {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        ReadRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The record's deterministic id (header), falling back to its key.
    pub fn id(&self) -> Option<&str> {
        self.header(HEADER_ID).or(self.key.as_deref())
    }
}

/// Every record of `topic` up to the end it had when the call started.
/// Errors a consumer reports while it reconnects (the broker restarting, a dropped
/// connection): librdkafka retries by itself, so readers keep polling instead of failing.
pub fn is_transient(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::AllBrokersDown
                | Code::BrokerTransportFailure
                | Code::Resolve
                | Code::OperationTimedOut
                | Code::RequestTimedOut
                | Code::NetworkException
                | Code::BrokerNotAvailable
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition
                | Code::NotCoordinator
                | Code::CoordinatorNotAvailable
        )
    )
}

pub fn read_to_end(connection: &Connection, topic: &str, timeout: Duration) -> anyhow::Result<Vec<ReadRecord>> {
    read_partitions_of(connection, topic, None, timeout)
}

/// Every record of the given partitions of `topic` up to the end they had when the call
/// started.
pub fn read_partitions(
    connection: &Connection,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> anyhow::Result<Vec<ReadRecord>> {
    read_partitions_of(connection, topic, Some(partitions), timeout)
}

fn read_partitions_of(
    connection: &Connection,
    topic: &str,
    only: Option<&[i32]>,
    timeout: Duration,
) -> anyhow::Result<Vec<ReadRecord>> {
    let consumer: BaseConsumer = connection.reader()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    // Read each partition from its low watermark to the high watermark seen now.
    let mut end = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in partitions.iter().filter(|p| only.is_none_or(|only| only.contains(p))) {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            end.insert(p, high);
            assignment.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    let mut records = Vec::new();
    if end.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    while !end.is_empty() {
        if started.elapsed() > timeout {
            anyhow::bail!("reading {topic} did not reach the end within {timeout:?} ({} partition(s) left)", end.len());
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(e)) if is_transient(&e) => continue,
            Some(result) => result?,
        };
        let partition = message.partition();
        let Some(&high) = end.get(&partition) else { continue };
        if message.offset() < high {
            records.push(ReadRecord::from_message(&message));
        }
        if message.offset() + 1 >= high {
            end.remove(&partition);
        }
    }
    Ok(records)
}

/// Sum over partitions of the high watermark: how many records a topic has received (for
/// topics that are never truncated).
pub fn end_offset_total(connection: &Connection, topic: &str) -> anyhow::Result<i64> {
    EndOffsets::new(connection)?.total(topic)
}

/// [`end_offset_total`] over one client kept for many calls (a driver that polls progress
/// several times a second); it reconnects by itself after a broker restart.
pub struct EndOffsets {
    consumer: BaseConsumer,
}

impl EndOffsets {
    pub fn new(connection: &Connection) -> anyhow::Result<EndOffsets> {
        Ok(EndOffsets { consumer: connection.reader()? })
    }

    /// Sum over partitions of the high watermark of `topic`.
    pub fn total(&self, topic: &str) -> anyhow::Result<i64> {
        end_offsets(&self.consumer, topic).map(|ends| ends.values().sum())
    }
}

fn end_offsets(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow::anyhow!("topic {topic} does not exist"))?;
    let mut ends = HashMap::new();
    for p in t.partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        ends.insert(p.id(), high);
    }
    Ok(ends)
}

/// Records of `topics` that consumer group `group` has not committed yet (0 = caught up).
pub fn group_lag(connection: &Connection, group: &str, topics: &[String]) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = connection.group_reader(group)?;
    let mut lag = 0;
    for topic in topics {
        let ends = end_offsets(&consumer, topic)?;
        let mut list = TopicPartitionList::new();
        for p in ends.keys() {
            list.add_partition(topic, *p);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
        for e in committed.elements() {
            let end = ends.get(&e.partition()).copied().unwrap_or(0);
            let done = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            lag += (end - done).max(0);
        }
    }
    Ok(lag)
}
