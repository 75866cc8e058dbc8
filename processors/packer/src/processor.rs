//! Agreed sample in; shard manifests out (after the shard is complete in the object store).

use crate::config::PackerSettings;
use crate::ffd::{OnlinePacker, PackingSettings, Row, Sequence};
use crate::shard::{build_shard, ShardOrigin, TokenizedSequence};
use crate::template::ChatTemplate;
use crate::tokenize::StudentTokenizer;
use backon::{ExponentialBuilder, Retryable};
use distillery_runtime::objects::{get_bytes, put_new};
use distillery_runtime::{Emit, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{decode, now_ms, AgreedSample, RecordKind, ShardManifest};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Packer {
    settings: PackerSettings,
    template: ChatTemplate,
    tokenizer: StudentTokenizer,
    state: Mutex<State>,
}

/// What the packer holds between records. Rebuilt after a restart: the questions already in
/// published shards from the manifests (restore_output), the rest from the input (restore).
struct State {
    packer: OnlinePacker<TokenizedSequence>,
    /// Sealed rows waiting to fill a shard.
    sealed: Vec<Row<TokenizedSequence>>,
    /// Questions held (in the window, open rows or sealed rows).
    held: HashSet<String>,
    /// Questions in published shards.
    shipped: HashSet<String>,
    next_shard_index: i64,
    last_input: Instant,
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
            packer: OnlinePacker::new(packing),
            sealed: Vec::new(),
            held: HashSet::new(),
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

    /// Holds a sequence unless its question is already held or shipped.
    fn hold(&self, sequence: TokenizedSequence) {
        let mut state = self.state();
        state.last_input = Instant::now();
        if state.shipped.contains(&sequence.question_id) || !state.held.insert(sequence.question_id.clone()) {
            return;
        }
        let tokens = sequence.input_ids.len();
        // Lengths were checked against the row capacity above.
        if let Ok(rows) = state.packer.push(Sequence { tokens, item: sequence }) {
            state.sealed.extend(rows);
        }
    }

    /// Takes full shards (and, when `flush`, everything held) out of the state, numbered.
    fn cut_shards(&self, flush: bool) -> Vec<(i64, Vec<Row<TokenizedSequence>>)> {
        let mut state = self.state();
        if flush {
            let rest = state.packer.finish();
            state.sealed.extend(rest);
        }
        let per_shard = self.settings.rows_per_shard;
        let mut shards = Vec::new();
        while state.sealed.len() >= per_shard || (flush && !state.sealed.is_empty()) {
            let take = per_shard.min(state.sealed.len());
            let rows: Vec<_> = state.sealed.drain(..take).collect();
            for row in &rows {
                for s in &row.sequences {
                    state.held.remove(&s.item.question_id);
                    state.shipped.insert(s.item.question_id.clone());
                }
            }
            let index = state.next_shard_index;
            state.next_shard_index += 1;
            shards.push((index, rows));
        }
        shards
    }

    /// Writes a shard and its JSON manifest (never overwriting), then returns the manifest
    /// record to publish. Uploads retry until the store answers: a store outage pauses the
    /// pipeline; it never publishes a manifest for a missing or partial shard.
    async fn ship(&self, index: i64, rows: Vec<Row<TokenizedSequence>>) -> Result<Emit, ProcessError> {
        let origin = ShardOrigin {
            style: self.settings.style.clone(),
            shard_index: index,
            row_capacity: self.settings.row_tokens,
            tokenizer_sha256: self.tokenizer.sha256.clone(),
            template_sha256: self.template.sha256.clone(),
        };
        let (bytes, manifest) = build_shard(&rows, &origin).map_err(|e| ProcessError::internal(format!("{e:#}")))?;
        let base = format!("{}/shard-{index:06}-{}", self.settings.store.trim_end_matches('/'), &manifest.sha256[..16]);
        let (uri, manifest_uri) = (format!("{base}.safetensors"), format!("{base}.json"));
        let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| ProcessError::internal(e.to_string()))?;
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(usize::MAX)
            .with_jitter();
        (|| put_new(&uri, bytes.clone()))
            .retry(retry)
            .notify(|e, d| tracing::warn!(%uri, "shard upload failed, retrying in {d:?}: {e:#}"))
            .await
            .map_err(|e| ProcessError::external(format!("{e:#}")))?;
        (|| put_new(&manifest_uri, manifest_json.clone()))
            .retry(retry)
            .await
            .map_err(|e| ProcessError::external(format!("{e:#}")))?;
        metrics::counter!("distillery_packer_shards_total", "style" => self.settings.style.clone()).increment(1);
        metrics::gauge!("distillery_packer_shard_fill", "style" => self.settings.style.clone())
            .set(manifest.fill_ratio);
        tracing::info!(%uri, rows = manifest.rows, sequences = manifest.sequences, fill = manifest.fill_ratio, "shard published");
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
        Emit::record("shards", &record)
    }

    async fn ship_all(&self, shards: Vec<(i64, Vec<Row<TokenizedSequence>>)>) -> Result<Vec<Emit>, ProcessError> {
        let mut emits = Vec::with_capacity(shards.len());
        for (index, rows) in shards {
            emits.push(self.ship(index, rows).await?);
        }
        Ok(emits)
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
    const RESTORES_FROM_OUTPUTS: &'static [&'static str] = &["shards"];

    async fn process(&self, agreed: AgreedSample, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        if !agreed.accepted {
            return Ok(Vec::new()); // a rejection is not training data
        }
        self.hold(self.sequence(&agreed)?);
        let shards = self.cut_shards(false);
        self.ship_all(shards).await
    }

    async fn restore_output(&self, _port: &str, payload: &[u8]) {
        let Ok(manifest) = decode::<ShardManifest>(payload) else { return };
        if manifest.style != self.settings.style {
            return;
        }
        let mut state = self.state();
        state.next_shard_index = state.next_shard_index.max(manifest.shard_index + 1);
        state.shipped.extend(manifest.question_ids);
    }

    async fn restore(&self, agreed: AgreedSample, _ctx: &RecordContext) {
        if agreed.accepted {
            if let Ok(sequence) = self.sequence(&agreed) {
                self.hold(sequence);
            }
        }
    }

    async fn on_tick(&self) -> Vec<Emit> {
        let idle = {
            let state = self.state();
            !state.held.is_empty() && state.last_input.elapsed() >= Duration::from_secs(self.settings.flush_idle_secs)
        };
        let shards = self.cut_shards(idle);
        if shards.is_empty() {
            return Vec::new();
        }
        match self.ship_all(shards).await {
            Ok(emits) => emits,
            Err(e) => {
                tracing::error!("flushing the held rows failed: {e}");
                Vec::new()
            }
        }
    }
}
