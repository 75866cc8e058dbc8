//! The declarative topology file (TOML): an experiment name that namespaces every topic, the
//! topics with their partitions, retention and size limits, and the processors with their
//! inputs, outputs, replicas and settings.
//!
//! ```toml
//! experiment = "quickstart"
//!
//! [kafka]
//! bootstrap_servers = "embedded"      # or "broker-1:9092,broker-2:9092"
//!
//! [topics.questions]
//! schema = "question"
//! partitions = 4
//!
//! [processors.feeder]
//! type = "feeder"
//! outputs = { questions = "questions" }
//! settings = { dataset = "gsm8k", files = [{ path = "data/gsm8k.jsonl", format = "gsm8k" }] }
//! ```

use crate::processor::PortSpec;
use crate::settings::{KafkaSettings, RuntimeSettings};
use distillery_schemas::RecordKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The dead-letter topic every processor writes to; added with defaults when a topology does
/// not declare it.
pub const DEAD_LETTERS: &str = "dead-letters";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Namespace of every topic and consumer group: topic `questions` of experiment `exp1` is
    /// `exp1.questions` on the broker. A replay with new settings uses a new experiment name
    /// and so writes beside the old run instead of over it.
    pub experiment: String,
    /// How to reach the broker.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Topics by short name.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicSpec>,
    /// Processor instances by name (the unit `distillery run NAME` starts).
    #[serde(default)]
    pub processors: BTreeMap<String, ProcessorInstance>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Record kind on this topic: a schema file name in `schemas/` without `.avsc`.
    pub schema: String,
    /// Partition count, fixed at creation (co-partitioned topics must agree).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Retention in milliseconds; -1 keeps records forever (the default for the expensive
    /// teacher samples); absent leaves the broker's default.
    pub retention_ms: Option<i64>,
    /// Largest record the topic accepts. Reasoning traces reach 130 KB; shard manifests list
    /// thousands of question ids.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: i64,
    /// "delete" or "compact" (changelogs of processor state).
    #[serde(default = "default_cleanup_policy")]
    pub cleanup_policy: String,
    /// Written outside this topology (for example a topic kept from an earlier experiment):
    /// exempt from the "someone must write it" check.
    #[serde(default)]
    pub external: bool,
    /// The experiment this topic belongs to, when it is not this topology's: the topic is
    /// then `{experiment}.{name}` of that earlier run, read (from the beginning, by this
    /// topology's own consumer groups) and never written or created here. This is how a new
    /// experiment reuses a retained topic; `distillery replay` sets it on the stage it
    /// replays.
    #[serde(default)]
    pub experiment: Option<String>,
}

fn default_partitions() -> i32 {
    4
}
fn default_replication_factor() -> i32 {
    1
}
fn default_max_message_bytes() -> i64 {
    16 * 1024 * 1024
}
fn default_cleanup_policy() -> String {
    "delete".into()
}

impl TopicSpec {
    pub fn dead_letters() -> TopicSpec {
        TopicSpec {
            schema: RecordKind::DeadLetter.name().into(),
            partitions: 1,
            replication_factor: default_replication_factor(),
            retention_ms: Some(-1),
            max_message_bytes: default_max_message_bytes(),
            cleanup_policy: default_cleanup_policy(),
            external: false,
            experiment: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorInstance {
    /// Processor type: feeder, sampler, judge, agreement, packer, trainer, evaluator, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Topics it consumes (short names).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Output port -> topic (short name).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// How many copies run in the consumer group (`distillery run NAME` once per replica).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Type-specific settings; each type documents its own.
    #[serde(default)]
    pub settings: toml::Table,
    /// Consume/commit/retry tuning shared by every type.
    #[serde(default)]
    pub runtime: RuntimeSettings,
}

fn default_replicas() -> u32 {
    1
}

/// What the topology checker needs to know about a processor type.
#[derive(Debug, Clone)]
pub struct ProcessorTypeSpec {
    pub name: &'static str,
    /// Record kind it reads; None for sources (the feeder).
    pub input: Option<RecordKind>,
    pub outputs: &'static [PortSpec],
    /// Parses the instance's settings and reports the first problem.
    pub check_settings: fn(&toml::Table) -> Result<(), String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid topology: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("topology {path} has {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid { path: String, problems: Vec<String> },
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Topology, TopologyError> {
        let mut topology: Topology =
            toml::from_str(text).map_err(|e| TopologyError::Parse { path: origin.to_string(), source: Box::new(e) })?;
        topology.topics.entry(DEAD_LETTERS.to_string()).or_insert_with(TopicSpec::dead_letters);
        Ok(topology)
    }

    /// The topology as a TOML file another process reads (the torch trainer engine gets the
    /// topology `distillery run` resolved, replay's renames included).
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("cannot write the topology as TOML: {e}"))
    }

    /// The broker-side name of a topic: `{experiment}.{name}`, with the topic's own
    /// `experiment` when it belongs to another run.
    pub fn topic_name(&self, short: &str) -> String {
        let experiment = self.topics.get(short).and_then(|t| t.experiment.as_deref()).unwrap_or(&self.experiment);
        format!("{experiment}.{short}")
    }

    /// Whether a topic belongs to another experiment (read here, never written or created).
    pub fn is_foreign(&self, short: &str) -> bool {
        self.topics.get(short).and_then(|t| t.experiment.as_deref()).is_some_and(|e| e != self.experiment)
    }

    /// Consumer group of a processor instance: `{experiment}.{processor}`.
    pub fn group_id(&self, processor: &str) -> String {
        format!("{}.{}", self.experiment, processor)
    }

    pub fn processor(&self, name: &str) -> Result<&ProcessorInstance, String> {
        self.processors.get(name).ok_or_else(|| {
            let known: Vec<_> = self.processors.keys().map(String::as_str).collect();
            format!("no processor named '{name}' in the topology (it has: {})", known.join(", "))
        })
    }

    /// Returns every problem found: processors of unknown types, ports that do not match the
    /// type, topics that are not declared, schemas that do not match the port or input, and
    /// topics read that no processor writes.
    pub fn check(&self, types: &[ProcessorTypeSpec]) -> Vec<String> {
        let mut problems = Vec::new();
        if !valid_experiment(&self.experiment) {
            problems.push(format!(
                "experiment '{}' must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.experiment
            ));
        }
        let mut topic_kinds = BTreeMap::new();
        for (name, topic) in &self.topics {
            if let Some(experiment) = topic.experiment.as_deref().filter(|e| !valid_experiment(e)) {
                problems.push(format!(
                    "topic '{name}': experiment '{experiment}' must be non-empty and use only letters, digits, '-', '_' and '.'"
                ));
            }
            match topic.schema.parse::<RecordKind>() {
                Ok(kind) => {
                    topic_kinds.insert(name.as_str(), kind);
                }
                Err(e) => problems.push(format!("topic '{name}': {e}")),
            }
            if topic.partitions < 1 {
                problems.push(format!("topic '{name}': partitions must be at least 1"));
            }
            if !["delete", "compact", "compact,delete"].contains(&topic.cleanup_policy.as_str()) {
                problems.push(format!("topic '{name}': cleanup_policy must be delete, compact or compact,delete"));
            }
        }
        let mut written = BTreeMap::<&str, Vec<&str>>::new();
        for (name, instance) in &self.processors {
            for topic in instance.outputs.values() {
                written.entry(topic.as_str()).or_default().push(name.as_str());
            }
        }
        for (name, instance) in &self.processors {
            let Some(spec) = types.iter().find(|t| t.name == instance.kind) else {
                let known: Vec<_> = types.iter().map(|t| t.name).collect();
                problems.push(format!(
                    "processor '{name}': unknown type '{}' (known: {})",
                    instance.kind,
                    known.join(", ")
                ));
                continue;
            };
            if instance.replicas < 1 {
                problems.push(format!("processor '{name}': replicas must be at least 1"));
            }
            if let Err(e) = (spec.check_settings)(&instance.settings) {
                problems.push(format!("processor '{name}': settings: {e}"));
            }
            if let Err(e) = instance.runtime.check() {
                problems.push(format!("processor '{name}': runtime: {e}"));
            }
            match spec.input {
                None if !instance.inputs.is_empty() => {
                    problems.push(format!("processor '{name}': type '{}' is a source and reads no topic", spec.name))
                }
                Some(_) if instance.inputs.is_empty() => {
                    problems.push(format!("processor '{name}': reads nothing; list its input topics in `inputs`"))
                }
                _ => {}
            }
            for input in &instance.inputs {
                match (topic_kinds.get(input.as_str()), spec.input) {
                    (None, _) => problems
                        .push(format!("processor '{name}': input topic '{input}' is not declared under [topics]")),
                    (Some(&kind), Some(expected)) if kind != expected => problems.push(format!(
                        "processor '{name}': reads '{input}' whose schema is {kind}, but type '{}' reads {expected}",
                        spec.name
                    )),
                    _ => {}
                }
                let external = self.topics.get(input).is_some_and(|t| t.external) || self.is_foreign(input);
                if !external && !written.contains_key(input.as_str()) {
                    problems.push(format!("processor '{name}': reads topic '{input}' that no processor writes (mark it `external = true` if it is filled from outside)"));
                }
            }
            for port in spec.outputs {
                if !instance.outputs.contains_key(port.name) {
                    problems.push(format!(
                        "processor '{name}': output port '{}' ({}) is not mapped to a topic",
                        port.name, port.kind
                    ));
                }
            }
            for (port, topic) in &instance.outputs {
                if self.is_foreign(topic) {
                    problems.push(format!(
                        "processor '{name}': writes topic '{topic}', which belongs to experiment '{}' (a topology writes only its own experiment's topics)",
                        self.topics[topic].experiment.as_deref().unwrap_or_default()
                    ));
                }
                let Some(port_spec) = spec.outputs.iter().find(|p| p.name == port) else {
                    let known: Vec<_> = spec.outputs.iter().map(|p| p.name).collect();
                    problems.push(format!(
                        "processor '{name}': type '{}' has no output port '{port}' (it has: {})",
                        spec.name,
                        known.join(", ")
                    ));
                    continue;
                };
                match topic_kinds.get(topic.as_str()) {
                    None => problems
                        .push(format!("processor '{name}': output topic '{topic}' is not declared under [topics]")),
                    Some(&kind) if kind != port_spec.kind => problems.push(format!(
                        "processor '{name}': port '{port}' writes {} but topic '{topic}' holds {kind}",
                        port_spec.kind
                    )),
                    _ => {}
                }
            }
        }
        problems
    }

    /// Like [`Topology::check`], as a `Result`.
    pub fn validate(&self, origin: &str, types: &[ProcessorTypeSpec]) -> Result<(), TopologyError> {
        let problems = self.check(types);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TopologyError::Invalid { path: origin.to_string(), problems })
        }
    }
}

/// Experiment names become topic and group name prefixes.
pub fn valid_experiment(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topology_written_as_toml_reads_back_the_same() {
        let text = r#"
            experiment = "exp1"
            [kafka]
            bootstrap_servers = "b1:9092"
            properties = { "security.protocol" = "SASL_SSL", "sasl.password" = "env:KAFKA_PASSWORD" }
            [topics.shards]
            schema = "shard_manifest"
            partitions = 1
            experiment = "exp0"
            [processors.t]
            type = "trainer"
            inputs = ["shards"]
            outputs = { checkpoints = "checkpoints" }
            runtime = { max_in_flight = 1 }
            settings = { student = "s3://m/x", steps = 3, torch = { nproc_per_node = 2 } }
        "#;
        let topology = Topology::parse(text, "t").unwrap();
        let again = Topology::parse(&topology.to_toml().unwrap(), "again").unwrap();
        assert_eq!(again.topic_name("shards"), "exp0.shards");
        assert_eq!(again.topics["shards"].retention_ms, None);
        assert_eq!(again.kafka.bootstrap_servers, "b1:9092");
        // Secrets stay references to the environment; they are never written out.
        assert_eq!(again.kafka.properties["sasl.password"], "env:KAFKA_PASSWORD");
        assert_eq!(again.processors["t"].settings, topology.processors["t"].settings);
        assert_eq!(again.processors["t"].runtime.max_in_flight, 1);
        assert_eq!(again.topics.len(), topology.topics.len());
    }

    fn ok_settings(_: &toml::Table) -> Result<(), String> {
        Ok(())
    }

    const COPY_OUT: &[PortSpec] = &[PortSpec { name: "out", kind: RecordKind::Question }];
    const FEED_OUT: &[PortSpec] = &[PortSpec { name: "questions", kind: RecordKind::Question }];

    fn types() -> Vec<ProcessorTypeSpec> {
        vec![
            ProcessorTypeSpec { name: "feeder", input: None, outputs: FEED_OUT, check_settings: ok_settings },
            ProcessorTypeSpec {
                name: "copy",
                input: Some(RecordKind::Question),
                outputs: COPY_OUT,
                check_settings: ok_settings,
            },
        ]
    }

    const GOOD: &str = r#"
        experiment = "t1"
        [topics.questions]
        schema = "question"
        [topics.copies]
        schema = "question"
        partitions = 2
        [processors.feeder]
        type = "feeder"
        outputs = { questions = "questions" }
        [processors.copy]
        type = "copy"
        inputs = ["questions"]
        outputs = { out = "copies" }
        replicas = 2
    "#;

    #[test]
    fn a_consistent_topology_passes_and_names_are_namespaced() {
        let t = Topology::parse(GOOD, "good").unwrap();
        assert_eq!(t.check(&types()), Vec::<String>::new());
        assert_eq!(t.topic_name("questions"), "t1.questions");
        assert_eq!(t.group_id("copy"), "t1.copy");
        assert!(t.topics.contains_key(DEAD_LETTERS), "dead letters are always declared");
        assert_eq!(t.topics["copies"].partitions, 2);
        assert_eq!(t.processors["copy"].replicas, 2);
    }

    #[test]
    fn reading_a_topic_no_one_writes_is_rejected() {
        let text = GOOD.replace("outputs = { questions = \"questions\" }", "outputs = { questions = \"copies\" }");
        let t = Topology::parse(&text, "x").unwrap();
        let problems = t.check(&types());
        assert!(
            problems.iter().any(|p| p.contains("reads topic 'questions' that no processor writes")),
            "{problems:?}"
        );
    }

    #[test]
    fn mismatched_schemas_are_rejected() {
        let text = GOOD.replace(
            "[topics.copies]\n        schema = \"question\"",
            "[topics.copies]\n        schema = \"teacher_sample\"",
        );
        let problems = Topology::parse(&text, "x").unwrap().check(&types());
        assert!(
            problems.iter().any(|p| p.contains("port 'out' writes question but topic 'copies' holds teacher_sample")),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_fields_types_and_ports_are_reported() {
        let err = Topology::parse("experiment = \"x\"\nexperimnet = 1", "typo").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let text = GOOD.replace("type = \"copy\"", "type = \"cpoy\"");
        let problems = Topology::parse(&text, "x").unwrap().check(&types());
        assert!(problems.iter().any(|p| p.contains("unknown type 'cpoy'")), "{problems:?}");
        let text = GOOD.replace("outputs = { out = \"copies\" }", "outputs = { output = \"copies\" }");
        let problems = Topology::parse(&text, "x").unwrap().check(&types());
        assert!(problems.iter().any(|p| p.contains("no output port 'output'")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("port 'out' (question) is not mapped")), "{problems:?}");
    }

    #[test]
    fn a_topic_of_another_experiment_is_read_there_and_never_written() {
        let text = GOOD.replace(
            "[topics.questions]\n        schema = \"question\"",
            "[topics.questions]\n        schema = \"question\"\n        experiment = \"t0\"",
        );
        let t = Topology::parse(&text, "x").unwrap();
        assert_eq!(t.topic_name("questions"), "t0.questions");
        assert_eq!(t.topic_name("copies"), "t1.copies");
        assert_eq!(t.group_id("copy"), "t1.copy", "consumer groups stay in this experiment");
        assert!(t.is_foreign("questions") && !t.is_foreign("copies"));
        let problems = t.check(&types());
        assert!(
            problems.iter().any(|p| p.contains("writes topic 'questions', which belongs to experiment 't0'")),
            "{problems:?}"
        );
        let mut t = t;
        t.processors.remove("feeder");
        assert_eq!(t.check(&types()), Vec::<String>::new(), "a foreign topic needs no writer here");
    }
}
