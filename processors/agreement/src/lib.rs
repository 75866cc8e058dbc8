//! The agreement filter: joins judged samples per question across the required teachers.
//! When every required teacher has a MATCH it emits one agreed record with each teacher's kept
//! trace (on `agreed`); when a required teacher has used all its attempts without a MATCH it
//! emits a rejection (on `rejected`, kept for analysis); questions whose other verdicts never
//! come expire `expire_after_secs` after the first one, in event time (the judge's
//! `judged_at_ms`, see `clock`), and are rejected with that reason.
//!
//! # Layout
//! - `config`: settings. `join`: the per-question join state and its decisions. `clock`: the
//!   event time of each input partition, which expiry reads.
//! - `processor`: judged sample in -> agreed / rejected out.
//!
//! The join state is rebuilt from the `judged` partition itself when the partition is assigned
//! (the runtime's restore-from-input), so it survives restarts and moves with rebalances; the
//! output ids are a hash of the question and the teachers, so a replayed input produces no
//! second record downstream.

pub mod clock;
pub mod config;
pub mod join;
mod processor;

pub use config::AgreementSettings;
pub use processor::Agreement;
