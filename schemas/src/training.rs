use crate::record::impl_record;
use serde::{Deserialize, Serialize};

/// Where a restarted trainer resumes on one partition of its shards topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumedOffset {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// `schemas/checkpoint_event.avsc`: a checkpoint, complete in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointEvent {
    pub id: String,
    pub run: String,
    pub style: String,
    pub step: i64,
    pub uri: String,
    pub consumed: Vec<ConsumedOffset>,
    pub shards_consumed: i64,
    pub tokens_seen: i64,
    pub is_final: bool,
    pub created_at_ms: i64,
}

impl_record!(CheckpointEvent, CheckpointEvent, id: |r| &r.id, key: |r| &r.run);

/// `schemas/train_metrics.avsc`: one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    pub id: String,
    pub run: String,
    pub style: String,
    pub step: i64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: i64,
    pub completion_tokens: i64,
    pub tokens_per_second: f64,
    pub created_at_ms: i64,
}

impl_record!(TrainMetrics, TrainMetrics, id: |r| &r.id, key: |r| &r.run);
