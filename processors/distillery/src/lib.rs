//! The `distillery` command line's library: the registry of processor types, the quickstart
//! and the benchmarks. `main.rs` only parses flags and calls into here.
//!
//! # Layout
//! - `registry`: the one list of processor types (ports, settings check, constructor).
//! - `quickstart`: the whole embedded pipeline in one process.
//! - `replay`: a new experiment from a retained topic of an earlier one.
//! - `report`: the paper's report from an experiment's eval-results and train-metrics.
//! - `bench`: `distillery bench ...`, each against a baseline measured in the same run.
//! - `torchrun`: the torch trainer engine's launcher (`engine = "torch"`).

pub mod bench;
pub mod chaos;
pub mod progress;
pub mod quickstart;
pub mod registry;
pub mod replay;
pub mod report;
pub mod torchrun;
