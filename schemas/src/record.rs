use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A record that travels on a topic. The runtime keys it by [`Record::key`] (the question id for
/// everything derived from a question, so one question's records share a partition) and
/// consumers drop replays by [`Record::id`], which must be the same every time the same input
/// is processed.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Which schema file describes this type.
    const KIND: RecordKind;
    /// Deterministic identity of this record: a replay of the same input yields the same id.
    fn id(&self) -> &str;
    /// Partitioning key.
    fn key(&self) -> &str;
}

/// Implements [`Record`] for a schema type: its kind, and how to get its id and its
/// partition key from a record.
macro_rules! impl_record {
    ($ty:ty, $kind:ident, id: |$a:ident| $id:expr, key: |$b:ident| $key:expr) => {
        impl $crate::record::Record for $ty {
            const KIND: $crate::record::RecordKind = $crate::record::RecordKind::$kind;
            fn id(&self) -> &str {
                let $a = self;
                $id
            }
            fn key(&self) -> &str {
                let $b = self;
                $key
            }
        }
    };
}
pub(crate) use impl_record;

/// Every record type the design names, one per `.avsc` file in `schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Question,
    TeacherSample,
    JudgedSample,
    AgreedSample,
    ShardManifest,
    CheckpointEvent,
    TrainMetrics,
    EvalResult,
    DeadLetter,
}

impl RecordKind {
    pub const ALL: [RecordKind; 9] = [
        RecordKind::Question,
        RecordKind::TeacherSample,
        RecordKind::JudgedSample,
        RecordKind::AgreedSample,
        RecordKind::ShardManifest,
        RecordKind::CheckpointEvent,
        RecordKind::TrainMetrics,
        RecordKind::EvalResult,
        RecordKind::DeadLetter,
    ];

    /// The name used in topology files and schema file names (`question` -> `question.avsc`).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Question => "question",
            RecordKind::TeacherSample => "teacher_sample",
            RecordKind::JudgedSample => "judged_sample",
            RecordKind::AgreedSample => "agreed_sample",
            RecordKind::ShardManifest => "shard_manifest",
            RecordKind::CheckpointEvent => "checkpoint_event",
            RecordKind::TrainMetrics => "train_metrics",
            RecordKind::EvalResult => "eval_result",
            RecordKind::DeadLetter => "dead_letter",
        }
    }

    /// The current schema, as shipped in `schemas/`.
    pub fn current_schema_text(self) -> &'static str {
        match self {
            RecordKind::Question => include_str!("../question.avsc"),
            RecordKind::TeacherSample => include_str!("../teacher_sample.avsc"),
            RecordKind::JudgedSample => include_str!("../judged_sample.avsc"),
            RecordKind::AgreedSample => include_str!("../agreed_sample.avsc"),
            RecordKind::ShardManifest => include_str!("../shard_manifest.avsc"),
            RecordKind::CheckpointEvent => include_str!("../checkpoint_event.avsc"),
            RecordKind::TrainMetrics => include_str!("../train_metrics.avsc"),
            RecordKind::EvalResult => include_str!("../eval_result.avsc"),
            RecordKind::DeadLetter => include_str!("../dead_letter.avsc"),
        }
    }

    /// Earlier versions that records on retained topics may still carry. When a schema
    /// changes, its old text moves to `schemas/history/{name}.v{N}.avsc` and is listed here, so
    /// readers keep resolving what older writers produced.
    pub fn history_schema_texts(self) -> &'static [&'static str] {
        match self {
            RecordKind::Question => &[include_str!("../history/question.v1.avsc")],
            _ => &[],
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RecordKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecordKind::ALL.into_iter().find(|kind| kind.name() == s).ok_or_else(|| {
            let known: Vec<_> = RecordKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown schema '{s}' (known: {})", known.join(", "))
        })
    }
}

/// A deterministic id from its parts: the hex of the first 16 bytes of sha256 over the parts
/// separated by NUL. Same parts, same id, on every machine and every run.
pub fn stable_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_ids_depend_on_every_part_and_on_the_boundaries() {
        assert_eq!(stable_id(&["a", "b"]), stable_id(&["a", "b"]));
        assert_ne!(stable_id(&["a", "b"]), stable_id(&["a", "c"]));
        assert_ne!(stable_id(&["ab", ""]), stable_id(&["a", "b"]));
        assert_eq!(stable_id(&["x"]).len(), 32);
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in RecordKind::ALL {
            assert_eq!(kind.name().parse::<RecordKind>().unwrap(), kind);
        }
        assert!("questions".parse::<RecordKind>().unwrap_err().contains("known: question"));
    }
}
