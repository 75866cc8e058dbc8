use crate::record::impl_record;
use serde::{Deserialize, Serialize};

/// Every setting that shaped a teacher request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingSettings {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: i32,
    pub reasoning_effort: Option<String>,
    pub system_prompt: Option<String>,
    pub prompt_template: String,
    pub seed: Option<i64>,
}

/// `schemas/teacher_sample.avsc`: one teacher's answer to one question, one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherSample {
    pub id: String,
    pub question_id: String,
    pub dataset: String,
    pub problem: String,
    pub expected_answer: String,
    pub teacher: String,
    pub attempt: i32,
    pub model: String,
    pub server_model: Option<String>,
    pub endpoint: Option<String>,
    pub reasoning: Option<String>,
    pub answer: Option<String>,
    pub finish_reason: String,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub reasoning_tokens: Option<i32>,
    pub latency_ms: i64,
    pub sampling: SamplingSettings,
    pub replayed: bool,
    pub created_at_ms: i64,
}

impl_record!(TeacherSample, TeacherSample, id: |r| &r.id, key: |r| &r.question_id);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Match,
    Mismatch,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JudgeMethod {
    Rule,
    Llm,
    None,
}

/// `schemas/judged_sample.avsc`: a sample with the judge's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedSample {
    pub id: String,
    pub sample: TeacherSample,
    pub verdict: Verdict,
    pub extracted_answer: Option<String>,
    pub method: JudgeMethod,
    pub judge_model: Option<String>,
    pub judge_output: Option<String>,
    pub detail: Option<String>,
    pub judged_at_ms: i64,
}

impl_record!(JudgedSample, JudgedSample, id: |r| &r.id, key: |r| &r.sample.question_id);
