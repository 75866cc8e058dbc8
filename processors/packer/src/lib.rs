//! The packer (one instance group per teacher style): renders each agreed sample with the
//! student's chat template, tokenizes it with a loss mask on the completion, packs sequences
//! into fixed-size rows by online first-fit-decreasing, and writes shards of rows to the
//! object store before publishing their manifests.
//!
//! # Layout
//! - `ffd`: online first-fit-decreasing over a bounded window, and offline FFD (the
//!   reference its fill ratio is measured against).
//! - `shard`: the shard file (safetensors: tokens, loss mask, positions, boundaries) and its
//!   JSON manifest.
//! - `template`: the student's Jinja chat template (minijinja) and where the completion starts.
//! - `tokenize`: token ids and the completion loss mask (`tokenizers`).
//! - `config`: settings. `processor`: agreed sample in -> shard manifests out, restart-safe:
//!   the questions in published shards are learned from the manifests, the rest rebuilt from
//!   the input.
//!
//! - `nemo`: `distillery export nemo`, shards to NeMo's packed-sequence `.npy`.
//! - `tekken`: Mistral's Tekken tokenizer files converted to a Hugging Face BPE.
//! - `gguf`: the tokenizer and chat template in a GGUF model file's metadata (SmolLM2).

pub mod config;
pub mod ffd;
pub mod gguf;
pub mod nemo;
mod processor;
pub mod shard;
pub mod tekken;
pub mod template;
pub mod tokenize;

pub use config::PackerSettings;
pub use processor::Packer;
