//! The baseline half of `distillery bench runtime`: the same broker's raw rates through plain
//! rdkafka clients with the same producer settings as the runtime: produce-then-consume, and
//! a minimal copy loop (consume, re-produce, await acks; no decoding, no commits).

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
pub async fn raw_round_trip(
    connection: &Connection,
    topic: &str,
    payloads: &[Vec<u8>],
) -> anyhow::Result<RawRoundTrip> {
    let producer = connection.producer(None)?;
    // Not timed: the idempotent producer's start-up (broker connection, producer id).
    producer
        .send(FutureRecord::<str, [u8]>::to(topic).payload(&payloads[0][..]), Timeout::Never)
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    send_all(&producer, topic, payloads).await?;
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
        let expected = expected + 1; // the warm-up record
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
    send_all(&connection.producer(None)?, topic, payloads).await
}

/// Produces (key, payload) pairs and waits for all acks: load with real partition keys.
pub async fn produce_keyed(connection: &Connection, topic: &str, records: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let producer = connection.producer(None)?;
    let sends = records.iter().map(|(key, payload)| {
        let producer = &producer;
        async move {
            producer
                .send(FutureRecord::to(topic).key(key.as_str()).payload(payload), Timeout::Never)
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
        }
    });
    for result in futures::future::join_all(sends).await {
        result?;
    }
    Ok(())
}

async fn send_all(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    payloads: &[Vec<u8>],
) -> anyhow::Result<()> {
    let sends = payloads.iter().enumerate().map(|(i, payload)| {
        let key = format!("k{i}");
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

/// The least a copy processor must do: read `warmup + timed` records of `from` (assigned, no
/// group) and produce each to `to`, 256 in flight; timed from the `warmup`-th ack to the last,
/// so client start-up is not counted (as in the runtime's measurement).
pub async fn raw_copy(
    connection: &Connection,
    from: &str,
    to: &str,
    warmup: usize,
    timed: usize,
) -> anyhow::Result<Duration> {
    let expected = warmup + timed;
    use futures::stream::{FuturesUnordered, StreamExt};
    let consumer = connection.stream_reader()?;
    let producer = connection.producer(None)?;
    let metadata = consumer.fetch_metadata(Some(from), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition_offset(from, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&list)?;
    let mut pending = FuturesUnordered::new();
    let (mut received, mut acked) = (0, 0);
    let mut started = None;
    while acked < expected {
        tokio::select! {
            message = consumer.recv(), if received < expected && pending.len() < 256 => {
                let message = message?.detach();
                received += 1;
                let producer = producer.clone();
                let to = to.to_string();
                pending.push(async move {
                    let mut record = FutureRecord::<[u8], [u8]>::to(&to);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    if let Some(payload) = message.payload() {
                        record = record.payload(payload);
                    }
                    producer.send(record, Timeout::Never).await.map(|_| ()).map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))
                });
            }
            Some(result) = pending.next() => {
                result?;
                acked += 1;
                if acked == warmup {
                    started = Some(Instant::now());
                }
            }
        }
    }
    Ok(started.map(|t| t.elapsed()).unwrap_or_default())
}
