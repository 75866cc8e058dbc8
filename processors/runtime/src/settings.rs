//! Settings shared by every processor: how to reach Kafka, and how the consume loop behaves.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[kafka]` in a topology.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Broker list, or "embedded" to start the local Kafka-API broker (Nisshi) in-process for
    /// `distillery quickstart`. Overridden by `--bootstrap-servers` / `DISTILLERY_BOOTSTRAP_SERVERS`.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Extra librdkafka properties, passed verbatim to every client: `security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`, ... A value written
    /// `env:NAME` is read from the environment variable NAME at start-up, so secrets such as
    /// `sasl.password` never sit in the file (and are never logged).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// "at-least-once" (default: idempotent producer, commit after delivery, consumers drop
    /// replays by record id) or "exactly-once" (Kafka transactions; needs a broker that
    /// supports them, which the local test broker does not).
    #[serde(default)]
    pub delivery: Delivery,
}

fn default_bootstrap() -> String {
    "embedded".into()
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: default_bootstrap(),
            properties: BTreeMap::new(),
            delivery: Delivery::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl KafkaSettings {
    /// The properties with every `env:NAME` value replaced by that variable's value.
    pub fn resolved_properties(&self) -> Result<BTreeMap<String, String>, String> {
        self.properties
            .iter()
            .map(|(key, value)| match value.strip_prefix("env:") {
                Some(var) => std::env::var(var)
                    .map(|v| (key.clone(), v))
                    .map_err(|_| format!("kafka property '{key}' names environment variable {var}, which is not set")),
                None => Ok((key.clone(), value.clone())),
            })
            .collect()
    }
}

/// `[processors.NAME.runtime]`: how the runtime drives one processor.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Records processed at once per replica. HTTP-bound stages (samplers, judge) want
    /// hundreds; CPU-bound ones about the number of cores.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How often finished offsets are committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// On SIGINT/SIGTERM, how long in-flight records may take to finish before they are
    /// abandoned (they are replayed after restart).
    #[serde(default = "default_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
    /// Attempts for a record whose processing failed with a retryable error, before it goes
    /// to the dead-letter topic.
    #[serde(default = "default_retry_attempts")]
    pub retry_attempts: usize,
    #[serde(default = "default_retry_min_delay_ms")]
    pub retry_min_delay_ms: u64,
    #[serde(default = "default_retry_max_delay_ms")]
    pub retry_max_delay_ms: u64,
    /// Input record ids remembered per partition to drop replays (an upstream processor that
    /// restarted re-sends what it had not committed). 0 turns de-duplication off.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: usize,
    /// When a partition is assigned (a restart, a replica joining or leaving), how many of
    /// its last committed records are read back to seed that window, so that a replay
    /// arriving after the rebalance costs no second call (a teacher or judge request).
    /// Processors that rebuild state from their input seed it from the whole restore. The
    /// price: reading these records on every assignment. A replay of a record older than
    /// this is processed again.
    #[serde(default = "default_dedup_restore_records")]
    pub dedup_restore_records: usize,
    /// How long the group waits for a silent replica before giving its partitions to the
    /// others. Lower means a killed replica's work moves sooner; too low means slow replicas
    /// get evicted.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Longest time a replica may go without asking the consumer for a record before the
    /// group evicts it (librdkafka's `max.poll.interval.ms`, default there 5 minutes). The
    /// runner stops asking while all `max_in_flight` slots are busy, so this must exceed the
    /// slowest record: an evaluator scoring a checkpoint, a judge behind a slow server. An
    /// evicted replica loses its partitions and abandons its records, which its successor
    /// starts over, so too low a value can keep a slow stage from ever finishing. The price of
    /// a high value: a rebalance (a replica joining or leaving) waits until every busy
    /// replica frees a slot, at most this long. Default 30 minutes.
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// How often the processor's `on_tick` runs (expiries of pending joins, the packer's
    /// shipments).
    #[serde(default = "default_tick_interval_ms")]
    pub tick_interval_ms: u64,
}

fn default_max_in_flight() -> usize {
    64
}
fn default_commit_interval_ms() -> u64 {
    500
}
fn default_shutdown_deadline_ms() -> u64 {
    10_000
}
fn default_retry_attempts() -> usize {
    5
}
fn default_retry_min_delay_ms() -> u64 {
    100
}
fn default_retry_max_delay_ms() -> u64 {
    10_000
}
fn default_dedup_window() -> usize {
    100_000
}
fn default_dedup_restore_records() -> usize {
    1_000
}
fn default_session_timeout_ms() -> u64 {
    10_000
}
fn default_max_poll_interval_ms() -> u64 {
    30 * 60 * 1000
}
fn default_tick_interval_ms() -> u64 {
    1_000
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            max_in_flight: default_max_in_flight(),
            commit_interval_ms: default_commit_interval_ms(),
            shutdown_deadline_ms: default_shutdown_deadline_ms(),
            retry_attempts: default_retry_attempts(),
            retry_min_delay_ms: default_retry_min_delay_ms(),
            retry_max_delay_ms: default_retry_max_delay_ms(),
            dedup_window: default_dedup_window(),
            dedup_restore_records: default_dedup_restore_records(),
            session_timeout_ms: default_session_timeout_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            tick_interval_ms: default_tick_interval_ms(),
        }
    }
}

impl RuntimeSettings {
    pub fn check(&self) -> Result<(), String> {
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        if self.commit_interval_ms == 0 {
            return Err("commit_interval_ms must be at least 1".into());
        }
        if self.tick_interval_ms == 0 {
            return Err("tick_interval_ms must be at least 1".into());
        }
        // librdkafka refuses a consumer whose poll interval is below its session timeout.
        if self.max_poll_interval_ms < self.session_timeout_ms {
            return Err("max_poll_interval_ms must be at least session_timeout_ms".into());
        }
        if self.retry_min_delay_ms > self.retry_max_delay_ms {
            return Err("retry_min_delay_ms must not exceed retry_max_delay_ms".into());
        }
        Ok(())
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_are_resolved_and_missing_ones_named() {
        std::env::set_var("DISTILLERY_TEST_SASL_PASSWORD", "s3cret");
        let settings: KafkaSettings = toml::from_str(
            r#"
            bootstrap_servers = "b:9092"
            properties = { "sasl.password" = "env:DISTILLERY_TEST_SASL_PASSWORD", "security.protocol" = "SASL_SSL" }
            "#,
        )
        .unwrap();
        let props = settings.resolved_properties().unwrap();
        assert_eq!(props["sasl.password"], "s3cret");
        assert_eq!(props["security.protocol"], "SASL_SSL");
        let missing: KafkaSettings =
            toml::from_str(r#"properties = { "sasl.password" = "env:DISTILLERY_NOT_SET_ANYWHERE" }"#).unwrap();
        let err = missing.resolved_properties().unwrap_err();
        assert!(err.contains("DISTILLERY_NOT_SET_ANYWHERE") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn the_poll_interval_outlasts_slow_records_and_not_below_the_session_timeout() {
        let defaults: RuntimeSettings = toml::from_str("").unwrap();
        assert_eq!(defaults.max_poll_interval_ms, 30 * 60 * 1000);
        assert!(defaults.check().is_ok());
        let low: RuntimeSettings = toml::from_str("session_timeout_ms = 10000\nmax_poll_interval_ms = 5000").unwrap();
        assert!(low.check().unwrap_err().contains("max_poll_interval_ms"));
    }

    #[test]
    fn delivery_defaults_to_at_least_once() {
        let settings: KafkaSettings = toml::from_str("").unwrap();
        assert_eq!(settings.delivery, Delivery::AtLeastOnce);
        assert_eq!(settings.bootstrap_servers, "embedded");
        let eos: KafkaSettings = toml::from_str("delivery = \"exactly-once\"").unwrap();
        assert_eq!(eos.delivery, Delivery::ExactlyOnce);
    }
}
