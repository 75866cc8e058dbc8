//! Settings of a `sampler` processor (`[processors.NAME.settings]`), one instance group per
//! teacher.

use distillery_feeder::DatasetFile;
use distillery_openai::ClientSettings;
use serde::Deserialize;

/// The paper's math instruction around the problem.
pub const DEFAULT_PROMPT_TEMPLATE: &str =
    "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}.\n\n{problem}";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSettings {
    /// Teacher name recorded on every sample (e.g. "gpt-oss-120b"); the packers render by it.
    pub teacher: String,
    /// Model name sent to the server (e.g. "openai/gpt-oss-120b").
    pub model: String,
    /// A live teacher: its servers and client settings. Exactly one of `server` and `replay`.
    #[serde(default)]
    pub server: Option<ClientSettings>,
    /// A recorded teacher: serve traces from a dataset instead of calling a server.
    #[serde(default)]
    pub replay: Option<ReplaySettings>,
    /// System prompt; none by default (the paper used none for gpt-oss).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Text around the problem; `{problem}` marks where it goes.
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// gpt-oss reasoning effort ("low", "medium", "high"); sent only when set.
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Answers per question (attempts 0..N, each its own sample record).
    #[serde(default = "default_samples_per_question")]
    pub samples_per_question: u32,
    /// Base seed; attempt k sends seed + k. None lets the server choose.
    #[serde(default)]
    pub seed: Option<i64>,
}

/// Where recorded traces come from. The question ids are computed exactly as the feeder
/// computes them from the same `dataset` entry, so records match without a join key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySettings {
    /// The dataset file, described as in the feeder's `files`.
    pub dataset: DatasetFile,
    /// For non-Nemotron files: the field holding the recorded response (reasoning inline in
    /// `<think>…</think>`, or in `reasoning_field`).
    #[serde(default)]
    pub response_field: Option<String>,
    #[serde(default)]
    pub reasoning_field: Option<String>,
}

fn default_prompt_template() -> String {
    DEFAULT_PROMPT_TEMPLATE.into()
}
fn default_temperature() -> f64 {
    0.6
}
fn default_top_p() -> f64 {
    0.95
}
fn default_max_tokens() -> u32 {
    32_768
}
fn default_samples_per_question() -> u32 {
    1
}

impl SamplerSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let s: SamplerSettings = table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        match (&s.server, &s.replay) {
            (Some(_), Some(_)) => {
                return Err("set either `server` (a live teacher) or `replay` (recorded traces), not both".into())
            }
            (None, None) => return Err("set `server` (a live teacher) or `replay` (recorded traces)".into()),
            (None, Some(replay)) => {
                if s.samples_per_question != 1 {
                    return Err(
                        "a replay teacher has one recorded trace per question: samples_per_question must be 1".into()
                    );
                }
                if replay.dataset.format != distillery_feeder::RowFormat::Nemotron && replay.response_field.is_none() {
                    return Err("replay of a non-Nemotron file needs `response_field`".into());
                }
            }
            (Some(server), None) if server.endpoints.is_empty() => {
                return Err("server.endpoints lists no server".into())
            }
            _ => {}
        }
        if !s.prompt_template.contains("{problem}") {
            return Err("prompt_template must contain {problem}".into());
        }
        if s.samples_per_question == 0 {
            return Err("samples_per_question must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&s.temperature) || !(0.0..=1.0).contains(&s.top_p) {
            return Err("temperature must be in 0..=2 and top_p in 0..=1".into());
        }
        Ok(s)
    }

    /// The user message for a problem.
    pub fn prompt(&self, problem: &str) -> String {
        self.prompt_template.replace("{problem}", problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SamplerSettings, String> {
        SamplerSettings::from_table(&toml::from_str(text).unwrap())
    }

    #[test]
    fn a_live_teacher_with_defaults() {
        let s = parse(
            r#"teacher = "gpt-oss-120b"
model = "openai/gpt-oss-120b"
server = { endpoints = ["http://vllm:8000/v1"] }"#,
        )
        .unwrap();
        assert_eq!(s.max_tokens, 32_768);
        assert_eq!(s.system_prompt, None);
        assert!(s.prompt("2+2?").ends_with("inside \\boxed{}.\n\n2+2?"));
    }

    #[test]
    fn exactly_one_source_and_sane_sampling() {
        assert!(parse("teacher = \"t\"\nmodel = \"m\"").unwrap_err().contains("set `server`"));
        let both = "teacher = \"t\"\nmodel = \"m\"\nserver = { endpoints = [\"http://x/v1\"] }\nreplay = { dataset = { uri = \"f.parquet\", format = \"nemotron\" } }";
        assert!(parse(both).unwrap_err().contains("not both"));
        let replay_n = "teacher = \"t\"\nmodel = \"m\"\nsamples_per_question = 2\nreplay = { dataset = { uri = \"f.parquet\", format = \"nemotron\" } }";
        assert!(parse(replay_n).unwrap_err().contains("must be 1"));
        let hot = "teacher = \"t\"\nmodel = \"m\"\ntemperature = 7.0\nserver = { endpoints = [\"http://x/v1\"] }";
        assert!(parse(hot).unwrap_err().contains("temperature"));
        let typo = "teacher = \"t\"\nmodel = \"m\"\nserver = { endpoint = [\"http://x/v1\"] }";
        assert!(parse(typo).unwrap_err().contains("unknown field"));
    }
}
