//! Settings of a `packer` processor (`[processors.NAME.settings]`), one instance group per
//! teacher style.

use serde::Deserialize;

/// The user turn the student sees: the paper's math instruction around the problem (the same
/// default the samplers send to the teachers).
pub const DEFAULT_PROMPT_TEMPLATE: &str =
    "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}.\n\n{problem}";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackerSettings {
    /// The teacher whose traces this packer renders (its name in the agreed records).
    pub style: String,
    /// The student's `tokenizer.json`, Tekken file or GGUF model file (path or object-store
    /// URL).
    pub tokenizer: String,
    /// The student's `tokenizer_config.json`, whose `chat_template` renders the samples. May be
    /// left out when `tokenizer` is a `.gguf` file: its own `tokenizer.chat_template` is used.
    #[serde(default)]
    pub tokenizer_config: Option<String>,
    /// Where shards go: a folder path, `file://` or `s3://bucket/prefix` URL.
    pub store: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// Tokens per packed row (the paper: 60,000).
    #[serde(default = "default_row_tokens")]
    pub row_tokens: usize,
    /// Rows per shard (one global batch, 64 in the paper).
    #[serde(default = "default_rows_per_shard")]
    pub rows_per_shard: usize,
    /// Only "first-fit-decreasing".
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Sequences held back before placing (bounded memory, closer to offline FFD when larger).
    #[serde(default = "default_window_sequences")]
    pub window_sequences: usize,
    /// Rows open at once.
    #[serde(default = "default_max_open_rows")]
    pub max_open_rows: usize,
    /// Sequences longer than a row: "dead-letter" (default, with their length) or "truncate".
    #[serde(default = "default_too_long")]
    pub too_long: String,
    /// With no new sample for this long, everything held is packed into a last, partial shard
    /// (the end of a stream).
    #[serde(default = "default_flush_idle_secs")]
    pub flush_idle_secs: u64,
}

fn default_prompt_template() -> String {
    DEFAULT_PROMPT_TEMPLATE.into()
}
fn default_row_tokens() -> usize {
    60_000
}
fn default_rows_per_shard() -> usize {
    64
}
fn default_algorithm() -> String {
    "first-fit-decreasing".into()
}
fn default_window_sequences() -> usize {
    2048
}
fn default_max_open_rows() -> usize {
    64
}
fn default_too_long() -> String {
    "dead-letter".into()
}
fn default_flush_idle_secs() -> u64 {
    300
}

impl PackerSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let s: PackerSettings = table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        if s.algorithm != "first-fit-decreasing" {
            return Err(format!("algorithm '{}' is not supported (only first-fit-decreasing)", s.algorithm));
        }
        if !["dead-letter", "truncate"].contains(&s.too_long.as_str()) {
            return Err("too_long must be \"dead-letter\" or \"truncate\"".into());
        }
        if s.row_tokens == 0 || s.rows_per_shard == 0 || s.window_sequences == 0 || s.max_open_rows == 0 {
            return Err("row_tokens, rows_per_shard, window_sequences and max_open_rows must be at least 1".into());
        }
        if s.tokenizer_config.is_none() && !s.tokenizer.ends_with(".gguf") {
            return Err(
                "tokenizer_config is required unless tokenizer is a .gguf file (which carries its chat template)"
                    .into(),
            );
        }
        if !s.prompt_template.contains("{problem}") {
            return Err("prompt_template must contain {problem}".into());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Result<PackerSettings, String> {
        let text = format!("style = \"a\"\nstore = \"/tmp/s\"\n{extra}");
        PackerSettings::from_table(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn the_tokenizer_config_may_be_left_out_only_for_gguf_files() {
        assert!(settings("tokenizer = \"m/SmolLM2.gguf\"").unwrap().tokenizer_config.is_none());
        assert!(settings("tokenizer = \"t.json\"\ntokenizer_config = \"c.json\"").is_ok());
        assert!(settings("tokenizer = \"t.json\"").unwrap_err().contains("tokenizer_config is required"));
    }
}
