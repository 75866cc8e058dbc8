use crate::record::impl_record;
use serde::{Deserialize, Serialize};

/// One teacher's kept trace inside an [`AgreedSample`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherTrace {
    pub teacher: String,
    pub sample_id: String,
    pub verdict: String,
    pub reasoning: Option<String>,
    pub answer: Option<String>,
    pub completion_tokens: i32,
    pub finish_reason: String,
}

/// `schemas/agreed_sample.avsc`: a question all required teachers solved (or a rejection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreedSample {
    pub id: String,
    pub question_id: String,
    pub dataset: String,
    pub problem: String,
    pub expected_answer: String,
    pub accepted: bool,
    pub reason: Option<String>,
    pub traces: Vec<TeacherTrace>,
    pub decided_at_ms: i64,
}

impl_record!(AgreedSample, AgreedSample, id: |r| &r.id, key: |r| &r.question_id);
