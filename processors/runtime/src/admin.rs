//! `distillery topology apply`: create every topic of a topology that does not exist yet.
//! Idempotent: existing topics are left alone (their partition count is checked, since
//! co-partitioning and keyed routing depend on it and it cannot shrink). Topics of another
//! experiment (`experiment = "..."` on the topic) are never created: they must exist.

use crate::kafka::Connection;
use crate::topology::Topology;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExisted,
    /// A topic of another experiment, read as it is (never created or changed here).
    OtherExperiment,
}

#[derive(Debug, Clone)]
pub struct AppliedTopic {
    pub name: String,
    pub partitions: i32,
    pub outcome: TopicOutcome,
}

pub async fn apply_topology(topology: &Topology, connection: &Connection) -> anyhow::Result<Vec<AppliedTopic>> {
    let admin = connection.admin()?;
    let mut specs = Vec::new();
    let mut foreign = Vec::new();
    for (short, spec) in &topology.topics {
        let name = topology.topic_name(short);
        if topology.is_foreign(short) {
            foreign.push(name);
            continue;
        }
        let retention = spec.retention_ms.map(|ms| ms.to_string());
        let max_bytes = spec.max_message_bytes.to_string();
        specs.push((name, spec.partitions, spec.replication_factor, retention, max_bytes, spec.cleanup_policy.clone()));
    }
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, partitions, replication, retention, max_bytes, cleanup)| {
            let mut topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(*replication))
                .set("max.message.bytes", max_bytes)
                .set("cleanup.policy", cleanup);
            if let Some(retention) = retention {
                topic = topic.set("retention.ms", retention);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut applied = Vec::new();
    for (result, (name, partitions, ..)) in results.into_iter().zip(&specs) {
        let outcome = match result {
            Ok(_) => TopicOutcome::Created,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => TopicOutcome::AlreadyExisted,
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        };
        applied.push(AppliedTopic { name: name.clone(), partitions: *partitions, outcome });
    }
    // The broker may take a moment to show new topics; existing ones must match the file.
    let reader = connection.reader()?;
    for topic in &applied {
        let actual = wait_for_partitions(&reader, &topic.name, Duration::from_secs(30))?;
        if actual != topic.partitions {
            anyhow::bail!(
                "topic {} exists with {actual} partitions but the topology says {}; partition counts cannot change (keyed records would move), so use a new experiment name",
                topic.name,
                topic.partitions
            );
        }
    }
    for name in foreign {
        let partitions = wait_for_partitions(&reader, &name, Duration::from_secs(10)).map_err(|_| {
            anyhow::anyhow!("topic {name} does not exist: the experiment it belongs to has no such topic to read")
        })?;
        applied.push(AppliedTopic { name, partitions, outcome: TopicOutcome::OtherExperiment });
    }
    Ok(applied)
}

/// Partition count of a topic, waiting until the broker reports it.
pub fn wait_for_partitions(
    reader: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    deadline: Duration,
) -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(metadata) = reader.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
                if t.error().is_none() && !t.partitions().is_empty() {
                    return Ok(t.partitions().len() as i32);
                }
            }
        }
        if started.elapsed() > deadline {
            anyhow::bail!("topic {topic} does not exist (run `distillery topology apply` first)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
