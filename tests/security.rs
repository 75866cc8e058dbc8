//! Secrets stay secret. A sampler and a judge run as real `distillery run` processes with a
//! planted API key in their environment, against the local LLM server, which requires that key,
//! fails 30% of requests with every fault it can inject, and quotes the request's
//! Authorization header back in the errors of some problems (a misconfigured proxy). Errors
//! are logged (at debug level, retries included), dead letters written, metrics served; the
//! key appears in none of them, nor in any record on any topic. A feeder reading from a local
//! S3 server with planted credentials fails on a missing object without printing them. The
//! metrics endpoint, given a bare port, listens on 127.0.0.1 only.

use distillery_llm_test_server::{Fault, LlmServer, ServerConfig};
use distillery_runtime::bench::produce_all;
use distillery_schemas::{decode, DeadLetter};
use distillery_tests::{encoded_question, free_port, http_get, wait_until, Cluster, S3Server};
use std::collections::HashMap;
use std::time::Duration;

const KEY: &str = "sk-planted-SECRET-123";
const KEY_VAR: &str = "DISTILLERY_PLANTED_KEY";

fn client(url: &str) -> String {
    format!(
        r#"{{ endpoints = ["{url}"], api_key_env = "{KEY_VAR}", retry_attempts = 2, retry_min_delay_ms = 5, retry_max_delay_ms = 20, request_timeout_secs = 10 }}"#
    )
}

/// Fails the test if `text` (from `what`) holds the key or a recognisable part of it.
fn assert_no_key(what: &str, text: &str) {
    for needle in [KEY, "planted-SECRET", "SECRET-123"] {
        assert!(!text.contains(needle), "{what} contains '{needle}':\n{text}");
    }
}

/// The address a listening TCP socket on `port` is bound to, from /proc/net/tcp (hex).
fn listening_address(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (address, local_port) = fields.get(1)?.split_once(':')?;
        (u16::from_str_radix(local_port, 16).ok()? == port && fields.get(3) == Some(&"0A")).then(|| address.to_string())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_api_key_never_reaches_logs_metrics_dead_letters_or_records() {
    let mut answers = HashMap::new();
    for i in 0..5 {
        // Answers in words: the rule verifier is unsure, so the judge asks the LLM (with the key).
        answers.insert(format!("WORDS {i}"), "\\text{one}".to_string());
    }
    let server = LlmServer::start(ServerConfig {
        api_key: Some(KEY.into()),
        echo_credentials_problems: vec!["ECHO".into()],
        answers,
        fault_rate: 0.3,
        faults: Fault::ALL.to_vec(),
        fault_latency_ms: 20,
        retry_after_secs: 0,
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let url = server.base_url();
    let topology = format!(
        r#"experiment = "secrets"
[topics.questions]
schema = "question"
partitions = 2
[topics.samples]
schema = "teacher_sample"
partitions = 2
[topics.judged]
schema = "judged_sample"
partitions = 2
[processors.feeder]
type = "feeder"
outputs = {{ questions = "questions" }}
settings = {{ files = [{{ uri = "unused.jsonl", format = "aime" }}] }}
[processors.sampler]
type = "sampler"
inputs = ["questions"]
outputs = {{ samples = "samples" }}
[processors.sampler.settings]
teacher = "t"
model = "test/t"
server = {client}
[processors.judge]
type = "judge"
inputs = ["samples"]
outputs = {{ judged = "judged" }}
[processors.judge.settings]
model = "test/judge"
server = {client}
"#,
        client = client(&url)
    );
    let cluster = Cluster::start(&topology).await;
    let mut inputs = Vec::new();
    for i in 0..30 {
        inputs.push(encoded_question(&format!("sum-{i}"), &format!("What is {i} + 1?")));
    }
    for i in 0..5 {
        inputs.push(encoded_question(&format!("echo-{i}"), &format!("please ECHO {i}")));
        inputs.push(encoded_question(&format!("words-{i}"), &format!("WORDS {i}")));
    }
    produce_all(&cluster.connection(), &cluster.topology.topic_name("questions"), &inputs).await.unwrap();

    let env = [(KEY_VAR, KEY), ("RUST_LOG", "debug,rdkafka=warn")];
    let metrics_port = free_port();
    let port_arg = metrics_port.to_string();
    let mut sampler = cluster.spawn_with("sampler", "0", &["--metrics-addr", &port_arg], &env);
    let mut judge = cluster.spawn_with("judge", "0", &[], &env);
    wait_until("sampled and judged", Duration::from_secs(120), || {
        cluster.lag("sampler") == 0 && cluster.lag("judge") == 0
    });

    // Metrics: served on 127.0.0.1 only (a bare port), counting the dead letters, no key.
    assert_eq!(listening_address(metrics_port).as_deref(), Some("0100007F"), "bound to 127.0.0.1");
    let metrics = http_get(metrics_port, "/metrics").unwrap();
    assert!(metrics.contains("distillery_records_dead_lettered_total"), "{metrics}");
    assert!(metrics.contains("distillery_llm_requests_total"), "{metrics}");
    assert_no_key("the metrics endpoint", &metrics);

    assert!(sampler.terminate().success() && judge.terminate().success());
    let (sampler_log, judge_log) = (sampler.log(), judge.log());

    // The faults happened, were logged, and became dead letters with reasons.
    let faults = server.stats.faults();
    assert!(faults.values().sum::<u64>() > 5, "{faults:?}");
    assert_eq!(server.stats.unauthorized.load(std::sync::atomic::Ordering::Relaxed), 0, "the key was sent");
    let records = cluster.read("dead-letters");
    let letters: Vec<DeadLetter> = records.iter().map(|r| decode(&r.payload).unwrap()).collect();
    let echoed: Vec<_> = letters.iter().filter(|l| l.error.contains("you sent Authorization")).collect();
    assert_eq!(echoed.len(), 5, "every ECHO question is a dead letter: {letters:#?}");
    assert!(echoed.iter().all(|l| l.error.contains("Bearer [redacted]")), "{echoed:#?}");
    assert!(letters.iter().any(|l| l.error.starts_with("gave up after 2 attempts")), "{letters:#?}");
    assert!(sampler_log.contains("dead-lettered") && sampler_log.contains("Bearer [redacted]"), "{sampler_log}");
    assert!(sampler_log.contains("DEBUG"), "debug logging was on");
    assert!(judge_log.contains("started"), "{judge_log}");
    assert!(!cluster.read("judged").is_empty());

    // Nowhere: not in the logs, nor in any byte of any record or header on any topic.
    assert_no_key("the sampler's log", &sampler_log);
    assert_no_key("the judge's log", &judge_log);
    for topic in ["questions", "samples", "judged", "dead-letters"] {
        for record in cluster.read(topic) {
            assert_no_key(&format!("a record on {topic}"), &String::from_utf8_lossy(&record.payload));
            assert_no_key(&format!("a header on {topic}"), &format!("{:?}", record.headers));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_credentials_never_reach_the_output() {
    let s3 = S3Server::start("datasets");
    let cluster = Cluster::start(&distillery_tests::feeder_and_copy(
        "s3secrets",
        1,
        r#"[{ uri = "s3://datasets/missing.jsonl", format = "gsm8k" }]"#,
        "",
    ))
    .await;
    let mut env: Vec<(&str, String)> = s3.env().into_iter().filter(|(k, _)| !k.contains("SECRET")).collect();
    env.push(("AWS_SECRET_ACCESS_KEY", "planted-S3-SECRET-456".into()));
    env.push(("AWS_SESSION_TOKEN", "planted-S3-SECRET-token".into()));
    env.push(("RUST_LOG", "debug,rdkafka=warn".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut feeder = cluster.spawn_with("feeder", "0", &[], &env);
    assert!(!feeder.child.wait().unwrap().success());
    let log = feeder.log();
    assert!(log.contains("missing.jsonl"), "the error names the object: {log}");
    assert!(!log.contains("planted-S3-SECRET"), "{log}");
}
