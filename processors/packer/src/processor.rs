//! Agreed sample in; shard manifests out (after the shard is complete in the object store).
//!
//! `process` only holds the sample's sequence (packed by online FFD into rows); the tick cuts
//! shards from the sealed rows, uploads them and publishes their manifests. The held state is
//! per partition of `agreed` and follows it: a replica that loses a partition drops its
//! sequences, and the next owner rebuilds them from the partition, minus the questions in
//! published manifests. A question counts as shipped only once its manifest is acknowledged,
//! so an upload cut short by a rebalance, a kill or a store outage is redone, never lost.

use crate::config::PackerSettings;
use crate::ffd::{OnlinePacker, PackingSettings, Row, Sequence};
use crate::shard::{build_shard, ShardOrigin, TokenizedSequence};
use crate::template::ChatTemplate;
use crate::tokenize::StudentTokenizer;
use distillery_runtime::objects::{get_bytes, put_new};
use distillery_runtime::{
    Assignment, Emit, OutputScope, Outputs, PartitionId, PortSpec, ProcessError, Processor, RecordContext,
    RestoredOutput,
};
use distillery_schemas::{decode, now_ms, AgreedSample, RecordKind, ShardManifest};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Packer {
    settings: PackerSettings,
    template: ChatTemplate,
    tokenizer: StudentTokenizer,
    state: Mutex<State>,
}

/// What the packer holds between records, for the partitions it holds. Rebuilt on every
/// assignment: the questions already in published shards from the manifests
/// (`restore_output`), the rest from the input (`restore`). Sequences of partitions taken away
/// are dropped (`on_revoked`): their next owner ships them.
struct State {
    /// The partitions held, by the generation of their assignment.
    owned: HashMap<PartitionId, u64>,
    packer: OnlinePacker<TokenizedSequence>,
    /// Sealed rows waiting to fill a shard.
    sealed: Vec<Row<TokenizedSequence>>,
    /// Questions held (in the window, open rows or sealed rows), with the partition they came
    /// from: a shard is published only while all of its questions' partitions are held.
    held: HashMap<String, Assignment>,
    /// Questions in published shards (acknowledged manifests: facts that never expire).
    shipped: HashSet<String>,
    next_shard_index: i64,
    last_input: Instant,
}

/// A shard cut from the sealed rows, not yet published.
struct Shipment {
    index: i64,
    rows: Vec<Row<TokenizedSequence>>,
    /// The partitions its questions came from.
    owners: Vec<Assignment>,
    /// Cut because the input went idle (everything held goes out).
    flush: bool,
}

impl Packer {
    /// Loads the student's tokenizer and chat template: the template of the configured
    /// `tokenizer_config.json`, else the GGUF file's own.
    pub async fn new(settings: PackerSettings) -> anyhow::Result<Packer> {
        let bytes = get_bytes(&settings.tokenizer).await?;
        let config = settings.tokenizer_config.as_deref();
        let (tokenizer, template) = if crate::gguf::is_gguf(&bytes) {
            let gguf = crate::gguf::tokenizer_from_gguf_bytes(&bytes)?;
            let template = match config {
                Some(url) => template_from_config(url).await?,
                None => gguf.template()?,
            };
            (gguf.tokenizer, template)
        } else {
            let url = config.ok_or_else(|| {
                anyhow::anyhow!("{} is not a GGUF file; configure a tokenizer_config", settings.tokenizer)
            })?;
            (StudentTokenizer::from_bytes(&bytes)?, template_from_config(url).await?)
        };
        let mut packing = PackingSettings::new(settings.row_tokens);
        packing.window_sequences = settings.window_sequences;
        packing.max_open_rows = settings.max_open_rows;
        let state = State {
            owned: HashMap::new(),
            packer: OnlinePacker::new(packing),
            sealed: Vec::new(),
            held: HashMap::new(),
            shipped: HashSet::new(),
            next_shard_index: 0,
            last_input: Instant::now(),
        };
        Ok(Packer { settings, template, tokenizer, state: Mutex::new(state) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renders and tokenizes this packer's style of an agreed sample.
    fn sequence(&self, agreed: &AgreedSample) -> Result<TokenizedSequence, ProcessError> {
        let style = &self.settings.style;
        let trace = agreed.traces.iter().find(|t| &t.teacher == style).ok_or_else(|| {
            ProcessError::rejected(format!("question {} has no trace from teacher {style}", agreed.question_id))
        })?;
        let user = self.settings.prompt_template.replace("{problem}", &agreed.problem);
        let rendered = self
            .template
            .render_trace(
                self.settings.system_prompt.as_deref(),
                &user,
                trace.reasoning.as_deref(),
                trace.answer.as_deref(),
            )
            .map_err(|e| ProcessError::rejected(format!("cannot render with the chat template: {e:#}")))?;
        let mut sequence = self
            .tokenizer
            .tokenize(&agreed.question_id, &rendered)
            .map_err(|e| ProcessError::rejected(format!("cannot tokenize: {e:#}")))?;
        let (len, capacity) = (sequence.input_ids.len(), self.settings.row_tokens);
        if len > capacity {
            if self.settings.too_long != "truncate" {
                return Err(ProcessError::rejected(format!(
                    "sequence of {len} tokens is longer than a row ({capacity} tokens)"
                )));
            }
            sequence.input_ids.truncate(capacity);
            sequence.loss_mask.truncate(capacity);
        }
        Ok(sequence)
    }

    /// Holds a sequence of a partition held under `owner`, unless its question is already
    /// held or shipped. A stale call (the partition was revoked meanwhile) holds nothing.
    fn hold(&self, owner: Assignment, sequence: TokenizedSequence) {
        let mut state = self.state();
        if state.owned.get(&owner.partition) != Some(&owner.generation) {
            return;
        }
        state.last_input = Instant::now();
        let question = &sequence.question_id;
        if state.shipped.contains(question) || state.held.contains_key(question) {
            return;
        }
        state.held.insert(question.clone(), owner);
        let tokens = sequence.input_ids.len();
        // Lengths were checked against the row capacity above.
        if let Ok(rows) = state.packer.push(Sequence { tokens, item: sequence }) {
            state.sealed.extend(rows);
        }
    }

    /// The next shard to publish: a full one, or, once no sample came for
    /// `flush_idle_secs`, whatever is held. The rows stay held until it is published.
    fn next_shipment(&self) -> Option<Shipment> {
        let mut state = self.state();
        let idle =
            !state.held.is_empty() && state.last_input.elapsed() >= Duration::from_secs(self.settings.flush_idle_secs);
        if idle {
            let rest = state.packer.finish();
            state.sealed.extend(rest);
        }
        let per_shard = self.settings.rows_per_shard;
        let (full, last) = (state.sealed.len() >= per_shard, idle && !state.sealed.is_empty());
        if !full && !last {
            return None;
        }
        let rows: Vec<_> = state.sealed[..per_shard.min(state.sealed.len())].to_vec();
        let mut owners: Vec<Assignment> = rows
            .iter()
            .flat_map(|row| &row.sequences)
            .filter_map(|s| state.held.get(&s.item.question_id).cloned())
            .collect();
        owners.sort();
        owners.dedup();
        Some(Shipment { index: state.next_shard_index, rows, owners, flush: idle })
    }

    /// Records a published shard: its questions are shipped, its rows no longer held.
    fn shipped(&self, shipment: &Shipment) {
        let mut state = self.state();
        let questions: HashSet<&str> =
            shipment.rows.iter().flat_map(|row| &row.sequences).map(|s| s.item.question_id.as_str()).collect();
        state.sealed.retain(|row| !row.sequences.iter().any(|s| questions.contains(s.item.question_id.as_str())));
        for question in questions {
            state.held.remove(question);
            state.shipped.insert(question.to_string());
        }
        state.next_shard_index = state.next_shard_index.max(shipment.index + 1);
    }

    /// Writes a shard and its JSON manifest (never overwriting: the same rows give the same
    /// bytes and the same name), then returns the manifest record to publish. One attempt
    /// (the object store retries within it); the next tick tries again.
    async fn upload(&self, shipment: &Shipment) -> anyhow::Result<Emit> {
        let index = shipment.index;
        let origin = ShardOrigin {
            style: self.settings.style.clone(),
            shard_index: index,
            row_capacity: self.settings.row_tokens,
            tokenizer_sha256: self.tokenizer.sha256.clone(),
            template_sha256: self.template.sha256.clone(),
        };
        let (bytes, manifest) = build_shard(&shipment.rows, &origin)?;
        let base = format!("{}/shard-{index:06}-{}", self.settings.store.trim_end_matches('/'), &manifest.sha256[..16]);
        let (uri, manifest_uri) = (format!("{base}.safetensors"), format!("{base}.json"));
        tracing::info!(%uri, rows = manifest.rows, sequences = manifest.sequences, flush = shipment.flush, "shipping shard");
        put_new(&uri, bytes).await?;
        put_new(&manifest_uri, serde_json::to_vec_pretty(&manifest)?).await?;
        let record = ShardManifest {
            id: manifest.sha256.clone(),
            style: manifest.style,
            shard_index: index,
            uri,
            manifest_uri,
            format: "safetensors".into(),
            bytes: manifest.bytes as i64,
            sha256: manifest.sha256,
            rows: manifest.rows as i32,
            sequences: manifest.sequences as i32,
            tokens: manifest.tokens as i64,
            completion_tokens: manifest.completion_tokens as i64,
            row_capacity: manifest.row_capacity as i32,
            fill_ratio: manifest.fill_ratio,
            tokenizer_sha256: manifest.tokenizer_sha256,
            template_sha256: manifest.template_sha256,
            question_ids: manifest.question_ids,
            created_at_ms: now_ms(),
        };
        Ok(Emit::record("shards", &record)?)
    }
}

/// The chat template of a `tokenizer_config.json` (path or object-store URL).
async fn template_from_config(url: &str) -> anyhow::Result<ChatTemplate> {
    ChatTemplate::from_tokenizer_config(&String::from_utf8(get_bytes(url).await?)?)
}

impl Processor for Packer {
    type Input = AgreedSample;
    const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "shards", kind: RecordKind::ShardManifest }];
    const RESTORES_FROM_INPUT: bool = true;
    const RESTORES_FROM_OUTPUTS: &'static [RestoredOutput] =
        &[RestoredOutput { port: "shards", scope: OutputScope::WholeTopic }];

    /// Holds the sample's sequence; shards are cut and published by the tick.
    async fn process(&self, agreed: AgreedSample, ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        if !agreed.accepted {
            return Ok(Vec::new()); // a rejection is not training data
        }
        self.hold(ctx.assignment(), self.sequence(&agreed)?);
        Ok(Vec::new())
    }

    async fn on_assigned(&self, assigned: &[Assignment]) {
        let mut state = self.state();
        state.owned.extend(assigned.iter().map(|a| (a.partition.clone(), a.generation)));
    }

    async fn on_revoked(&self, partitions: &[PartitionId]) {
        let mut state = self.state();
        let State { owned, packer, sealed, held, .. } = &mut *state;
        for p in partitions {
            owned.remove(p);
        }
        let kept = |s: &TokenizedSequence| held.get(&s.question_id).is_some_and(|a| !partitions.contains(&a.partition));
        packer.retain(&kept);
        for row in sealed.iter_mut() {
            row.sequences.retain(|s| kept(&s.item));
            row.tokens = row.sequences.iter().map(|s| s.tokens).sum();
        }
        sealed.retain(|row| !row.sequences.is_empty());
        held.retain(|_, a| !partitions.contains(&a.partition));
    }

    async fn restore_output(&self, _port: &str, _owner: Option<&Assignment>, payload: &[u8]) {
        let Ok(manifest) = decode::<ShardManifest>(payload) else { return };
        if manifest.style != self.settings.style {
            return;
        }
        let mut state = self.state();
        state.next_shard_index = state.next_shard_index.max(manifest.shard_index + 1);
        state.shipped.extend(manifest.question_ids);
    }

    async fn restore(&self, agreed: AgreedSample, ctx: &RecordContext) {
        if agreed.accepted {
            if let Ok(sequence) = self.sequence(&agreed) {
                self.hold(ctx.assignment(), sequence);
            }
        }
    }

    /// Publishes the shards that are due, one at a time: upload, publish the manifest (only
    /// while every partition its questions came from is still held), then count its questions
    /// as shipped. A failure leaves the rows held for the next tick.
    async fn on_tick(&self, outputs: &Outputs) {
        while let Some(shipment) = self.next_shipment() {
            let emit = match self.upload(&shipment).await {
                Ok(emit) => emit,
                Err(e) => {
                    tracing::warn!(shard = shipment.index, "shard upload failed (retried at the next tick): {e:#}");
                    return;
                }
            };
            if let Err(e) = outputs.publish(std::slice::from_ref(&emit), &shipment.owners).await {
                tracing::warn!(shard = shipment.index, "shard manifest not published: {e}");
                return;
            }
            self.shipped(&shipment);
            let style = self.settings.style.clone();
            metrics::counter!("distillery_packer_shards_total", "style" => style.clone()).increment(1);
            let manifest = decode::<ShardManifest>(&emit.payload).ok();
            if let Some(m) = &manifest {
                metrics::gauge!("distillery_packer_shard_fill", "style" => style).set(m.fill_ratio);
                tracing::info!(uri = %m.uri, rows = m.rows, sequences = m.sequences, fill = m.fill_ratio, "shard published");
            }
        }
    }
}
