//! A teacher that serves recorded traces. The recording (JSONL or Parquet, local or in an
//! object store) is read once at start-up; each question's trace goes into a scratch file
//! and only its offset stays in memory, so 300,000 long traces cost megabytes, not gigabytes.

use crate::config::ReplaySettings;
use distillery_feeder::read::{spawn_row_reader, RowItem};
use distillery_feeder::rows::question_from_row;
use distillery_feeder::RowFormat;
use distillery_openai::reasoning::split_think_tags;
use distillery_runtime::objects;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// One recorded answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub reasoning: Option<String>,
    pub answer: Option<String>,
}

pub struct RecordedTraces {
    pub source: String,
    scratch: std::fs::File,
    index: HashMap<String, (u64, usize)>,
    _dir: tempfile::TempDir,
}

impl RecordedTraces {
    /// Reads the whole recording; rows that are not a usable trace are skipped (counted and
    /// logged): their questions then get "no recorded trace" dead letters when they arrive.
    pub async fn load(settings: &ReplaySettings) -> anyhow::Result<RecordedTraces> {
        let dir = tempfile::tempdir()?;
        let file = &settings.dataset;
        let local = objects::local_copy(&file.uri, dir.path()).await?;
        let mut rows = spawn_row_reader(local, file.file_type(), file.limit);
        let scratch_path = dir.path().join("traces.jsonl");
        let mut writer = std::io::BufWriter::new(std::fs::File::create(&scratch_path)?);
        let mut index = HashMap::new();
        let (mut offset, mut unusable) = (0u64, 0usize);
        while let Some(item) = rows.recv().await {
            let (row_index, row) = match item {
                RowItem::Row { index, row: Ok(row), .. } => (index, row),
                RowItem::Row { .. } => {
                    unusable += 1;
                    continue;
                }
                RowItem::Failed(e) => anyhow::bail!("{}: {e}", file.uri),
            };
            let (Ok(question), Some(recorded)) =
                (question_from_row(&row, file, row_index), recorded_answer(&row, settings))
            else {
                unusable += 1;
                continue;
            };
            let bytes = serde_json::to_vec(&recorded)?;
            writer.write_all(&bytes)?;
            index.insert(question.id, (offset, bytes.len()));
            offset += bytes.len() as u64;
        }
        writer.flush()?;
        tracing::info!(source = %file.uri, traces = index.len(), unusable, "recorded traces loaded");
        let scratch = std::fs::File::open(&scratch_path)?;
        Ok(RecordedTraces { source: file.uri.clone(), scratch, index, _dir: dir })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The recorded answer to a question, if the recording has one.
    pub fn get(&self, question_id: &str) -> Option<anyhow::Result<Recorded>> {
        let &(offset, len) = self.index.get(question_id)?;
        let mut bytes = vec![0u8; len];
        Some(
            self.scratch
                .read_exact_at(&mut bytes, offset)
                .map_err(anyhow::Error::from)
                .and_then(|_| serde_json::from_slice(&bytes).map_err(anyhow::Error::from)),
        )
    }
}

/// The recorded answer in a row: a Nemotron row's assistant turn, or the configured fields.
fn recorded_answer(row: &Value, settings: &ReplaySettings) -> Option<Recorded> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let response = match settings.dataset.format {
        RowFormat::Nemotron => row["messages"]
            .as_array()?
            .iter()
            .rev()
            .find(|m| m["role"] == "assistant")
            .and_then(|m| text(&m["content"]))?,
        _ => text(&row[settings.response_field.as_deref()?])?,
    };
    let recorded = match settings.reasoning_field.as_deref().and_then(|f| text(&row[f])) {
        Some(reasoning) => Recorded { reasoning: Some(reasoning), answer: Some(response) },
        None => {
            let split = split_think_tags(&response);
            Recorded { reasoning: split.reasoning, answer: split.answer }
        }
    };
    Some(recorded)
}
