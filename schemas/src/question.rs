use crate::record::{Record, RecordKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `schemas/question.avsc`: one problem and its ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub dataset: String,
    pub source_uri: String,
    pub source_row: i64,
    pub problem: String,
    pub expected_answer: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Record for Question {
    const KIND: RecordKind = RecordKind::Question;
    fn id(&self) -> &str {
        &self.id
    }
    fn key(&self) -> &str {
        &self.id
    }
}
