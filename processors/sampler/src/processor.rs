//! Question in, one teacher sample per attempt out.

use crate::config::SamplerSettings;
use crate::replay::RecordedTraces;
use distillery_openai::{ChatClient, ChatRequest, LlmError};
use distillery_runtime::{Emit, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{now_ms, stable_id, Question, RecordKind, SamplingSettings, TeacherSample};

/// Where answers come from.
enum Teacher {
    Live(Box<ChatClient>),
    Replay(RecordedTraces),
}

pub struct Sampler {
    settings: SamplerSettings,
    teacher: Teacher,
}

impl Sampler {
    /// Connects to the teacher's servers, or loads its recording.
    pub async fn new(name: &str, settings: SamplerSettings) -> anyhow::Result<Sampler> {
        let teacher = match (&settings.server, &settings.replay) {
            (Some(server), _) => {
                Teacher::Live(Box::new(ChatClient::new(name, server.clone()).map_err(anyhow::Error::msg)?))
            }
            (None, Some(replay)) => Teacher::Replay(RecordedTraces::load(replay).await?),
            (None, None) => anyhow::bail!("sampler '{name}' has neither `server` nor `replay`"),
        };
        Ok(Sampler { settings, teacher })
    }

    fn sampling(&self) -> SamplingSettings {
        let s = &self.settings;
        SamplingSettings {
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens as i32,
            reasoning_effort: s.reasoning_effort.clone(),
            system_prompt: s.system_prompt.clone().filter(|p| !p.is_empty()),
            prompt_template: s.prompt_template.clone(),
            seed: s.seed,
        }
    }

    async fn sample(&self, question: &Question, attempt: u32) -> Result<TeacherSample, ProcessError> {
        let s = &self.settings;
        let mut sample = TeacherSample {
            id: stable_id(&[&question.id, &s.teacher, &attempt.to_string()]),
            question_id: question.id.clone(),
            dataset: question.dataset.clone(),
            problem: question.problem.clone(),
            expected_answer: question.expected_answer.clone(),
            teacher: s.teacher.clone(),
            attempt: attempt as i32,
            model: s.model.clone(),
            server_model: None,
            endpoint: None,
            reasoning: None,
            answer: None,
            finish_reason: "stop".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            reasoning_tokens: None,
            latency_ms: 0,
            sampling: self.sampling(),
            replayed: false,
            created_at_ms: now_ms(),
        };
        match &self.teacher {
            Teacher::Live(client) => {
                let request = ChatRequest {
                    model: s.model.clone(),
                    system_prompt: s.system_prompt.clone(),
                    user: s.prompt(&question.problem),
                    temperature: s.temperature,
                    top_p: s.top_p,
                    max_tokens: s.max_tokens,
                    reasoning_effort: s.reasoning_effort.clone(),
                    seed: s.seed.map(|seed| seed + attempt as i64),
                };
                // The client already spent its retry budget: whatever fails here is final.
                let completion = client.complete(&request).await.map_err(|e| match e {
                    LlmError::Permanent(message) | LlmError::Retryable { message, .. } => {
                        ProcessError::external(message)
                    }
                })?;
                sample.server_model = completion.server_model;
                sample.endpoint = Some(completion.endpoint);
                sample.reasoning = completion.reasoning;
                sample.answer = completion.answer;
                sample.finish_reason = completion.finish_reason;
                sample.prompt_tokens = completion.prompt_tokens as i32;
                sample.completion_tokens = completion.completion_tokens as i32;
                sample.reasoning_tokens = completion.reasoning_tokens.map(|n| n as i32);
                sample.latency_ms = completion.latency.as_millis() as i64;
            }
            Teacher::Replay(traces) => {
                let recorded = traces
                    .get(&question.id)
                    .ok_or_else(|| {
                        ProcessError::rejected(format!(
                            "no recorded trace for question {} in {}",
                            question.id, traces.source
                        ))
                    })?
                    .map_err(|e| {
                        ProcessError::internal(format!("cannot read the recorded trace of {}: {e}", question.id))
                    })?;
                sample.reasoning = recorded.reasoning;
                sample.answer = recorded.answer;
                sample.endpoint = None;
                // A recording carries no token counts; the packer counts tokens itself.
                sample.replayed = true;
            }
        }
        Ok(sample)
    }
}

impl Processor for Sampler {
    type Input = Question;
    const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "samples", kind: RecordKind::TeacherSample }];

    async fn process(&self, question: Question, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        if question.problem.trim().is_empty() {
            return Err(ProcessError::rejected(format!("question {} has no problem text", question.id)));
        }
        let attempts = (0..self.settings.samples_per_question).map(|attempt| self.sample(&question, attempt));
        let samples = futures::future::join_all(attempts).await;
        samples.into_iter().map(|sample| Emit::record("samples", &sample?)).collect()
    }
}
