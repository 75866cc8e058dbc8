use crate::record::impl_record;
use serde::{Deserialize, Serialize};

/// `schemas/shard_manifest.avsc`: a packed shard, complete in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub id: String,
    pub style: String,
    pub shard_index: i64,
    pub uri: String,
    pub manifest_uri: String,
    pub format: String,
    pub bytes: i64,
    pub sha256: String,
    pub rows: i32,
    pub sequences: i32,
    pub tokens: i64,
    pub completion_tokens: i64,
    pub row_capacity: i32,
    pub fill_ratio: f64,
    pub tokenizer_sha256: String,
    pub template_sha256: String,
    pub question_ids: Vec<String>,
    pub created_at_ms: i64,
}

impl_record!(ShardManifest, ShardManifest, id: |r| &r.id, key: |r| &r.style);
