//! Construction of every Kafka client the project uses, and nothing else: the one place that
//! decides librdkafka settings (rust-rdkafka's `create_consumer`/`create_producer` habit).

use crate::settings::{KafkaSettings, RuntimeSettings};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::producer::FutureProducer;
use std::collections::BTreeMap;

/// Largest record any client sends or accepts. Traces reach 130 KB; shard manifests carry
/// thousands of ids; a dead letter carries the original record.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Lets a consumer fetch records up to [`MAX_MESSAGE_BYTES`] (librdkafka requires the
/// response limit to exceed the fetch limit).
fn accept_large_records(config: &mut ClientConfig) {
    config
        .set("fetch.max.bytes", MAX_MESSAGE_BYTES.to_string())
        .set("receive.message.max.bytes", (MAX_MESSAGE_BYTES + 1024 * 1024).to_string());
}

/// rdkafka's configuration errors print the offending property's value, so a mistyped
/// `"sasl.pasword" = "env:KAFKA_PASSWORD"` would put the password into the log. Keep the
/// property name and the reason, hide the value.
fn hide_config_value(error: rdkafka::error::KafkaError) -> rdkafka::error::KafkaError {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            let description = if value.is_empty() { description } else { description.replace(&value, "[hidden]") };
            KafkaError::ClientConfig(code, description, key, "(value hidden)".into())
        }
        other => other,
    }
}

/// A resolved way to reach the cluster: bootstrap servers plus any pass-through properties
/// (security settings with secrets already read from the environment).
#[derive(Clone)]
pub struct Connection {
    pub bootstrap_servers: String,
    properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for Connection {
    // Properties may hold secrets (sasl.password): never print their values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Connection {
    pub fn new(bootstrap_servers: impl Into<String>) -> Connection {
        Connection { bootstrap_servers: bootstrap_servers.into(), properties: BTreeMap::new() }
    }

    /// From a topology's `[kafka]` section; `bootstrap_override` wins over the file.
    pub fn from_settings(settings: &KafkaSettings, bootstrap_override: Option<&str>) -> Result<Connection, String> {
        let bootstrap = bootstrap_override.unwrap_or(&settings.bootstrap_servers);
        if bootstrap == "embedded" {
            return Err("the topology says bootstrap_servers = \"embedded\": start the local broker (`distillery broker`) and pass --bootstrap-servers, or use `distillery quickstart`, which starts it for you".into());
        }
        Ok(Connection { bootstrap_servers: bootstrap.to_string(), properties: settings.resolved_properties()? })
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        // The local broker and containers advertise IPv4 literals; skip IPv6 lookups.
        config.set("broker.address.family", "v4");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Idempotent, zstd-compressing producer that waits for the broker forever: when the
    /// broker is down the pipeline pauses instead of dropping records.
    pub fn producer(&self, transactional_id: Option<&str>) -> Result<FutureProducer, rdkafka::error::KafkaError> {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("compression.type", "zstd")
            .set("linger.ms", "5")
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
            // 0 = no delivery deadline: retry until the broker is back.
            .set("message.timeout.ms", "0");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        config.create().map_err(hide_config_value)
    }

    /// Group consumer with manual offset management: the runtime stores and commits offsets
    /// itself, only after the outputs of a record were acknowledged.
    pub fn consumer<C: ConsumerContext + 'static>(
        &self,
        group_id: &str,
        runtime: &RuntimeSettings,
        context: C,
    ) -> Result<rdkafka::consumer::StreamConsumer<C>, rdkafka::error::KafkaError> {
        let session_timeout_ms = runtime.session_timeout_ms;
        let mut config = self.base();
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Incremental rebalancing: a replica joining or leaving moves only the partitions
            // that change owner; the others keep their records in flight and their state.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (session_timeout_ms / 4).max(100).to_string())
            // The runner does not poll while all its in-flight slots are busy (records stay
            // bounded by max_in_flight); librdkafka's 5-minute default would evict a replica
            // whose records take longer (see RuntimeSettings::max_poll_interval_ms).
            .set("max.poll.interval.ms", runtime.max_poll_interval_ms.to_string())
            .set("fetch.message.max.bytes", (4 * 1024 * 1024).to_string())
            // Periodic statistics feed the consumer-lag gauge.
            .set("statistics.interval.ms", "5000");
        accept_large_records(&mut config);
        config.create_with_context(context).map_err(hide_config_value)
    }

    /// Consumer without a group, for reading topics from the beginning (tools, tests, the
    /// feeder's check for already published ids).
    pub fn reader(&self) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
        self.reader_config().create().map_err(hide_config_value)
    }

    /// [`Connection::reader`] for a reader that keeps its own position (the trainer's): a
    /// position that is not in the topic any more is an error, never a silent jump to the
    /// earliest record.
    pub fn positioned_reader(&self) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
        let mut config = self.reader_config();
        config.set("auto.offset.reset", "error");
        config.create().map_err(hide_config_value)
    }

    /// [`Connection::reader`] as an async stream (for the benchmark's raw baseline).
    pub fn stream_reader(&self) -> Result<rdkafka::consumer::StreamConsumer, rdkafka::error::KafkaError> {
        self.reader_config().create().map_err(hide_config_value)
    }

    fn reader_config(&self) -> ClientConfig {
        let mut config = self.base();
        // Readers assign partitions themselves; the group id is required but never joined.
        config
            .set("group.id", "distillery-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        accept_large_records(&mut config);
        config
    }

    /// A consumer that reads a group's committed offsets without joining the group.
    pub fn group_reader(&self, group_id: &str) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
        let mut config = self.base();
        config.set("group.id", group_id).set("enable.auto.commit", "false");
        config.create().map_err(hide_config_value)
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, rdkafka::error::KafkaError> {
        self.base().create().map_err(hide_config_value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_ssl_properties_reach_every_client_config_with_secrets_from_the_environment() {
        std::env::set_var("DISTILLERY_TEST_KAFKA_PASSWORD", "planted-kafka-SECRET-123");
        let settings: KafkaSettings = toml::from_str(
            r#"
            bootstrap_servers = "b-1.cluster:9096,b-2.cluster:9096"
            [properties]
            "security.protocol" = "SASL_SSL"
            "sasl.mechanisms" = "SCRAM-SHA-512"
            "sasl.username" = "distillery"
            "sasl.password" = "env:DISTILLERY_TEST_KAFKA_PASSWORD"
            "ssl.endpoint.identification.algorithm" = "https"
            "#,
        )
        .unwrap();
        let connection = Connection::from_settings(&settings, None).unwrap();
        for config in [connection.base(), connection.reader_config()] {
            assert_eq!(config.get("bootstrap.servers"), Some("b-1.cluster:9096,b-2.cluster:9096"));
            assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
            assert_eq!(config.get("sasl.username"), Some("distillery"));
            assert_eq!(config.get("sasl.password"), Some("planted-kafka-SECRET-123"));
            assert_eq!(config.get("ssl.endpoint.identification.algorithm"), Some("https"));
        }
        let shown = format!("{connection:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("SECRET"), "{shown}");
        // librdkafka accepts them (creating a client does not contact the brokers).
        let _producer = connection.producer(None).unwrap();
        connection.reader().unwrap();
        connection.admin().unwrap();
        // A pass-through property librdkafka does not know is refused by name, without the
        // value (rdkafka's own message would have printed the password).
        let mut bad = settings.clone();
        bad.properties.insert("sasl.pasword".into(), "env:DISTILLERY_TEST_KAFKA_PASSWORD".into());
        let err = match Connection::from_settings(&bad, None).unwrap().producer(None) {
            Ok(_) => panic!("an unknown property is refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("No such configuration property") && err.contains("sasl.pasword"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        // An invalid value is named by property only, whichever client it is.
        let mut invalid = settings.clone();
        invalid.properties.insert("security.protocol".into(), "env:DISTILLERY_TEST_KAFKA_PASSWORD".into());
        let err = Connection::from_settings(&invalid, None).unwrap().reader().map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("security.protocol") && !err.contains("SECRET"), "{err}");
        // The command line's bootstrap servers win over the file's.
        let overridden = Connection::from_settings(&settings, Some("127.0.0.1:9092")).unwrap();
        assert_eq!(overridden.base().get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }
}
