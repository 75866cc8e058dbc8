//! The smallest real processor: copies each question to its `out` port unchanged. It exists
//! to exercise the runtime end to end (tests, `distillery bench runtime`) and as the template
//! for a new stage: settings, record in, records out.

use distillery_runtime::{Emit, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{Question, RecordKind};
use serde::Deserialize;
use std::time::Duration;

// --- settings ---------------------------------------------------------------------------

/// `[processors.NAME.settings]` of a `passthrough` processor.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughSettings {
    /// Reject (dead-letter) questions whose problem contains this text. For tests of the
    /// dead-letter path.
    #[serde(default)]
    pub reject_problems_containing: Option<String>,
    /// Pretend each record takes this long, so that tests have records in flight to kill.
    #[serde(default)]
    pub work_ms: u64,
}

impl PassthroughSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())
    }
}

// --- processor --------------------------------------------------------------------------

pub struct Passthrough {
    settings: PassthroughSettings,
}

impl Passthrough {
    pub fn new(settings: PassthroughSettings) -> Passthrough {
        Passthrough { settings }
    }
}

impl Processor for Passthrough {
    type Input = Question;
    const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "out", kind: RecordKind::Question }];

    async fn process(&self, question: Question, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        if let Some(marker) = &self.settings.reject_problems_containing {
            if question.problem.contains(marker.as_str()) {
                return Err(ProcessError::rejected(format!("problem contains the rejected marker {marker:?}")));
            }
        }
        if self.settings.work_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.work_ms)).await;
        }
        Ok(vec![Emit::record("out", &question)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(problem: &str) -> Question {
        Question {
            id: "q".into(),
            dataset: "d".into(),
            source_uri: "f".into(),
            source_row: 0,
            problem: problem.into(),
            expected_answer: "1".into(),
            metadata: Default::default(),
        }
    }

    fn ctx() -> RecordContext {
        RecordContext { processor: "copy".into(), topic: "t".into(), partition: 0, offset: 0, key: None, generation: 0 }
    }

    #[tokio::test]
    async fn copies_the_record_and_rejects_marked_ones() {
        let p = Passthrough::new(PassthroughSettings { reject_problems_containing: Some("BAD".into()), work_ms: 0 });
        let out = p.process(question("1+0"), &ctx()).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].port, "out");
        assert_eq!(out[0].key, "q");
        let back: Question = distillery_schemas::decode(&out[0].payload).unwrap();
        assert_eq!(back, question("1+0"));
        let err = p.process(question("a BAD one"), &ctx()).await.unwrap_err();
        assert!(!err.retryable && err.message.contains("BAD"));
    }

    #[test]
    fn settings_reject_typos() {
        let table: toml::Table = toml::from_str("work_msec = 3").unwrap();
        assert!(PassthroughSettings::from_table(&table).unwrap_err().contains("unknown field"));
    }
}
