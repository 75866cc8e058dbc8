//! Settings of a `judge` processor (`[processors.NAME.settings]`).

use distillery_openai::ClientSettings;
use serde::Deserialize;

/// The judge's default system prompt: the paper's Appendix A text, byte for byte (arXiv
/// 2511.19333; `prompts/SOURCES.md` says how its line breaks were restored). `prompt_file`
/// replaces it.
pub const DEFAULT_SYSTEM_PROMPT: &str = include_str!("../prompts/judge-appendix-a.txt");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSettings {
    /// Who decides: "rules-then-llm" (default: the rule verifier decides the clear cases, the
    /// LLM the rest), "rules-only", or "llm-only".
    #[serde(default)]
    pub mode: JudgeMode,
    /// Judge model name sent to the server.
    #[serde(default = "default_model")]
    pub model: String,
    /// The judge model's servers; required unless `mode = "rules-only"`.
    #[serde(default)]
    pub server: Option<ClientSettings>,
    /// File holding the system prompt, sent verbatim; the paper's Appendix A prompt when absent.
    #[serde(default)]
    pub prompt_file: Option<String>,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Room for the judge's own thinking before its verdict.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Times to ask again when a reply has no verdict (or thinking ran out of tokens), before
    /// recording ERROR.
    #[serde(default = "default_verdict_attempts")]
    pub verdict_attempts: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeMode {
    #[default]
    RulesThenLlm,
    RulesOnly,
    LlmOnly,
}

fn default_model() -> String {
    "Qwen/Qwen3-30B-A3B-Thinking-2507".into()
}
fn default_temperature() -> f64 {
    0.6
}
fn default_top_p() -> f64 {
    0.95
}
fn default_max_tokens() -> u32 {
    16_384
}
fn default_verdict_attempts() -> u32 {
    3
}

impl JudgeSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let s: JudgeSettings = table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        if s.mode != JudgeMode::RulesOnly && s.server.is_none() {
            return Err("the LLM judge needs `server` (or set mode = \"rules-only\")".into());
        }
        if s.verdict_attempts == 0 {
            return Err("verdict_attempts must be at least 1".into());
        }
        Ok(s)
    }

    /// The system prompt text.
    pub fn system_prompt(&self) -> Result<String, String> {
        match &self.prompt_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| format!("cannot read prompt_file {path}: {e}")),
            None => Ok(DEFAULT_SYSTEM_PROMPT.to_string()),
        }
    }
}
