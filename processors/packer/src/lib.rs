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
//!
//! Built so far: packing, the shard format, template rendering and masked tokenization. The
//! real tokenizers (Tekken, SmolLM2, GPT-2) and the processor itself come next (issue 4).

pub mod ffd;
pub mod shard;
pub mod template;
pub mod tokenize;
