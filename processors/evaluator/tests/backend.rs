//! A backend other than the server plugs in through `Evaluator::with_backend` (as the
//! in-process candle backend does): raw texts with inline reasoning are scored, and the
//! backend's errors keep their class (transient -> retried by the runtime, failed -> dead
//! letter), never a score.

use distillery_evaluator::generate::BoxFuture;
use distillery_evaluator::Evaluator;
use distillery_evaluator::{
    Backend, EvaluatorSettings, GenerateError, Generation, GenerationSettings, Generator, Prompt,
};
use distillery_schemas::{CheckpointEvent, ErrorClass};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Answers every prompt with "<think>…</think>\boxed{5}" for even samples and a text cut
/// off inside its reasoning for odd ones; fails as told for checkpoints of step 13 and 14.
struct Fake {
    opened: AtomicUsize,
}

struct FakeGenerator;

impl Generator for FakeGenerator {
    fn generate<'a>(
        &'a self,
        prompt: &'a Prompt,
        n: usize,
        settings: &'a GenerationSettings,
    ) -> BoxFuture<'a, Result<Vec<Generation>, GenerateError>> {
        Box::pin(async move {
            assert!(prompt.user.contains("\\boxed{}"));
            Ok((0..n)
                .map(|j| match (settings.seed + j as i64) % 2 {
                    0 => Generation::from_text("<think>2 plus 3</think>It is \\boxed{5}.", 20, false),
                    _ => Generation::from_text("<think>2 plus 3 is", settings.max_tokens as u64, true),
                })
                .collect())
        })
    }
}

impl Backend for Fake {
    fn open<'a>(&'a self, checkpoint: &'a CheckpointEvent) -> BoxFuture<'a, Result<Arc<dyn Generator>, GenerateError>> {
        Box::pin(async move {
            self.opened.fetch_add(1, Ordering::SeqCst);
            match checkpoint.step {
                13 => Err(GenerateError::Transient("checkpoint files not readable yet".into())),
                14 => Err(GenerateError::Failed("not a model".into())),
                _ => Ok(Arc::new(FakeGenerator) as Arc<dyn Generator>),
            }
        })
    }
}

fn checkpoint(step: i64) -> CheckpointEvent {
    CheckpointEvent {
        id: format!("tiny@{step}"),
        run: "tiny".into(),
        style: "s".into(),
        step,
        uri: "file:///tmp/tiny".into(),
        consumed: vec![],
        shards_consumed: 0,
        tokens_seen: 0,
        is_final: false,
        created_at_ms: 0,
    }
}

#[tokio::test]
async fn another_backend_is_scored_and_its_errors_keep_their_class() {
    let table: toml::Table = toml::from_str(&format!(
        r#"
        backend = "in-process"
        max_tokens = 100
        benchmarks = [{{ name = "sum", uri = "{}/tests/fixtures/arithmetic.jsonl", format = "fields", problem_field = "question", answer_field = "answer", limit = 1 }}]
        "#,
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let settings = EvaluatorSettings::from_table(&table).unwrap();
    // The built-in in-process backend loads each checkpoint when it arrives, so construction
    // succeeds without one.
    assert!(Evaluator::new("evaluator", settings.clone()).await.is_ok());

    let backend = Arc::new(Fake { opened: AtomicUsize::new(0) });
    let evaluator = Evaluator::with_backend(settings, backend.clone()).await.unwrap();
    let results = evaluator.evaluate(&checkpoint(12)).await.unwrap();
    let r = &results[0];
    // 8 samples: 4 right, 4 cut off (no answer, 100 tokens each).
    assert_eq!((r.problems, r.samples_per_problem), (1, 8));
    assert!((r.pass_at_k[0] - 0.5).abs() < 1e-12, "{:?}", r.pass_at_k);
    assert_eq!(r.pass_at_k[7], 1.0);
    assert_eq!(r.majority_at_k, vec![1.0; 8]);
    assert_eq!((r.avg_generated_tokens, r.truncated_share), (60.0, 0.5));

    let transient = evaluator.evaluate(&checkpoint(13)).await.unwrap_err();
    assert_eq!((transient.class, transient.retryable), (ErrorClass::External, true));
    let failed = evaluator.evaluate(&checkpoint(14)).await.unwrap_err();
    assert_eq!((failed.class, failed.retryable), (ErrorClass::External, false));
    assert!(failed.message.contains("tiny@14") && failed.message.contains("not a model"), "{}", failed.message);
    assert_eq!(backend.opened.load(Ordering::SeqCst), 3);
}
