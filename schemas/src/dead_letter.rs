use crate::record::impl_record;
use serde::{Deserialize, Serialize};

/// Who is at fault when a record cannot be processed; decides retry or dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorClass {
    /// Bad input data: retrying cannot help.
    User,
    /// A server or service failed (after every retry).
    External,
    /// A bug in this project.
    Internal,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::User => "USER",
            ErrorClass::External => "EXTERNAL",
            ErrorClass::Internal => "INTERNAL",
        }
    }
}

/// `schemas/dead_letter.avsc`: a record that could not be processed, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub processor: String,
    pub error_class: ErrorClass,
    pub error: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub key: Option<String>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub original: Vec<u8>,
    pub created_at_ms: i64,
}

impl_record!(DeadLetter, DeadLetter, id: |r| &r.id, key: |r| r.key.as_deref().unwrap_or(&r.id));
