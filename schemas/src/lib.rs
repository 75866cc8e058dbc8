//! The contract between processors: one Avro schema per record type (the `.avsc` files beside
//! this crate), the Rust types that map to them with serde, and the codec that writes them.
//!
//! # Layout
//! - `record`: the [`Record`] trait every topic payload implements, [`RecordKind`] (one per
//!   schema file) and [`stable_id`] for deterministic record ids.
//! - `codec`: Avro binary with Avro single-object encoding (a fingerprint of the writer schema
//!   in front of every record), and resolution of older writer schemas into the current one.
//! - one file per record type: `question`, `sample` (teacher and judged samples), `agreed`,
//!   `shard`, `training` (checkpoint events and train metrics), `eval`, `dead_letter`.

mod agreed;
pub mod codec;
mod dead_letter;
mod eval;
mod question;
mod record;
mod sample;
mod shard;
mod training;

pub use agreed::{AgreedSample, TeacherTrace};
pub use codec::{decode, decode_any, encode, CodecError, DecodedAny};
pub use dead_letter::{DeadLetter, ErrorClass};
pub use eval::EvalResult;
pub use question::Question;
pub use record::{now_ms, stable_id, Record, RecordKind};
pub use sample::{JudgeMethod, JudgedSample, SamplingSettings, TeacherSample, Verdict};
pub use shard::ShardManifest;
pub use training::{CheckpointEvent, ConsumedOffset, TrainMetrics};
