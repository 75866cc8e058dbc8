//! The evaluator and the report over a real broker: checkpoint events of two students (one
//! per teacher style) arrive on `checkpoints`; `distillery run evaluator` benchmarks the
//! selected ones against the local OpenAI-compatible test server (scripted answers, so the
//! numbers are known) and publishes one eval-result per (checkpoint, benchmark); a replayed
//! checkpoint event is not evaluated twice. `distillery report` then reads `eval-results` and
//! `train-metrics` from the beginning and writes Table 1, the token ratio and Figure 1; for an
//! experiment with no records it still writes a report that says what is missing.

use distillery_llm_test_server::{LlmServer, ServerConfig};
use distillery_runtime::bench::produce_keyed;
use distillery_schemas::{decode, encode, CheckpointEvent, EvalResult, TrainMetrics};
use distillery_tests::{distillery_bin, ids_with_counts, repo_root, wait_until, Cluster};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const TOPOLOGY: &str = r#"
experiment = "evaluator"
[topics.checkpoints]
schema = "checkpoint_event"
partitions = 1
external = true
[topics.train-metrics]
schema = "train_metrics"
partitions = 1
external = true
[topics.eval-results]
schema = "eval_result"
partitions = 1

[processors.evaluator]
type = "evaluator"
inputs = ["checkpoints"]
outputs = { results = "eval-results" }
runtime = { max_in_flight = 1, commit_interval_ms = 100 }
[processors.evaluator.settings]
every_steps = 200
model = "student-{style}"
server = { endpoints = ["URL"], retry_attempts = 5, retry_min_delay_ms = 10, retry_max_delay_ms = 100 }
benchmarks = [
  { name = "gsm8k", uri = "{repo}/topology/data/benchmarks/gsm8k/test.jsonl", format = "gsm8k", limit = 4 },
  { name = "aime25", uri = "{repo}/topology/data/benchmarks/aime25/test.jsonl", format = "aime", limit = 3 },
  { name = "math500", uri = "{repo}/processors/evaluator/tests/fixtures/arithmetic.jsonl", format = "fields", problem_field = "question", answer_field = "answer", id_field = "id" },
]
"#;

fn server_config() -> ServerConfig {
    let some = |s: &str| Some(s.to_string());
    // GSM8K: two of the first four problems answered right, the others get the server's 42.
    let answers = HashMap::from([
        ("A robe takes 2 bolts".to_string(), "3".to_string()),
        ("James decides to run 3 sprints".to_string(), "540".to_string()),
    ]);
    // The arithmetic fixture (as "math500"): answers that differ by sample (seed).
    let seeded = HashMap::from([
        ("Problem ALPHA".to_string(), vec![some("12"), some("7"), some("7"), some("12")]),
        ("Problem BETA".to_string(), vec![some("0.5"), None, some("3"), some("3")]),
    ]);
    ServerConfig { answers, seeded_answers: seeded, ..ServerConfig::default() }
}

fn checkpoint(run: &str, style: &str, step: i64, is_final: bool) -> (String, Vec<u8>) {
    let event = CheckpointEvent {
        id: format!("{run}@{step}"),
        run: run.into(),
        style: style.into(),
        step,
        uri: format!("file:///checkpoints/{run}/step-{step}"),
        consumed: vec![],
        shards_consumed: 1,
        tokens_seen: 1000,
        is_final,
        created_at_ms: 0,
    };
    (run.to_string(), encode(&event).unwrap())
}

fn metric(run: &str, style: &str, step: i64, loss: f64) -> (String, Vec<u8>) {
    let m = TrainMetrics {
        id: format!("{run}@{step}"),
        run: run.into(),
        style: style.into(),
        step,
        loss,
        lr: 5e-6,
        grad_norm: 1.0,
        tokens: 60_000,
        completion_tokens: 50_000,
        tokens_per_second: 1000.0,
        created_at_ms: 0,
    };
    (run.to_string(), encode(&m).unwrap())
}

fn report(cluster: &Cluster, extra: &[&str], out: &std::path::Path) -> String {
    let output = Command::new(distillery_bin())
        .current_dir(repo_root())
        .args(["report", "--topology"])
        .arg(&cluster.topology_path)
        .args(["--bootstrap-servers", &cluster.broker.bootstrap_servers(), "--out"])
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "report failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

fn table_row(md: &str, run: &str) -> Vec<String> {
    let line = md.lines().find(|l| l.starts_with(&format!("| {run} |"))).unwrap_or_else(|| panic!("row {run}: {md}"));
    line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_are_evaluated_once_and_the_report_renders_from_the_topics() {
    let server = LlmServer::start(server_config()).await.unwrap();
    let cluster = Cluster::start(&TOPOLOGY.replace("URL", &server.base_url())).await;
    let connection = cluster.connection();
    let checkpoints = cluster.topology.topic_name("checkpoints");
    let mut metrics = Vec::new();
    for step in 1..=20 {
        metrics.push(metric("nano-gpt-oss", "gpt-oss-120b", step * 10, 2.0 / step as f64 + 0.4));
        metrics.push(metric("nano-r1", "deepseek-r1", step * 10, 2.4 / step as f64 + 0.5));
    }
    produce_keyed(&connection, &cluster.topology.topic_name("train-metrics"), &metrics).await.unwrap();
    // Step 100 is not a multiple of every_steps and not final: skipped.
    let events = [
        checkpoint("nano-gpt-oss", "gpt-oss-120b", 100, false),
        checkpoint("nano-gpt-oss", "gpt-oss-120b", 200, true),
        checkpoint("nano-r1", "deepseek-r1", 200, true),
    ];
    produce_keyed(&connection, &checkpoints, &events).await.unwrap();

    let mut evaluator = cluster.spawn("evaluator", "0");
    wait_until("six eval results", Duration::from_secs(120), || cluster.read("eval-results").len() >= 6);
    // The same checkpoint event again (an upstream replay): dropped, not evaluated twice.
    produce_keyed(&connection, &checkpoints, &events[1..2]).await.unwrap();
    wait_until("the evaluator to commit everything", Duration::from_secs(60), || cluster.lag("evaluator") == 0);
    assert!(evaluator.terminate().success(), "{}", evaluator.log());

    let records = cluster.read("eval-results");
    let ids = ids_with_counts(&records);
    let expected: Vec<String> = ["nano-gpt-oss@200", "nano-r1@200"]
        .iter()
        .flat_map(|c| ["aime25", "gsm8k", "math500"].map(|b| format!("{c}/{b}")))
        .collect();
    assert_eq!(ids.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(ids.values().all(|&n| n == 1), "{ids:?}");
    for record in &records {
        let r: EvalResult = decode(&record.payload).unwrap();
        assert_eq!(r.samples_per_problem, 8);
        let pass8 = r.pass_at_k[7];
        match r.benchmark.as_str() {
            "gsm8k" => assert_eq!((r.problems, pass8), (4, 0.5)),
            "aime25" => assert_eq!((r.problems, pass8, r.majority_at_k[7]), (3, 0.0, 0.0)),
            // Sum right always; alpha 4 of 8; beta 2 of 8; gamma never.
            "math500" => {
                assert_eq!((r.problems, pass8), (4, 0.75));
                assert!((r.pass_at_k[0] - (1.0 + 0.5 + 0.25) / 4.0).abs() < 1e-12, "{:?}", r.pass_at_k);
                assert_eq!(r.truncated_share, 2.0 / 32.0);
            }
            other => panic!("unexpected benchmark {other}"),
        }
    }

    let out = cluster.path("report");
    let printed = report(&cluster, &[], &out);
    assert!(printed.contains("6 eval result(s), 40 train-metrics record(s)"), "{printed}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(
        table_row(&md, "nano-gpt-oss"),
        ["nano-gpt-oss", "gpt-oss-120b", "200", "0.0", "53", "50.0", "53", "75.0", "53"]
    );
    assert_eq!(table_row(&md, "nano-r1")[..4], ["nano-r1", "deepseek-r1", "200", "0.0"]);
    assert!(md.contains("| Benchmark | deepseek-r1 / gpt-oss-120b |") && md.contains("| GSM8K | 1.00x |"), "{md}");
    assert!(md.contains("| gpt-oss-120b | 20 | 200 |"), "{md}");
    assert_eq!(png_size(&out.join("loss_vs_step.png")), (1200, 720));

    // An experiment with nothing recorded: a report all the same, saying what is missing.
    let empty = cluster.path("empty-report");
    report(&cluster, &["--experiment", "not-run-yet"], &empty);
    let md = std::fs::read_to_string(empty.join("report.md")).unwrap();
    assert!(md.contains("topic not-run-yet.eval-results does not exist yet"), "{md}");
    assert!(md.contains("no eval results yet") && md.contains("| missing | missing | missing |"), "{md}");
    assert_eq!(png_size(&empty.join("loss_vs_step.png")), (1200, 720));
}
