//! Sample in, judged sample out.

use crate::config::{JudgeMode, JudgeSettings};
use crate::llm::LlmJudge;
use crate::verify::{verify, RuleVerdict};
use distillery_openai::LlmError;
use distillery_runtime::{Emit, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{now_ms, stable_id, JudgeMethod, JudgedSample, RecordKind, TeacherSample, Verdict};

pub struct Judge {
    settings: JudgeSettings,
    llm: Option<LlmJudge>,
    /// Identifies this judge's configuration: a re-judge with another prompt or model writes
    /// records with other ids.
    config_id: String,
}

/// What decided, for one sample.
struct Decision {
    verdict: Verdict,
    method: JudgeMethod,
    extracted: Option<String>,
    judge_output: Option<String>,
    detail: String,
}

impl Judge {
    pub fn new(name: &str, settings: JudgeSettings) -> anyhow::Result<Judge> {
        let system_prompt = settings.system_prompt().map_err(anyhow::Error::msg)?;
        let llm = match (&settings.mode, &settings.server) {
            (JudgeMode::RulesOnly, _) => None,
            (_, Some(_)) => Some(LlmJudge::new(name, &settings, system_prompt.clone()).map_err(anyhow::Error::msg)?),
            (_, None) => anyhow::bail!("judge '{name}': the LLM judge needs `server`"),
        };
        let mode = format!("{:?}", settings.mode);
        let config_id = stable_id(&[&mode, &settings.model, &system_prompt]);
        Ok(Judge { settings, llm, config_id })
    }

    async fn ask_llm(&self, llm: &LlmJudge, sample: &TeacherSample) -> Result<Decision, ProcessError> {
        let judgement =
            llm.judge(&sample.expected_answer, sample.answer.as_deref().unwrap_or("")).await.map_err(|e| match e {
                LlmError::Permanent(message) | LlmError::Retryable { message, .. } => ProcessError::external(message),
            })?;
        Ok(Decision {
            verdict: judgement.verdict,
            method: JudgeMethod::Llm,
            extracted: None,
            judge_output: judgement.output,
            detail: judgement.detail,
        })
    }
}

impl Processor for Judge {
    type Input = TeacherSample;
    const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "judged", kind: RecordKind::JudgedSample }];

    async fn process(&self, sample: TeacherSample, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        if sample.expected_answer.trim().is_empty() {
            return Err(ProcessError::rejected(format!(
                "sample {} has no expected answer to judge against",
                sample.id
            )));
        }
        let rule = verify(sample.answer.as_deref(), &sample.expected_answer);
        let rule_decided = |verdict| Decision {
            verdict,
            method: JudgeMethod::Rule,
            extracted: rule.extracted.clone(),
            judge_output: None,
            detail: rule.rule.clone(),
        };
        let decision = match (self.settings.mode, rule.verdict, &self.llm) {
            // No answer at all (a truncated generation) is a mismatch whoever judges.
            (_, RuleVerdict::Mismatch, _) if rule.extracted.is_none() => rule_decided(Verdict::Mismatch),
            (JudgeMode::RulesOnly | JudgeMode::RulesThenLlm, RuleVerdict::Match, _) => rule_decided(Verdict::Match),
            (JudgeMode::RulesOnly | JudgeMode::RulesThenLlm, RuleVerdict::Mismatch, _) => {
                rule_decided(Verdict::Mismatch)
            }
            (JudgeMode::RulesOnly, RuleVerdict::Unsure, _) | (_, _, None) => Decision {
                verdict: Verdict::Error,
                method: JudgeMethod::None,
                extracted: rule.extracted.clone(),
                judge_output: None,
                detail: format!("rule verifier unsure ({}) and no LLM judge configured", rule.rule),
            },
            (_, _, Some(llm)) => {
                let mut decision = self.ask_llm(llm, &sample).await?;
                decision.extracted = rule.extracted.clone();
                decision
            }
        };
        let method = match decision.method {
            JudgeMethod::Rule => "RULE",
            JudgeMethod::Llm => "LLM",
            JudgeMethod::None => "NONE",
        };
        let verdict = match decision.verdict {
            Verdict::Match => "MATCH",
            Verdict::Mismatch => "MISMATCH",
            Verdict::Error => "ERROR",
        };
        metrics::counter!("distillery_judge_verdicts_total", "method" => method, "verdict" => verdict).increment(1);
        let judged = JudgedSample {
            id: stable_id(&[&sample.id, &self.config_id]),
            verdict: decision.verdict,
            extracted_answer: decision.extracted,
            method: decision.method,
            judge_model: (decision.method == JudgeMethod::Llm).then(|| self.settings.model.clone()),
            judge_output: decision.judge_output,
            detail: Some(decision.detail),
            judged_at_ms: now_ms(),
            sample,
        };
        Ok(vec![Emit::record("judged", &judged)?])
    }
}
