//! Checkpoint in, one eval-result per benchmark out.

use crate::benchmark::{self, LoadedBenchmark, Problem};
use crate::config::{BackendKind, EvaluatorSettings};
use crate::generate::{Backend, GenerateError, Generation, GenerationSettings, Generator, Prompt, ServerBackend};
use crate::metrics::{summarise, BenchmarkMetrics, ScoredSample};
use distillery_judge::llm::LlmJudge;
use distillery_judge::verify::{verify, RuleVerdict};
use distillery_runtime::{Emit, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{now_ms, CheckpointEvent, EvalResult, RecordKind, Verdict};
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;

pub struct Evaluator {
    settings: EvaluatorSettings,
    generation: GenerationSettings,
    benchmarks: Vec<LoadedBenchmark>,
    backend: Arc<dyn Backend>,
    /// Asked about what the rule verifier cannot decide (`llm_judge`).
    llm_judge: Option<LlmJudge>,
}

/// How the samples of one benchmark were decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Decided {
    /// UNSURE for the rule verifier, decided by the LLM judge (MATCH or MISMATCH).
    by_llm: usize,
    /// UNSURE for the rule verifier and no verdict from the LLM judge either (or no judge):
    /// counted as not correct.
    undecided: usize,
}

impl std::ops::AddAssign for Decided {
    fn add_assign(&mut self, other: Decided) {
        self.by_llm += other.by_llm;
        self.undecided += other.undecided;
    }
}

impl Evaluator {
    /// Loads the benchmarks and sets up the configured backend.
    pub async fn new(name: &str, settings: EvaluatorSettings) -> anyhow::Result<Evaluator> {
        let backend: Arc<dyn Backend> = match settings.backend {
            BackendKind::Server => Arc::new(ServerBackend::new(name, &settings)?),
            BackendKind::InProcess => Arc::new(crate::in_process::InProcessBackend),
        };
        let llm_judge = match &settings.llm_judge {
            Some(judge) => Some(
                LlmJudge::from_settings(&format!("{name}-judge"), judge)
                    .map_err(|e| anyhow::anyhow!("llm_judge: {e}"))?,
            ),
            None => None,
        };
        let mut evaluator = Self::with_backend(settings, backend).await?;
        evaluator.llm_judge = llm_judge;
        Ok(evaluator)
    }

    /// Loads the benchmarks and evaluates with `backend` (tests, other backends).
    pub async fn with_backend(settings: EvaluatorSettings, backend: Arc<dyn Backend>) -> anyhow::Result<Evaluator> {
        let mut benchmarks = Vec::new();
        for source in settings.benchmark_sources().map_err(anyhow::Error::msg)? {
            let loaded = benchmark::load(&source).await?;
            tracing::info!(benchmark = %loaded.name, problems = loaded.problems.len(), uri = %source.file.uri, "benchmark loaded");
            benchmarks.push(loaded);
        }
        Ok(Evaluator {
            generation: GenerationSettings::from_settings(&settings),
            settings,
            benchmarks,
            backend,
            llm_judge: None,
        })
    }

    pub fn benchmarks(&self) -> &[LoadedBenchmark] {
        &self.benchmarks
    }

    /// Every benchmark on one checkpoint. Any generation that fails (after the client's
    /// retries) fails the whole checkpoint: nothing is scored from partial generations.
    /// The backend's generator is closed afterwards (a server started for the checkpoint is
    /// stopped), whether the evaluation succeeded or not.
    pub async fn evaluate(&self, checkpoint: &CheckpointEvent) -> Result<Vec<EvalResult>, ProcessError> {
        let generator = self.backend.open(checkpoint).await.map_err(|e| classify(e, checkpoint, "opening"))?;
        let results = self.evaluate_with(generator.as_ref(), checkpoint).await;
        generator.close().await;
        results
    }

    async fn evaluate_with(
        &self,
        generator: &dyn Generator,
        checkpoint: &CheckpointEvent,
    ) -> Result<Vec<EvalResult>, ProcessError> {
        let mut results = Vec::with_capacity(self.benchmarks.len());
        for bench in &self.benchmarks {
            let (metrics, decided) =
                self.run_benchmark(generator, bench).await.map_err(|e| classify(e, checkpoint, &bench.name))?;
            let result = self.result(checkpoint, &bench.name, &metrics);
            self.log(&result, decided);
            results.push(result);
        }
        Ok(results)
    }

    async fn run_benchmark(
        &self,
        generator: &dyn Generator,
        bench: &LoadedBenchmark,
    ) -> Result<(BenchmarkMetrics, Decided), GenerateError> {
        let n = self.settings.samples_per_problem as usize;
        // `buffered` keeps problem order and stops at the first error (the rest are dropped).
        // (Indices, not `&Problem`: a closure over references trips the Send check of
        // `process`'s future.)
        let scored: Vec<(Vec<ScoredSample>, Decided)> = futures::stream::iter(0..bench.problems.len())
            .map(|i| self.score_problem(generator, &bench.problems[i], n))
            .buffered(self.settings.concurrent_problems)
            .try_collect()
            .await?;
        let mut decided = Decided::default();
        let mut samples = Vec::with_capacity(scored.len());
        for (problem, d) in scored {
            samples.push(problem);
            decided += d;
        }
        Ok((summarise(&samples), decided))
    }

    async fn score_problem(
        &self,
        generator: &dyn Generator,
        problem: &Problem,
        n: usize,
    ) -> Result<(Vec<ScoredSample>, Decided), GenerateError> {
        let prompt =
            Prompt { system: self.settings.system_prompt.clone(), user: self.settings.prompt(&problem.problem) };
        let generations = generator.generate(&prompt, n, &self.generation).await?;
        if generations.len() != n {
            return Err(GenerateError::Failed(format!(
                "the generator returned {} generations for problem {} instead of {n}",
                generations.len(),
                problem.id
            )));
        }
        let scored = generations.iter().map(|g| self.score_sample(g, problem));
        let scored: Vec<(ScoredSample, Decided)> = futures::future::try_join_all(scored).await?;
        let mut decided = Decided::default();
        let mut samples = Vec::with_capacity(scored.len());
        for (sample, d) in scored {
            samples.push(sample);
            decided += d;
        }
        Ok((samples, decided))
    }

    /// The rule verifier first; what it cannot decide goes to the LLM judge if there is one
    /// (as in the judge processor's "rules-then-llm"), else counts as not correct.
    async fn score_sample(&self, g: &Generation, problem: &Problem) -> Result<(ScoredSample, Decided), GenerateError> {
        let decision = verify(g.answer.as_deref(), &problem.expected_answer);
        let verdict = match decision.verdict {
            RuleVerdict::Match => "match",
            RuleVerdict::Mismatch => "mismatch",
            RuleVerdict::Unsure => "unsure",
        };
        metrics::counter!("distillery_evaluator_samples_total", "verdict" => verdict).increment(1);
        let mut decided = Decided::default();
        let correct = match (decision.verdict, &self.llm_judge) {
            (RuleVerdict::Match, _) => true,
            (RuleVerdict::Mismatch, _) => false,
            (RuleVerdict::Unsure, None) => {
                decided.undecided += 1;
                false
            }
            (RuleVerdict::Unsure, Some(judge)) => {
                // The sample's whole answer, as the judge processor sends it.
                let answer = g.answer.as_deref().unwrap_or("");
                let judgement = judge.judge(&problem.expected_answer, answer).await.map_err(|e| {
                    GenerateError::Failed(format!(
                        "the LLM judge ({}) failed on problem {}: {e}",
                        judge.model(),
                        problem.id
                    ))
                })?;
                let label = match judgement.verdict {
                    Verdict::Match => "match",
                    Verdict::Mismatch => "mismatch",
                    Verdict::Error => "error",
                };
                metrics::counter!("distillery_evaluator_llm_judged_total", "verdict" => label).increment(1);
                match judgement.verdict {
                    Verdict::Match | Verdict::Mismatch => decided.by_llm += 1,
                    Verdict::Error => {
                        tracing::debug!(problem = %problem.id, "{}", judgement.detail);
                        decided.undecided += 1;
                    }
                }
                judgement.verdict == Verdict::Match
            }
        };
        let sample = ScoredSample {
            correct,
            extracted: decision.extracted,
            completion_tokens: g.completion_tokens,
            truncated: g.truncated,
        };
        Ok((sample, decided))
    }

    fn result(&self, checkpoint: &CheckpointEvent, benchmark: &str, m: &BenchmarkMetrics) -> EvalResult {
        let s = &self.settings;
        EvalResult {
            // The schema's id: the same checkpoint and benchmark always give the same id, so a
            // replayed checkpoint's results are dropped downstream.
            id: format!("{}/{benchmark}", checkpoint.id),
            checkpoint_id: checkpoint.id.clone(),
            run: checkpoint.run.clone(),
            style: checkpoint.style.clone(),
            step: checkpoint.step,
            benchmark: benchmark.to_string(),
            problems: m.problems as i32,
            samples_per_problem: m.samples_per_problem as i32,
            pass_at_k: m.pass_at_k.clone(),
            majority_at_k: m.majority_at_k.clone(),
            avg_generated_tokens: m.avg_generated_tokens,
            truncated_share: m.truncated_share,
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens as i32,
            created_at_ms: now_ms(),
        }
    }

    /// The headline metrics, and how many answers the LLM judge decided (the eval-result
    /// schema has no field for it).
    fn log(&self, r: &EvalResult, decided: Decided) {
        let headline: Vec<String> =
            self.settings.metrics.iter().map(|m| format!("{m}={:.4}", headline(r, m))).collect();
        tracing::info!(
            checkpoint = %r.checkpoint_id,
            benchmark = %r.benchmark,
            problems = r.problems,
            llm_judged = decided.by_llm,
            undecided = decided.undecided,
            "evaluated: {}",
            headline.join(" ")
        );
    }
}

/// A headline metric of a result by its settings name (checked at load).
fn headline(r: &EvalResult, metric: &str) -> f64 {
    let at = |v: &[f64], k: &str| k.parse::<usize>().ok().and_then(|k| v.get(k.wrapping_sub(1)).copied());
    match metric {
        "avg_generated_tokens" => r.avg_generated_tokens,
        "truncated_share" => r.truncated_share,
        _ => metric
            .strip_prefix("pass@")
            .and_then(|k| at(&r.pass_at_k, k))
            .or_else(|| metric.strip_prefix("maj@").and_then(|k| at(&r.majority_at_k, k)))
            .unwrap_or(f64::NAN),
    }
}

/// A generation failure as the runtime's error class: never scored, retried or dead-lettered.
fn classify(e: GenerateError, checkpoint: &CheckpointEvent, during: &str) -> ProcessError {
    metrics::counter!("distillery_evaluator_failures_total").increment(1);
    match e {
        GenerateError::Transient(m) => ProcessError::transient(format!("checkpoint {} ({during}): {m}", checkpoint.id)),
        GenerateError::Failed(m) => ProcessError::external(format!("checkpoint {} ({during}): {m}", checkpoint.id)),
    }
}

impl Processor for Evaluator {
    type Input = CheckpointEvent;
    const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "results", kind: RecordKind::EvalResult }];

    async fn process(&self, checkpoint: CheckpointEvent, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        if !self.settings.evaluates(&checkpoint) {
            tracing::debug!(checkpoint = %checkpoint.id, "skipped (every_steps = {})", self.settings.every_steps);
            return Ok(Vec::new());
        }
        let results = self.evaluate(&checkpoint).await?;
        results.iter().map(|r| Emit::record("results", r)).collect()
    }
}
