//! Settings of an `agreement` processor (`[processors.NAME.settings]`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgreementSettings {
    /// Teachers that must all have a MATCH (default: the paper's two).
    #[serde(default = "default_required_teachers")]
    pub required_teachers: Vec<String>,
    /// Attempts each teacher makes per question (its sampler's `samples_per_question`): a
    /// teacher fails a question once this many verdicts came without a MATCH.
    #[serde(default = "default_attempts")]
    pub attempts_per_teacher: u32,
    /// Which MATCH to keep when a teacher has several: "first" (lowest attempt) or
    /// "shortest" (fewest completion tokens, then shortest text).
    #[serde(default)]
    pub keep: Keep,
    /// A question still missing verdicts this long after its first verdict is rejected as
    /// expired (and reported), not kept waiting forever. Measured in event time (the
    /// verdicts' `judged_at_ms`, and wall time once the input goes quiet), so a replay of an
    /// old experiment expires nothing early.
    #[serde(default = "default_expire_after_secs")]
    pub expire_after_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    #[default]
    First,
    Shortest,
}

fn default_required_teachers() -> Vec<String> {
    vec!["gpt-oss-120b".into(), "deepseek-r1".into()]
}
fn default_attempts() -> u32 {
    1
}
fn default_expire_after_secs() -> u64 {
    7 * 24 * 3600
}

impl AgreementSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let s: AgreementSettings = table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        if s.required_teachers.is_empty() {
            return Err("required_teachers lists no teacher".into());
        }
        if s.attempts_per_teacher == 0 {
            return Err("attempts_per_teacher must be at least 1".into());
        }
        Ok(s)
    }
}
