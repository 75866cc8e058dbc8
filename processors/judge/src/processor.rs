//! Sample in, judged sample out.

use crate::config::{JudgeMode, JudgeSettings};
use crate::llm::{judge_message, parse_verdict};
use crate::verify::{verify, RuleVerdict};
use distillery_openai::{ChatClient, ChatRequest, LlmError};
use distillery_runtime::{Emit, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{now_ms, stable_id, JudgeMethod, JudgedSample, RecordKind, TeacherSample, Verdict};

pub struct Judge {
    settings: JudgeSettings,
    system_prompt: String,
    client: Option<ChatClient>,
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
        let client = match (&settings.mode, &settings.server) {
            (JudgeMode::RulesOnly, _) => None,
            (_, Some(server)) => Some(ChatClient::new(name, server.clone()).map_err(anyhow::Error::msg)?),
            (_, None) => anyhow::bail!("judge '{name}': the LLM judge needs `server`"),
        };
        let mode = format!("{:?}", settings.mode);
        let config_id = stable_id(&[&mode, &settings.model, &system_prompt]);
        Ok(Judge { settings, system_prompt, client, config_id })
    }

    async fn ask_llm(&self, client: &ChatClient, sample: &TeacherSample) -> Result<Decision, ProcessError> {
        let request = ChatRequest {
            model: self.settings.model.clone(),
            system_prompt: Some(self.system_prompt.clone()),
            user: judge_message(&sample.expected_answer, sample.answer.as_deref().unwrap_or("")),
            temperature: self.settings.temperature,
            top_p: self.settings.top_p,
            max_tokens: self.settings.max_tokens,
            reasoning_effort: None,
            seed: None,
        };
        let mut last_output = None;
        for _ in 0..self.settings.verdict_attempts {
            let completion = client.complete(&request).await.map_err(|e| match e {
                LlmError::Permanent(message) | LlmError::Retryable { message, .. } => ProcessError::external(message),
            })?;
            // A thinking model that ran out of tokens returns no content: ask again.
            if let Some(verdict) = completion.answer.as_deref().and_then(parse_verdict) {
                return Ok(Decision {
                    verdict,
                    method: JudgeMethod::Llm,
                    extracted: None,
                    judge_output: completion.answer,
                    detail: format!("judge model replied (finish_reason {})", completion.finish_reason),
                });
            }
            last_output =
                completion.answer.or(Some(format!("<no content; finish_reason {}>", completion.finish_reason)));
        }
        Ok(Decision {
            verdict: Verdict::Error,
            method: JudgeMethod::Llm,
            extracted: None,
            judge_output: last_output,
            detail: format!("no MATCH or MISMATCH in {} judge replies", self.settings.verdict_attempts),
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
        let decision = match (self.settings.mode, rule.verdict, &self.client) {
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
            (_, _, Some(client)) => {
                let mut decision = self.ask_llm(client, &sample).await?;
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
