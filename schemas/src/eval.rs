use crate::record::impl_record;
use serde::{Deserialize, Serialize};

/// `schemas/eval_result.avsc`: one benchmark on one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub id: String,
    pub checkpoint_id: String,
    pub run: String,
    pub style: String,
    pub step: i64,
    pub benchmark: String,
    pub problems: i32,
    pub samples_per_problem: i32,
    pub pass_at_k: Vec<f64>,
    pub majority_at_k: Vec<f64>,
    pub avg_generated_tokens: f64,
    pub truncated_share: f64,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: i32,
    pub created_at_ms: i64,
}

impl_record!(EvalResult, EvalResult, id: |r| &r.id, key: |r| &r.run);
