//! What a run produced, read back from its topics and the object store once it stopped.

use super::pipeline::Pipeline;
use super::setup::{TeacherCalls, Teachers};
use super::{RunContext, STEADY_TRAINER};
use distillery_packer::shard::read_shard;
use distillery_runtime::objects::get_bytes;
use distillery_schemas::{decode, AgreedSample, CheckpointEvent, DeadLetter, ShardManifest, TeacherSample};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct ManifestTotals {
    pub shards: usize,
    pub rows: u64,
    pub sequences: u64,
    pub tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Default)]
pub struct Outcome {
    /// Question id -> the traces agreed on (teacher, sample id, answer).
    pub agreed: BTreeMap<String, Vec<(String, String, String)>>,
    pub rejected: BTreeSet<String>,
    /// Questions with two different decisions (different record ids or contents).
    pub conflicting_decisions: Vec<String>,
    /// Per style: sha256 of (input ids, loss mask) of each packed sequence -> how often.
    pub sequences: BTreeMap<String, BTreeMap<String, usize>>,
    pub manifest_totals: BTreeMap<String, ManifestTotals>,
    /// Question ids found in two different shards.
    pub questions_in_two_shards: Vec<String>,
    /// Manifests whose object is missing, partial, or disagrees with the manifest.
    pub bad_manifests: Vec<String>,
    /// Questions found both on `agreed` and on `rejected`.
    pub agreed_and_rejected: Vec<String>,
    /// "processor question: error" of every dead letter (distinct).
    pub dead_letters: BTreeSet<String>,
    pub trainer: Option<TrainerComparison>,
    pub unplanned_exits: Vec<(String, String, String)>,
    /// Distinct samples on `samples`, and what the teachers were asked for them.
    pub samples: usize,
    pub teacher_calls: TeacherCalls,
}

#[derive(Debug, Clone)]
pub struct TrainerComparison {
    pub steps: u64,
    pub shards: usize,
    pub weights_identical: bool,
    pub optimizer_identical: bool,
    pub same_shard_sequence: bool,
    /// Shard ids the killed trainer trained on twice.
    pub repeated_shards: usize,
    /// Whether its shard sequence is exactly the topic's distinct manifests, in order.
    pub follows_topic_order: bool,
}

impl Outcome {
    pub(crate) fn read(context: &RunContext, pipeline: &Pipeline, teachers: &Teachers) -> anyhow::Result<Outcome> {
        let mut outcome = Outcome {
            unplanned_exits: pipeline.unplanned_exits.clone(),
            teacher_calls: teachers.calls(),
            ..Outcome::default()
        };
        let samples: BTreeSet<String> = pipeline
            .read("samples")?
            .iter()
            .filter_map(|r| decode::<TeacherSample>(&r.payload).ok())
            .map(|s| s.id)
            .collect();
        outcome.samples = samples.len();
        let mut decisions: BTreeMap<String, (String, bool)> = BTreeMap::new();
        for topic in ["agreed", "rejected"] {
            for record in pipeline.read(topic)? {
                let sample: AgreedSample = decode(&record.payload)?;
                let previous = decisions.insert(sample.question_id.clone(), (sample.id.clone(), sample.accepted));
                if previous.is_some_and(|p| p != (sample.id.clone(), sample.accepted)) {
                    outcome.conflicting_decisions.push(sample.question_id.clone());
                }
                if sample.accepted {
                    let mut traces: Vec<_> = sample
                        .traces
                        .iter()
                        .map(|t| (t.teacher.clone(), t.sample_id.clone(), t.answer.clone().unwrap_or_default()))
                        .collect();
                    traces.sort();
                    outcome.agreed.insert(sample.question_id, traces);
                } else {
                    outcome.rejected.insert(sample.question_id);
                }
            }
        }
        let rejected_too: BTreeSet<&String> = outcome.agreed.keys().filter(|q| outcome.rejected.contains(*q)).collect();
        outcome.agreed_and_rejected = rejected_too.into_iter().cloned().collect();
        for record in pipeline.read("dead-letters")? {
            let letter: DeadLetter = decode(&record.payload)?;
            let key = letter.key.unwrap_or_default();
            outcome.dead_letters.insert(format!("{} {key}: {}", letter.processor, letter.error));
        }

        let mut shard_order_a = Vec::new();
        for style in ["a", "b"] {
            let mut manifests: BTreeMap<String, ShardManifest> = BTreeMap::new();
            let mut order = Vec::new();
            for record in pipeline.read(&format!("shards.{style}"))? {
                let manifest: ShardManifest = decode(&record.payload)?;
                match manifests.get(&manifest.id) {
                    Some(seen) if seen.sha256 != manifest.sha256 || seen.uri != manifest.uri => {
                        outcome.bad_manifests.push(format!("{}: published twice with different shards", manifest.id));
                    }
                    Some(_) => {}
                    None => {
                        order.push(manifest.id.clone());
                        manifests.insert(manifest.id.clone(), manifest);
                    }
                }
            }
            let totals = outcome.manifest_totals.entry(style.to_string()).or_default();
            let sequences = outcome.sequences.entry(style.to_string()).or_default();
            let mut shard_of_question: BTreeMap<String, String> = BTreeMap::new();
            for manifest in manifests.values() {
                totals.shards += 1;
                totals.rows += manifest.rows as u64;
                totals.sequences += manifest.sequences as u64;
                totals.tokens += manifest.tokens as u64;
                totals.completion_tokens += manifest.completion_tokens as u64;
                for question in &manifest.question_ids {
                    if shard_of_question.insert(question.clone(), manifest.id.clone()).is_some() {
                        outcome.questions_in_two_shards.push(question.clone());
                    }
                }
                let shard = context
                    .runtime
                    .block_on(get_bytes(&manifest.uri))
                    .and_then(|bytes| read_shard(&bytes, Some(&manifest.sha256)).map(|s| (bytes.len(), s)));
                let (bytes, shard) = match shard {
                    Ok(shard) => shard,
                    Err(e) => {
                        outcome.bad_manifests.push(format!("{}: {e:#}", manifest.uri));
                        continue;
                    }
                };
                let mask_total: u64 = shard.loss_mask.iter().map(|m| *m as u64).sum();
                if bytes as i64 != manifest.bytes
                    || shard.cu_seqlens.len() as i64 - 1 != manifest.sequences as i64
                    || shard.row_offsets.len() as i64 - 1 != manifest.rows as i64
                    || shard.input_ids.len() as i64 != manifest.tokens
                    || mask_total as i64 != manifest.completion_tokens
                {
                    outcome.bad_manifests.push(format!("{}: counts disagree with the shard file", manifest.uri));
                }
                for bounds in shard.cu_seqlens.windows(2) {
                    let (start, end) = (bounds[0] as usize, bounds[1] as usize);
                    let mut hasher = Sha256::new();
                    for id in &shard.input_ids[start..end] {
                        hasher.update(id.to_le_bytes());
                    }
                    hasher.update(&shard.loss_mask[start..end]);
                    *sequences.entry(hex::encode(hasher.finalize())).or_insert(0) += 1;
                }
            }
            if style == "a" {
                shard_order_a = order;
            }
        }
        if pipeline.with_trainers {
            outcome.trainer = Some(compare_trainers(context, pipeline, &shard_order_a)?);
        }
        Ok(outcome)
    }

    pub fn summary(&self) -> String {
        let sequences: usize = self.sequences.values().flat_map(|s| s.values()).sum();
        format!(
            "{} agreed, {} rejected, {} packed sequences in {} shards, {} dead letters",
            self.agreed.len(),
            self.rejected.len(),
            sequences,
            self.manifest_totals.values().map(|t| t.shards).sum::<usize>(),
            self.dead_letters.len()
        )
    }
}

/// The killed trainer against its never-killed twin: final weights, optimizer state and the
/// shards each trained on.
fn compare_trainers(
    context: &RunContext,
    pipeline: &Pipeline,
    topic_order: &[String],
) -> anyhow::Result<TrainerComparison> {
    let finals: BTreeMap<String, CheckpointEvent> = pipeline
        .read("checkpoints")?
        .iter()
        .map(|r| decode::<CheckpointEvent>(&r.payload))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|c| c.is_final)
        .map(|c| (c.run.rsplit('/').next().unwrap_or_default().to_string(), c))
        .collect();
    let file = |trainer: &str, name: &str| -> anyhow::Result<Vec<u8>> {
        let event = finals.get(trainer).ok_or_else(|| anyhow::anyhow!("no final checkpoint of {trainer}"))?;
        context.runtime.block_on(get_bytes(&format!("{}/{name}", event.uri.trim_end_matches('/'))))
    };
    let shard_ids = |trainer: &str| -> anyhow::Result<Vec<String>> {
        let state: serde_json::Value = serde_json::from_slice(&file(trainer, "trainer_state.json")?)?;
        Ok(serde_json::from_value(state["shard_ids"].clone())?)
    };
    let (killed, steady) = (shard_ids("trainer-a")?, shard_ids(STEADY_TRAINER)?);
    let distinct: BTreeSet<&String> = killed.iter().collect();
    Ok(TrainerComparison {
        steps: finals.get("trainer-a").map_or(0, |e| e.step as u64),
        shards: killed.len(),
        weights_identical: file("trainer-a", "model.safetensors")? == file(STEADY_TRAINER, "model.safetensors")?,
        optimizer_identical: file("trainer-a", "optimizer.safetensors")?
            == file(STEADY_TRAINER, "optimizer.safetensors")?,
        same_shard_sequence: killed == steady,
        repeated_shards: killed.len() - distinct.len(),
        follows_topic_order: topic_order.starts_with(&killed),
    })
}
