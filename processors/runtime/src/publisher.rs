//! Producing: outputs to their topics and failures to the dead-letter topic, each with
//! headers that name the record and where it came from. `publish` returns only after the
//! broker acknowledged every record, which is what lets the runner commit the input.
//! `publish_held` hands the records to the producer only while its caller still holds the
//! partitions they depend on (see `partitions`): the fence that keeps a replica that lost a
//! partition from publishing for it.

use crate::processor::{Emit, PortSpec};
use crate::telemetry;
use distillery_schemas::{encode, now_ms, stable_id, DeadLetter, ErrorClass, RecordKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::time::Duration;

/// Header with the record's deterministic id: consumers drop replays by it.
pub const HEADER_ID: &str = "distillery-id";
/// Header with the record kind (schema name).
pub const HEADER_KIND: &str = "distillery-kind";
/// Header naming the processor instance and replica that produced the record.
pub const HEADER_PRODUCER: &str = "distillery-producer";
pub const HEADER_ERROR: &str = "distillery-error";
pub const HEADER_ERROR_CLASS: &str = "distillery-error-class";
pub const HEADER_SOURCE_TOPIC: &str = "distillery-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "distillery-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "distillery-source-offset";

/// Where a failed input came from.
#[derive(Debug, Clone)]
pub struct FailedInput<'a> {
    pub source_topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a str>,
    pub original: &'a [u8],
}

/// The deterministic id of the dead letter for a failed input: a replayed failure gets the
/// same id.
pub fn dead_letter_id(processor: &str, failed: &FailedInput<'_>) -> String {
    stable_id(&[processor, failed.source_topic, &failed.partition.to_string(), &failed.offset.to_string()])
}

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    processor: String,
    producer_label: String,
    /// Port name -> (broker topic, record kind).
    ports: HashMap<&'static str, (String, RecordKind)>,
    dead_letter_topic: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("processor emitted on port '{0}', which it does not declare")]
    UnknownPort(String),
    #[error("processor emitted {emitted} on port '{port}', which carries {declared}")]
    WrongKind { port: String, emitted: RecordKind, declared: RecordKind },
    #[error("the broker refused a record for {topic}: {error}")]
    Delivery { topic: String, error: String },
    #[error("cannot encode a dead letter: {0}")]
    Encode(String),
    /// A partition the records depend on is no longer held by this replica (or is held under
    /// a newer assignment): its next owner produces them instead.
    #[error("not published: a partition it depends on was revoked")]
    NotOwner,
}

/// A record ready to be handed to the producer.
struct Outgoing<'a> {
    topic: &'a str,
    key: &'a str,
    payload: &'a [u8],
    headers: OwnedHeaders,
}

impl Publisher {
    /// `ports` maps each declared output port to its broker topic.
    pub fn new(
        producer: FutureProducer,
        processor: &str,
        replica: &str,
        outputs: &[PortSpec],
        port_topics: &HashMap<String, String>,
        dead_letter_topic: String,
    ) -> Result<Publisher, String> {
        let mut ports = HashMap::new();
        for port in outputs {
            let topic = port_topics.get(port.name).ok_or_else(|| {
                format!("processor '{processor}': output port '{}' is not mapped to a topic", port.name)
            })?;
            ports.insert(port.name, (topic.clone(), port.kind));
        }
        Ok(Publisher {
            producer,
            processor: processor.to_string(),
            producer_label: format!("{processor}/{replica}"),
            ports,
            dead_letter_topic,
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    pub fn processor(&self) -> &str {
        &self.processor
    }

    /// The broker topic of an output port.
    pub fn topic_of(&self, port: &str) -> Option<&str> {
        self.ports.get(port).map(|(topic, _)| topic.as_str())
    }

    /// Produces every output and waits until the broker acknowledged all of them.
    pub async fn publish(&self, emits: &[Emit]) -> Result<(), PublishError> {
        self.publish_held(emits, || Some(())).await
    }

    /// [`Publisher::publish`], handing the records to the producer only while `hold` returns
    /// a guard (kept while they are handed over): with the partitions' lock as the guard, no
    /// record is produced for a partition after its revocation took that lock.
    pub async fn publish_held<G>(&self, emits: &[Emit], hold: impl FnMut() -> Option<G>) -> Result<(), PublishError> {
        let mut outgoing = Vec::with_capacity(emits.len());
        for emit in emits {
            let (topic, kind) =
                self.ports.get(emit.port).ok_or_else(|| PublishError::UnknownPort(emit.port.to_string()))?;
            if *kind != emit.kind {
                return Err(PublishError::WrongKind {
                    port: emit.port.to_string(),
                    emitted: emit.kind,
                    declared: *kind,
                });
            }
            let headers = OwnedHeaders::new()
                .insert(Header { key: HEADER_ID, value: Some(emit.id.as_str()) })
                .insert(Header { key: HEADER_KIND, value: Some(emit.kind.name()) })
                .insert(Header { key: HEADER_PRODUCER, value: Some(self.producer_label.as_str()) });
            outgoing.push(Outgoing { topic, key: &emit.key, payload: &emit.payload, headers });
        }
        for topic in self.send_held(outgoing, hold).await? {
            metrics::counter!(telemetry::RECORDS_OUT, "processor" => self.processor.clone(), "topic" => topic)
                .increment(1);
        }
        Ok(())
    }

    /// Hands every record to the producer (under `hold`), then waits for all the acks;
    /// returns their topics.
    async fn send_held<G>(
        &self,
        outgoing: Vec<Outgoing<'_>>,
        mut hold: impl FnMut() -> Option<G>,
    ) -> Result<Vec<String>, PublishError> {
        let mut deliveries: Vec<(String, DeliveryFuture)> = Vec::with_capacity(outgoing.len());
        let mut waiting = outgoing.into_iter().peekable();
        while waiting.peek().is_some() {
            {
                let _held = hold().ok_or(PublishError::NotOwner)?;
                while let Some(next) = waiting.peek_mut() {
                    let record = FutureRecord::to(next.topic)
                        .key(next.key)
                        .payload(next.payload)
                        .headers(std::mem::replace(&mut next.headers, OwnedHeaders::new()));
                    match self.producer.send_result(record) {
                        Ok(delivery) => {
                            deliveries.push((next.topic.to_string(), delivery));
                            waiting.next();
                        }
                        // The producer's queue is full: wait for room outside the guard.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                            next.headers = record.headers.unwrap_or_else(OwnedHeaders::new);
                            break;
                        }
                        Err((error, _)) => {
                            return Err(PublishError::Delivery {
                                topic: next.topic.to_string(),
                                error: error.to_string(),
                            })
                        }
                    }
                }
            }
            if waiting.peek().is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut topics = Vec::with_capacity(deliveries.len());
        for (topic, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => topics.push(topic),
                Ok(Err((error, _))) => return Err(PublishError::Delivery { topic, error: error.to_string() }),
                Err(_) => return Err(PublishError::Delivery { topic, error: "the producer went away".into() }),
            }
        }
        Ok(topics)
    }

    /// Sends a failed input to the dead-letter topic with the reason, and waits for the ack.
    pub async fn dead_letter(
        &self,
        failed: FailedInput<'_>,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), PublishError> {
        self.dead_letter_held(failed, class, error, || Some(())).await
    }

    /// [`Publisher::dead_letter`] under `hold`, as in [`Publisher::publish_held`].
    pub async fn dead_letter_held<G>(
        &self,
        failed: FailedInput<'_>,
        class: ErrorClass,
        error: &str,
        hold: impl FnMut() -> Option<G>,
    ) -> Result<(), PublishError> {
        let id = dead_letter_id(&self.processor, &failed);
        let letter = DeadLetter {
            id: id.clone(),
            processor: self.processor.clone(),
            error_class: class,
            error: error.to_string(),
            source_topic: failed.source_topic.to_string(),
            source_partition: failed.partition,
            source_offset: failed.offset,
            key: failed.key.map(str::to_string),
            original: failed.original.to_vec(),
            created_at_ms: now_ms(),
        };
        let payload = encode(&letter).map_err(|e| PublishError::Encode(e.to_string()))?;
        let partition = failed.partition.to_string();
        let offset = failed.offset.to_string();
        // Headers carry the same facts so tools can triage without decoding the payload.
        let headers = OwnedHeaders::new()
            .insert(Header { key: HEADER_ID, value: Some(id.as_str()) })
            .insert(Header { key: HEADER_KIND, value: Some(RecordKind::DeadLetter.name()) })
            .insert(Header { key: HEADER_PRODUCER, value: Some(self.producer_label.as_str()) })
            .insert(Header { key: HEADER_ERROR, value: Some(error) })
            .insert(Header { key: HEADER_ERROR_CLASS, value: Some(class.as_str()) })
            .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(failed.source_topic) })
            .insert(Header { key: HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) });
        let key = failed.key.unwrap_or(&id);
        let outgoing = Outgoing { topic: &self.dead_letter_topic, key, payload: &payload, headers };
        self.send_held(vec![outgoing], hold).await?;
        metrics::counter!(telemetry::RECORDS_DEAD_LETTERED, "processor" => self.processor.clone(), "class" => class.as_str())
            .increment(1);
        tracing::warn!(processor = %self.processor, source = %failed.source_topic, partition = failed.partition, offset = failed.offset, class = class.as_str(), "dead-lettered: {error}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::read_to_end;
    use crate::testing::{question, TestCluster};
    use distillery_schemas::{decode, Question};
    use std::time::Duration;

    const TOPOLOGY: &str = r#"
experiment = "publish"
[topics.out]
schema = "question"
partitions = 1
"#;

    fn publisher(cluster: &TestCluster) -> Publisher {
        let ports = HashMap::from([("out".to_string(), cluster.topic("out"))]);
        let outputs = [PortSpec { name: "out", kind: RecordKind::Question }];
        let producer = cluster.connection().producer(None).unwrap();
        Publisher::new(producer, "copy", "r1", &outputs, &ports, cluster.topic("dead-letters")).unwrap()
    }

    fn emit(id: &str) -> Emit {
        let payload = question(id, "p");
        let q: Question = decode(&payload).unwrap();
        Emit::record("out", &q).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_are_produced_only_while_held_with_their_id_kind_and_producer() {
        let cluster = TestCluster::start(TOPOLOGY).await;
        let publisher = publisher(&cluster);
        publisher.publish_held(&[emit("a"), emit("b")], || Some(())).await.unwrap();
        let refused = publisher.publish_held(&[emit("c")], || None::<()>).await;
        assert!(matches!(refused, Err(PublishError::NotOwner)), "{refused:?}");
        let failed = FailedInput { source_topic: "in", partition: 0, offset: 7, key: Some("k"), original: b"x" };
        let refused = publisher.dead_letter_held(failed.clone(), ErrorClass::User, "bad", || None::<()>).await;
        assert!(matches!(refused, Err(PublishError::NotOwner)));
        publisher.dead_letter(failed, ErrorClass::User, "bad").await.unwrap();

        let out = read_to_end(&cluster.connection(), &cluster.topic("out"), Duration::from_secs(30)).unwrap();
        let ids: Vec<_> = out.iter().map(|r| r.id().unwrap().to_string()).collect();
        assert_eq!(ids, ["a", "b"], "nothing produced while not held");
        assert_eq!(out[0].header(HEADER_KIND), Some("question"));
        assert_eq!(out[0].header(HEADER_PRODUCER), Some("copy/r1"));
        let letters =
            read_to_end(&cluster.connection(), &cluster.topic("dead-letters"), Duration::from_secs(30)).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].header(HEADER_ERROR), Some("bad"));
        assert_eq!(letters[0].header(HEADER_SOURCE_OFFSET), Some("7"));
        assert_eq!(letters[0].key.as_deref(), Some("k"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_undeclared_port_or_kind_is_refused_before_anything_is_produced() {
        let cluster = TestCluster::start(TOPOLOGY).await;
        let publisher = publisher(&cluster);
        let mut elsewhere = emit("a");
        elsewhere.port = "other";
        let refused = publisher.publish(&[emit("b"), elsewhere]).await;
        assert!(matches!(refused, Err(PublishError::UnknownPort(port)) if port == "other"));
        let mut wrong = emit("a");
        wrong.kind = RecordKind::DeadLetter;
        assert!(matches!(publisher.publish(&[wrong]).await, Err(PublishError::WrongKind { .. })));
        let out = read_to_end(&cluster.connection(), &cluster.topic("out"), Duration::from_secs(30)).unwrap();
        assert!(out.is_empty(), "a refused batch produces none of its records");
    }
}
