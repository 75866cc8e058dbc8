//! Settings of a `feeder` processor (`[processors.NAME.settings]`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeederSettings {
    /// Dataset files, published in order.
    pub files: Vec<DatasetFile>,
    /// Questions per second at most (0 = as fast as the broker takes them). Keeps a feeder
    /// from flooding teachers that bill per request.
    #[serde(default)]
    pub rate_limit_per_second: f64,
    /// Before publishing, read the questions (and dead letters) already on the topics and
    /// skip their ids: a re-run or a restart publishes nothing twice. The topic itself is the
    /// resume position.
    #[serde(default = "default_true")]
    pub skip_published: bool,
    /// Publishes awaiting the broker's acknowledgement at once.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_true() -> bool {
    true
}
fn default_max_pending() -> usize {
    1000
}

/// One input file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetFile {
    /// Local path, `file://` URL, or `s3://bucket/key`.
    pub uri: String,
    /// How rows map to questions.
    pub format: RowFormat,
    /// Dataset name recorded on each question and used in its id (defaults to the format).
    #[serde(default)]
    pub dataset: Option<String>,
    /// "jsonl", "parquet", or absent to decide by the file extension.
    #[serde(default)]
    pub file_type: Option<FileType>,
    /// Field names for format "fields" (they also override the defaults of other formats).
    #[serde(default)]
    pub problem_field: Option<String>,
    #[serde(default)]
    pub answer_field: Option<String>,
    /// Field holding a stable row id; without one the id is a hash of problem and answer.
    #[serde(default)]
    pub id_field: Option<String>,
    /// Publish only the first N rows (handy for quick runs).
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowFormat {
    /// nvidia/Nemotron-Post-Training-Dataset-v1: `uuid`, `messages` (the user turn is the
    /// problem), `metadata` (a JSON or Python-literal string with `expected_answer`).
    Nemotron,
    /// GSM8K: `question`, `answer` ending in `#### N` (thousands separators removed).
    Gsm8k,
    /// MATH-500: `problem`, `answer`, `unique_id`, `subject`, `level`.
    Math500,
    /// AIME: `problem`, `answer` (string or integer), optional `id`.
    Aime,
    /// Any JSONL/Parquet with `problem_field` and `answer_field` (and optional `id_field`).
    Fields,
}

impl RowFormat {
    pub fn name(self) -> &'static str {
        match self {
            RowFormat::Nemotron => "nemotron",
            RowFormat::Gsm8k => "gsm8k",
            RowFormat::Math500 => "math500",
            RowFormat::Aime => "aime",
            RowFormat::Fields => "fields",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Jsonl,
    Parquet,
}

impl DatasetFile {
    pub fn file_type(&self) -> FileType {
        self.file_type.unwrap_or(if self.uri.ends_with(".parquet") { FileType::Parquet } else { FileType::Jsonl })
    }

    pub fn dataset_name(&self) -> &str {
        self.dataset.as_deref().unwrap_or(self.format.name())
    }
}

impl FeederSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let settings: FeederSettings = table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        if settings.files.is_empty() {
            return Err("`files` lists no dataset file".into());
        }
        for file in &settings.files {
            if file.format == RowFormat::Fields && (file.problem_field.is_none() || file.answer_field.is_none()) {
                return Err(format!("{}: format \"fields\" needs problem_field and answer_field", file.uri));
            }
        }
        if settings.rate_limit_per_second < 0.0 || !settings.rate_limit_per_second.is_finite() {
            return Err("rate_limit_per_second must be a finite number >= 0".into());
        }
        if settings.max_pending == 0 {
            return Err("max_pending must be at least 1".into());
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let table: toml::Table = toml::from_str(
            r#"
            rate_limit_per_second = 50
            files = [
              { uri = "s3://datasets/nemotron/math-00000.parquet", format = "nemotron", dataset = "nemotron-v1-math" },
              { uri = "data/gsm8k.jsonl", format = "gsm8k", limit = 100 },
              { uri = "mine.jsonl", format = "fields", problem_field = "q", answer_field = "a", id_field = "key" },
            ]
            "#,
        )
        .unwrap();
        let s = FeederSettings::from_table(&table).unwrap();
        assert_eq!(s.files[0].file_type(), FileType::Parquet);
        assert_eq!(s.files[1].dataset_name(), "gsm8k");
        assert!(s.skip_published);
    }

    #[test]
    fn fields_format_needs_its_field_names() {
        let table: toml::Table = toml::from_str(r#"files = [{ uri = "x.jsonl", format = "fields" }]"#).unwrap();
        assert!(FeederSettings::from_table(&table).unwrap_err().contains("problem_field"));
    }
}
