//! The evaluator against the local OpenAI-compatible test server, without a broker: a fixture
//! benchmark of four problems whose scripted answers differ by sample (the request's seed
//! picks the answer), so every metric has a hand-computed expected value.
//!
//! | problem | expected | samples (seeds 0..3)   | correct |
//! |---------|----------|------------------------|---------|
//! | sum     | 5        | 5, 5, 5, 5 (computed)  | 4       |
//! | alpha   | 12       | 12, 7, 7, 12           | 2       |
//! | beta    | 1/2      | 0.5, (truncated), 3, 3 | 1       |
//! | gamma   | 9        | 42, 42, 42, 42         | 0       |

use distillery_evaluator::{Evaluator, EvaluatorSettings};
use distillery_llm_test_server::{Fault, LlmServer, ServerConfig};
use distillery_runtime::{Processor, RecordContext};
use distillery_schemas::{decode, CheckpointEvent, ErrorClass, EvalResult};
use std::collections::HashMap;

fn fixture() -> String {
    format!("{}/tests/fixtures/arithmetic.jsonl", env!("CARGO_MANIFEST_DIR"))
}

fn server_config() -> ServerConfig {
    let some = |s: &str| Some(s.to_string());
    let mut seeded = HashMap::new();
    seeded.insert("Problem ALPHA".to_string(), vec![some("12"), some("7"), some("7"), some("12")]);
    seeded.insert("Problem BETA".to_string(), vec![some("0.5"), None, some("3"), some("3")]);
    ServerConfig { seeded_answers: seeded, ..ServerConfig::default() }
}

fn settings(url: &str, extra: &str) -> EvaluatorSettings {
    let text = format!(
        r#"
        benchmarks = [{{ name = "arithmetic", uri = "{}", format = "fields", problem_field = "question", answer_field = "answer", id_field = "id" }}]
        samples_per_problem = 4
        model = "student-{{style}}"
        server = {{ endpoints = ["{url}"], retry_attempts = 30, retry_min_delay_ms = 1, retry_max_delay_ms = 20 }}
        metrics = ["pass@4", "maj@4", "avg_generated_tokens"]
        {extra}
        "#,
        fixture()
    );
    EvaluatorSettings::from_table(&toml::from_str(&text).unwrap()).unwrap()
}

fn checkpoint(step: i64, is_final: bool) -> CheckpointEvent {
    CheckpointEvent {
        id: format!("nano-gpt-oss@{step}"),
        run: "nano-gpt-oss".into(),
        style: "gpt-oss-120b".into(),
        step,
        uri: format!("file:///checkpoints/nano-gpt-oss/step-{step}"),
        consumed: vec![],
        shards_consumed: 3,
        tokens_seen: 1000,
        is_final,
        created_at_ms: 0,
    }
}

fn ctx() -> RecordContext {
    RecordContext {
        processor: "evaluator".into(),
        topic: "t.checkpoints".into(),
        partition: 0,
        offset: 0,
        key: Some("nano-gpt-oss".into()),
        generation: 0,
    }
}

fn assert_close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-9, "{actual:?} vs {expected:?}");
    }
}

/// The numbers of the table above, worked out by hand.
fn assert_expected_metrics(r: &EvalResult) {
    assert_eq!((r.benchmark.as_str(), r.problems, r.samples_per_problem), ("arithmetic", 4, 4));
    // pass@k = mean over problems of 1 - C(n-c,k)/C(n,k), n = 4, c = 4, 2, 1, 0:
    //   k=1: (1 + 1/2 + 1/4 + 0)/4;  k=2: (1 + 5/6 + 1/2 + 0)/4;  k=3: (1 + 1 + 3/4 + 0)/4;  k=4: 3/4.
    assert_close(&r.pass_at_k, &[1.75 / 4.0, (1.0 + 5.0 / 6.0 + 0.5) / 4.0, 2.75 / 4.0, 0.75]);
    // maj@k: sum right always; alpha 12 | 12-7 tie, 12 first | 7 wins | 2-2 tie, 12 first;
    // beta 0.5 | 0.5 (truncated does not vote) | 0.5-3 tie, 0.5 first | 3 wins; gamma never.
    assert_close(&r.majority_at_k, &[0.75, 0.75, 0.5, 0.5]);
    // The server counts 40 reasoning words + 5 and 8 answer tokens (53); a truncated
    // generation has no answer tokens (45). Beta's mean is 51, the others' 53.
    assert_close(&[r.avg_generated_tokens], &[(53.0 * 3.0 + 51.0) / 4.0]);
    assert_close(&[r.truncated_share], &[1.0 / 16.0]);
    assert_eq!((r.temperature, r.top_p, r.max_tokens), (0.6, 0.95, 32_768));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_equal_the_hand_computed_numbers() {
    let server = LlmServer::start(server_config()).await.unwrap();
    server.keep_bodies();
    let evaluator = Evaluator::new("evaluator", settings(&server.base_url(), "")).await.unwrap();
    let emits = evaluator.process(checkpoint(100, false), &ctx()).await.unwrap();
    assert_eq!(emits.len(), 1);
    assert_eq!((emits[0].port, emits[0].key.as_str()), ("results", "nano-gpt-oss"));
    let result: EvalResult = decode(&emits[0].payload).unwrap();
    assert_eq!(result.id, "nano-gpt-oss@100/arithmetic");
    assert_eq!(emits[0].id, result.id);
    assert_eq!(
        (result.checkpoint_id.as_str(), result.style.as_str(), result.step),
        ("nano-gpt-oss@100", "gpt-oss-120b", 100)
    );
    assert_expected_metrics(&result);

    // What was sent: the paper's sampling, the \boxed{} prompt, the model named from the
    // checkpoint, one seeded request per sample.
    let bodies = server.stats.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 16);
    for body in &bodies {
        assert_eq!(body["model"], "student-gpt-oss-120b");
        assert_eq!((body["temperature"].as_f64(), body["top_p"].as_f64()), (Some(0.6), Some(0.95)));
        assert_eq!(body["max_tokens"], 32_768);
        assert!(body["messages"][0]["content"].as_str().unwrap().contains("inside \\boxed{}"));
    }
    let mut seeds: Vec<i64> = bodies.iter().map(|b| b["seed"].as_i64().unwrap()).collect();
    seeds.sort_unstable();
    assert_eq!(seeds, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_faults_are_retried_and_do_not_change_the_numbers() {
    let server = LlmServer::start(ServerConfig {
        fault_rate: 0.4,
        faults: Fault::RETRYABLE.to_vec(),
        fault_latency_ms: 10,
        retry_after_secs: 0,
        ..server_config()
    })
    .await
    .unwrap();
    let evaluator = Evaluator::new("evaluator", settings(&server.base_url(), "")).await.unwrap();
    let results = evaluator.evaluate(&checkpoint(200, false)).await.unwrap();
    assert_expected_metrics(&results[0]);
    assert!(server.stats.faults().values().sum::<u64>() > 0, "faults were injected");
    // A replay of the checkpoint gives the same id and the same numbers.
    let again = evaluator.evaluate(&checkpoint(200, false)).await.unwrap();
    assert_eq!(again[0].id, results[0].id);
    assert_eq!((&again[0].pass_at_k, &again[0].majority_at_k), (&results[0].pass_at_k, &results[0].majority_at_k));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_stays_down_fails_the_checkpoint_instead_of_scoring_it() {
    let server = LlmServer::start(server_config()).await.unwrap();
    server.set_down(true);
    let url = server.base_url();
    let text = format!(
        r#"
        benchmarks = [{{ name = "arithmetic", uri = "{}", format = "fields", problem_field = "question", answer_field = "answer" }}]
        server = {{ endpoints = ["{url}"], retry_attempts = 2, retry_min_delay_ms = 1, retry_max_delay_ms = 5 }}
        "#,
        fixture()
    );
    let settings = EvaluatorSettings::from_table(&toml::from_str(&text).unwrap()).unwrap();
    let evaluator = Evaluator::new("evaluator", settings).await.unwrap();
    let err = evaluator.process(checkpoint(300, true), &ctx()).await.unwrap_err();
    // Dead-lettered as an external failure (the client already spent its retries), never
    // published as a zero score.
    assert_eq!((err.class, err.retryable), (ErrorClass::External, false));
    assert!(err.message.contains("nano-gpt-oss@300") && err.message.contains("arithmetic"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_every_nth_step_and_final_checkpoints_are_evaluated() {
    let server = LlmServer::start(server_config()).await.unwrap();
    let evaluator = Evaluator::new("evaluator", settings(&server.base_url(), "every_steps = 1000")).await.unwrap();
    assert!(evaluator.process(checkpoint(500, false), &ctx()).await.unwrap().is_empty());
    assert_eq!(server.stats.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(evaluator.process(checkpoint(1000, false), &ctx()).await.unwrap().len(), 1);
    assert_eq!(evaluator.process(checkpoint(1234, true), &ctx()).await.unwrap().len(), 1);
}

// --- the LLM judge for what the rule verifier cannot decide --------------------------------

/// Answers the rule verifier leaves UNSURE (a number with words after it, a number in words)
/// next to ones it decides:
///
/// | problem | expected | samples (seeds 0..3)                              | rules | with the LLM judge |
/// |---------|----------|---------------------------------------------------|-------|--------------------|
/// | sum     | 5        | 5, 5, 5, 5                                        | 4     | 4 (not asked)      |
/// | alpha   | 12       | 12 square units, 7 square units, 12, twelve       | 1     | 2 (asked 3 times)  |
/// | beta    | 1/2      | 42, 42, 42, 42 (MISMATCH by rule)                 | 0     | 0 (not asked)      |
/// | gamma   | 9        | 9 square units (x4)                               | 0     | 4 (asked 4 times)  |
///
/// The test server judges MATCH when the generated answer contains the correct one, so
/// "twelve" and "7 square units" stay wrong.
fn worded_answers() -> ServerConfig {
    let some = |s: &str| Some(s.to_string());
    let seeded = HashMap::from([
        (
            "Problem ALPHA".to_string(),
            vec![some("12 square units"), some("7 square units"), some("12"), some("\\text{twelve}")],
        ),
        ("Problem GAMMA".to_string(), vec![some("9 square units"); 4]),
    ]);
    ServerConfig { seeded_answers: seeded, ..ServerConfig::default() }
}

fn llm_judge(url: &str) -> String {
    format!(
        r#"llm_judge = {{ model = "judge-model", server = {{ endpoints = ["{url}"], retry_attempts = 2, retry_min_delay_ms = 1, retry_max_delay_ms = 5 }} }}"#
    )
}

/// The judge requests a server received.
fn judge_requests(server: &LlmServer) -> Vec<serde_json::Value> {
    let bodies = server.stats.bodies.lock().unwrap().clone();
    bodies.into_iter().filter(|b| b.to_string().contains("<CORRECT_ANSWER>")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_the_rules_cannot_decide_count_as_the_llm_judge_says() {
    use distillery_judge::verify::{verify, RuleVerdict};
    // The premise: the rule verifier cannot decide the worded answers.
    let worded =
        [("12 square units", "12"), ("7 square units", "12"), ("\\text{twelve}", "12"), ("9 square units", "9")];
    for (answer, expected) in worded {
        let text = format!("The answer is \\boxed{{{answer}}}.");
        assert_eq!(verify(Some(&text), expected).verdict, RuleVerdict::Unsure, "{answer}");
    }
    let students = LlmServer::start(worded_answers()).await.unwrap();
    let judge = LlmServer::start(ServerConfig::default()).await.unwrap();
    judge.keep_bodies();

    // Without llm_judge: UNSURE is not correct.
    let rules_only = Evaluator::new("evaluator", settings(&students.base_url(), "")).await.unwrap();
    let r = &rules_only.evaluate(&checkpoint(100, false)).await.unwrap()[0];
    assert_close(&r.pass_at_k[..1], &[(1.0 + 0.25) / 4.0]);
    assert_close(&r.pass_at_k[3..], &[0.5]);

    // With it: the judge's MATCH counts, its MISMATCH does not.
    let with_judge =
        Evaluator::new("evaluator", settings(&students.base_url(), &llm_judge(&judge.base_url()))).await.unwrap();
    let r = &with_judge.evaluate(&checkpoint(100, false)).await.unwrap()[0];
    assert_close(&r.pass_at_k[..1], &[(1.0 + 0.5 + 1.0) / 4.0]);
    assert_close(&r.pass_at_k[3..], &[0.75]);
    // maj@1: sum right; alpha's first sample ("12 square units") right by the judge; gamma right.
    assert_close(&r.majority_at_k[..1], &[0.75]);

    // Only the 7 UNSURE answers were sent, with the judge processor's prompt and message.
    let asked = judge_requests(&judge);
    assert_eq!(asked.len(), 7, "{asked:#?}");
    for body in &asked {
        assert_eq!(body["model"], "judge-model");
        assert_eq!(body["messages"][0]["content"], distillery_judge::config::DEFAULT_SYSTEM_PROMPT);
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.starts_with("<CORRECT_ANSWER>\n12\n") || user.starts_with("<CORRECT_ANSWER>\n9\n"), "{user}");
        assert!(user.contains("square units") || user.contains("twelve"), "{user}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_judge_that_stays_down_fails_the_checkpoint_instead_of_scoring_it() {
    let students = LlmServer::start(worded_answers()).await.unwrap();
    let judge = LlmServer::start(ServerConfig::default()).await.unwrap();
    judge.set_down(true);
    let evaluator =
        Evaluator::new("evaluator", settings(&students.base_url(), &llm_judge(&judge.base_url()))).await.unwrap();
    let err = evaluator.process(checkpoint(400, false), &ctx()).await.unwrap_err();
    assert_eq!((err.class, err.retryable), (ErrorClass::External, false));
    assert!(err.message.contains("LLM judge") && err.message.contains("judge-model"), "{}", err.message);
}
