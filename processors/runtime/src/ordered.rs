//! A topic read in one total order from a position its consumer stores itself, instead of a
//! consumer group's committed offsets. The trainer needs this: its position is part of its
//! checkpoint (model, optimizer and the shards consumed change together), and a restart must
//! see exactly the shard sequence an uninterrupted run sees. Only a single-partition topic has
//! one order that every reader agrees on, so more partitions are refused.

use crate::kafka::Connection;
use crate::reader::{is_transient, ReadRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

pub struct OrderedReader {
    consumer: BaseConsumer,
    topic: String,
}

impl OrderedReader {
    /// Opens `topic` at `next_offset` (0 for the beginning). Blocking.
    pub fn open(connection: &Connection, topic: &str, next_offset: i64) -> anyhow::Result<OrderedReader> {
        let consumer: BaseConsumer = connection.reader()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        anyhow::ensure!(partitions > 0, "topic {topic} does not exist");
        anyhow::ensure!(
            partitions == 1,
            "topic {topic} has {partitions} partitions; an ordered reader needs exactly 1 so that every restart \
             sees the same record order (give the topic `partitions = 1` in the topology)"
        );
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Offset(next_offset))?;
        consumer.assign(&assignment)?;
        Ok(OrderedReader { consumer, topic: topic.to_string() })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next record, or `None` if none arrived within `timeout`. Blocking.
    pub fn next(&self, timeout: Duration) -> anyhow::Result<Option<ReadRecord>> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(e)) if is_transient(&e) => {
                tracing::warn!("reading {}: {e} (retrying)", self.topic);
                Ok(None)
            }
            Some(Err(e)) => Err(anyhow::anyhow!("reading {}: {e}", self.topic)),
            Some(Ok(message)) => Ok(Some(ReadRecord::from_message(&message))),
        }
    }
}
