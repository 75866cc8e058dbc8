//! The baseline half of `distillery bench runtime`: the same broker's raw produce + consume
//! rate through plain rdkafka clients, with the same producer settings as the runtime.

use crate::kafka::Connection;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

pub struct RawRoundTrip {
    pub produce: Duration,
    pub consume: Duration,
    pub records: usize,
}

/// Produces every payload to `topic` and waits for all acks (timed), then reads them all
/// back with an assigned (group-less) consumer (timed).
pub async fn raw_round_trip(connection: &Connection, topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<RawRoundTrip> {
    let started = Instant::now();
    produce_all(connection, topic, payloads).await?;
    let produce = started.elapsed();

    let connection = connection.clone();
    let topic = topic.to_string();
    let expected = payloads.len();
    let consume = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let consumer: BaseConsumer = connection.reader()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut list = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
            }
        }
        let started = Instant::now();
        consumer.assign(&list)?;
        let mut seen = 0;
        let mut bytes = 0usize;
        while seen < expected {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                bytes += message?.payload().map_or(0, |p| p.len());
                seen += 1;
            }
            if started.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("raw consumer read only {seen} of {expected} records");
            }
        }
        std::hint::black_box(bytes);
        Ok(started.elapsed())
    })
    .await??;
    Ok(RawRoundTrip { produce, consume, records: payloads.len() })
}

/// Produces every payload (keyed `k{index}`) and waits for all acks.
pub async fn produce_all(connection: &Connection, topic: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let producer = connection.producer(None)?;
    let sends = payloads.iter().enumerate().map(|(i, payload)| {
        let key = format!("k{i}");
        let producer = &producer;
        async move {
            producer
                .send(FutureRecord::to(topic).key(&key).payload(payload), Timeout::Never)
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
        }
    });
    for result in futures::future::join_all(sends).await {
        result?;
    }
    Ok(())
}
