//! A topic read in one total order from a position its consumer stores itself, instead of a
//! consumer group's committed offsets. The trainer needs this: its position is part of its
//! checkpoint (model, optimizer and the shards consumed change together), and a restart must
//! see exactly the shard sequence an uninterrupted run sees. Only a single-partition topic has
//! one order that every reader agrees on, so more partitions are refused.
//!
//! A saved position the topic no longer has (deleted by retention, or the topic was recreated
//! and is shorter) is refused with [`PositionGone`]: starting over from the earliest record
//! would silently train on a different sequence.

use crate::kafka::Connection;
use crate::reader::{is_transient, ReadRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The earliest record the topic still has (a reader with nothing saved).
    Beginning,
    /// A saved position: the offset of the next record to read.
    At(i64),
}

/// The saved position is not in the topic any more. Not retryable: resuming needs an operator
/// (restore the topic, or start a new run).
#[derive(Debug, thiserror::Error)]
#[error(
    "{topic}: the saved position (offset {offset}) is not in the topic any more (it holds offsets {low}..{high}); \
     the topic was recreated or its records were deleted by retention. Refusing to start over from another \
     position: restore the topic, or train a new run"
)]
pub struct PositionGone {
    pub topic: String,
    pub offset: i64,
    pub low: i64,
    pub high: i64,
}

pub struct OrderedReader {
    consumer: BaseConsumer,
    topic: String,
    /// The offset of the next record to read.
    next_offset: AtomicI64,
}

impl OrderedReader {
    /// Opens `topic` at `start`. Blocking.
    pub fn open(connection: &Connection, topic: &str, start: Start) -> anyhow::Result<OrderedReader> {
        let consumer: BaseConsumer = connection.positioned_reader()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        anyhow::ensure!(partitions > 0, "topic {topic} does not exist");
        anyhow::ensure!(
            partitions == 1,
            "topic {topic} has {partitions} partitions; an ordered reader needs exactly 1 so that every restart \
             sees the same record order (give the topic `partitions = 1` in the topology)"
        );
        let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
        let next_offset = match start {
            Start::Beginning => low,
            Start::At(offset) if offset < low || offset > high => {
                return Err(PositionGone { topic: topic.to_string(), offset, low, high }.into())
            }
            Start::At(offset) => offset,
        };
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Offset(next_offset))?;
        consumer.assign(&assignment)?;
        Ok(OrderedReader { consumer, topic: topic.to_string(), next_offset: AtomicI64::new(next_offset) })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next record, or `None` if none arrived within `timeout`. Blocking. An error is
    /// [`PositionGone`] when the position left the topic (retention) while reading.
    pub fn next(&self, timeout: Duration) -> anyhow::Result<Option<ReadRecord>> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(e)) if is_transient(&e) => {
                tracing::warn!("reading {}: {e} (retrying)", self.topic);
                Ok(None)
            }
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
                ) =>
            {
                let (low, high) =
                    self.consumer.fetch_watermarks(&self.topic, 0, Duration::from_secs(10)).unwrap_or((-1, -1));
                let offset = self.next_offset.load(Ordering::Relaxed);
                Err(PositionGone { topic: self.topic.clone(), offset, low, high }.into())
            }
            Some(Err(e)) => Err(anyhow::anyhow!("reading {}: {e}", self.topic)),
            Some(Ok(message)) => {
                let record = ReadRecord::from_message(&message);
                self.next_offset.store(record.offset + 1, Ordering::Relaxed);
                Ok(Some(record))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{question, TestCluster};

    const TOPOLOGY: &str = r#"
experiment = "ordered"
[topics.shards]
schema = "question"
partitions = 1
[topics.wide]
schema = "question"
partitions = 2
"#;

    fn offsets(reader: &OrderedReader) -> Vec<i64> {
        let mut seen = Vec::new();
        while let Some(record) = reader.next(Duration::from_secs(2)).unwrap() {
            seen.push(record.offset);
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reads_from_the_beginning_or_a_saved_position_and_refuses_one_the_topic_no_longer_has() {
        let cluster = TestCluster::start(TOPOLOGY).await;
        cluster.produce("shards", 0, &[question("a", "p"), question("b", "p"), question("c", "p")]).await;
        let (connection, topic) = (cluster.connection(), cluster.topic("shards"));
        tokio::task::spawn_blocking(move || {
            assert_eq!(offsets(&OrderedReader::open(&connection, &topic, Start::Beginning).unwrap()), [0, 1, 2]);
            assert_eq!(offsets(&OrderedReader::open(&connection, &topic, Start::At(1)).unwrap()), [1, 2]);
            assert!(offsets(&OrderedReader::open(&connection, &topic, Start::At(3)).unwrap()).is_empty(), "at the end");
            let gone = OrderedReader::open(&connection, &topic, Start::At(7)).err().expect("past the end");
            let gone = gone.downcast_ref::<PositionGone>().expect("a PositionGone");
            assert_eq!((gone.offset, gone.low, gone.high), (7, 0, 3));
            assert!(gone.to_string().contains("offset 7"), "{gone}");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_topic_with_several_partitions_or_none_is_refused() {
        let cluster = TestCluster::start(TOPOLOGY).await;
        let (connection, wide, missing) = (cluster.connection(), cluster.topic("wide"), cluster.topic("missing"));
        tokio::task::spawn_blocking(move || {
            let error = OrderedReader::open(&connection, &wide, Start::Beginning).err().unwrap().to_string();
            assert!(error.contains("has 2 partitions"), "{error}");
            let error = OrderedReader::open(&connection, &missing, Start::Beginning).err().unwrap().to_string();
            assert!(error.contains("does not exist"), "{error}");
        })
        .await
        .unwrap();
    }
}
