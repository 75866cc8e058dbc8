use crate::record::impl_record;
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

impl_record!(Question, Question, id: |r| &r.id, key: |r| &r.id);
