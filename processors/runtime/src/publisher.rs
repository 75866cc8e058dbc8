//! Producing: outputs to their topics and failures to the dead-letter topic, each with
//! headers that name the record and where it came from. `publish` returns only after the
//! broker acknowledged every record, which is what lets the runner commit the input.

use crate::processor::{Emit, PortSpec};
use crate::telemetry;
use distillery_schemas::{encode, now_ms, stable_id, DeadLetter, ErrorClass, RecordKind};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::HashMap;

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
        let mut sends = Vec::with_capacity(emits.len());
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
            sends.push(self.send(topic, &emit.key, &emit.payload, headers));
        }
        for result in futures::future::join_all(sends).await {
            let topic = result?;
            metrics::counter!(telemetry::RECORDS_OUT, "processor" => self.processor.clone(), "topic" => topic)
                .increment(1);
        }
        Ok(())
    }

    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<String, PublishError> {
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|_| topic.to_string())
            .map_err(|(error, _)| PublishError::Delivery { topic: topic.to_string(), error: error.to_string() })
    }

    /// Sends a failed input to the dead-letter topic with the reason, and waits for the ack.
    pub async fn dead_letter(
        &self,
        failed: FailedInput<'_>,
        class: ErrorClass,
        error: &str,
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
        self.send(&self.dead_letter_topic, key, &payload, headers).await?;
        metrics::counter!(telemetry::RECORDS_DEAD_LETTERED, "processor" => self.processor.clone(), "class" => class.as_str())
            .increment(1);
        tracing::warn!(processor = %self.processor, source = %failed.source_topic, partition = failed.partition, offset = failed.offset, class = class.as_str(), "dead-lettered: {error}");
        Ok(())
    }
}
