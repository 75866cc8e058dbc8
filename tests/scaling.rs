//! Horizontal scaling: 3 replicas of a live teacher sampler and 2 of the judge, each a
//! separate `distillery run` process, against the local OpenAI-compatible server. Mid-run
//! one sampler replica is killed (SIGKILL), and a sampler and a judge replica are added.
//! Every question is sampled and judged: no id is missing, the only duplicate records are
//! replays of the same id (the runtime's at-least-once guarantee, de-duplicated by id
//! downstream), and the teacher calls beyond one per question are bounded by the records
//! that were in flight when a replica died or the group rebalanced.

use distillery_llm_test_server::{LlmServer, ServerConfig};
use distillery_schemas::{decode, JudgedSample, TeacherSample, Verdict};
use distillery_tests::{ids_with_counts, wait_until, write_questions, Cluster, Proc};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const QUESTIONS: usize = 300;
const PARTITIONS: usize = 6;

fn topology(url: &str) -> String {
    let server = format!(
        r#"server = {{ endpoints = ["{url}"], retry_attempts = 10, retry_min_delay_ms = 5, retry_max_delay_ms = 100, request_timeout_secs = 10 }}"#
    );
    let topics: String = ["questions:question", "samples:teacher_sample", "judged:judged_sample"]
        .iter()
        .map(|t| {
            let (name, schema) = t.split_once(':').unwrap();
            format!("[topics.{name}]\nschema = \"{schema}\"\npartitions = {PARTITIONS}\n")
        })
        .collect();
    // Few records in flight and a short session timeout: work is spread over the replicas,
    // and the group notices the killed one within a second.
    format!(
        r#"experiment = "scaling"
{topics}
[processors.feeder]
type = "feeder"
outputs = {{ questions = "questions" }}
settings = {{ files = [{{ uri = "{{dir}}/questions.jsonl", format = "fields", dataset = "s", problem_field = "q", answer_field = "a", id_field = "key" }}] }}

[processors.sampler]
type = "sampler"
inputs = ["questions"]
outputs = {{ samples = "samples" }}
replicas = 3
runtime = {{ max_in_flight = 2, commit_interval_ms = 200, session_timeout_ms = 1000 }}
[processors.sampler.settings]
teacher = "teacher-a"
model = "test/teacher-a"
max_tokens = 2048
{server}

[processors.judge]
type = "judge"
inputs = ["samples"]
outputs = {{ judged = "judged" }}
replicas = 2
runtime = {{ max_in_flight = 4, commit_interval_ms = 200, session_timeout_ms = 1000 }}
[processors.judge.settings]
model = "test/judge"
{server}
"#
    )
}

/// Whether every replica holds partitions and together they hold all of them once.
fn balanced(replicas: &[&Proc]) -> bool {
    let assigned: Vec<BTreeSet<String>> = replicas.iter().filter_map(|p| p.last_assignment()).collect();
    assigned.len() == replicas.len()
        && assigned.iter().all(|a| !a.is_empty())
        && assigned.iter().map(BTreeSet::len).sum::<usize>() == PARTITIONS
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_stopped_and_added_mid_run_sample_and_judge_every_question_with_only_replayed_duplicates() {
    let config = ServerConfig { latency_ms: 200, ..ServerConfig::default() };
    let server = LlmServer::start(config).await.unwrap();
    let cluster = Cluster::start(&topology(&server.base_url())).await;
    write_questions(&cluster.path("questions.jsonl"), QUESTIONS, 60);
    let started = Instant::now();

    let mut samplers =
        vec![cluster.spawn("sampler", "s1"), cluster.spawn("sampler", "s2"), cluster.spawn("sampler", "s3")];
    let mut judges = vec![cluster.spawn("judge", "j1"), cluster.spawn("judge", "j2")];
    wait_until("3 samplers and 2 judges share the partitions", Duration::from_secs(60), || {
        balanced(&samplers.iter().collect::<Vec<_>>()) && balanced(&judges.iter().collect::<Vec<_>>())
    });
    cluster.run_source("feeder");
    let sampled = || ids_with_counts(&cluster.read("samples")).len();

    // A quarter in: kill a sampler replica without warning.
    wait_until("a quarter sampled", Duration::from_secs(60), || sampled() >= QUESTIONS / 4);
    samplers[0].kill9();
    let at_kill = sampled();
    eprintln!("killed sampler s1 at {at_kill} samples after {:.1}s", started.elapsed().as_secs_f64());

    // Half way: add a sampler replica and a judge replica.
    wait_until("half sampled", Duration::from_secs(60), || sampled() >= QUESTIONS / 2);
    samplers.push(cluster.spawn("sampler", "s4"));
    judges.push(cluster.spawn("judge", "j3"));
    eprintln!("added sampler s4 and judge j3 at {} samples after {:.1}s", sampled(), started.elapsed().as_secs_f64());

    wait_until("every question sampled and judged", Duration::from_secs(60), || {
        cluster.lag("sampler") == 0 && cluster.lag("judge") == 0
    });
    let elapsed = started.elapsed();
    // The added replicas joined their groups and were given partitions.
    assert!(samplers[3].last_assignment().is_some_and(|a| !a.is_empty()), "{}", samplers[3].log());
    assert!(judges[2].last_assignment().is_some_and(|a| !a.is_empty()), "{}", judges[2].log());
    for proc in samplers.iter_mut().skip(1).chain(judges.iter_mut()) {
        assert!(proc.terminate().success(), "{}", proc.log());
    }

    let questions: BTreeSet<String> = ids_with_counts(&cluster.read("questions")).into_keys().collect();
    assert_eq!(questions.len(), QUESTIONS);
    let sample_records = cluster.read("samples");
    let samples: Vec<TeacherSample> = sample_records.iter().map(|r| decode(&r.payload).unwrap()).collect();
    let sample_ids = ids_with_counts(&sample_records);
    assert_eq!(sample_ids.len(), QUESTIONS, "one sample id per question (one teacher, one attempt)");
    assert_eq!(
        samples.iter().map(|s| s.question_id.clone()).collect::<BTreeSet<_>>(),
        questions,
        "no question missing"
    );
    for (record, sample) in sample_records.iter().zip(&samples) {
        assert_eq!(record.id(), Some(sample.id.as_str()), "a duplicate is a replay of the same sample");
    }
    let judged_records = cluster.read("judged");
    let judged: Vec<JudgedSample> = judged_records.iter().map(|r| decode(&r.payload).unwrap()).collect();
    let judged_ids = ids_with_counts(&judged_records);
    assert_eq!(judged_ids.len(), QUESTIONS, "every sample judged, distinct ids == questions");
    assert_eq!(
        judged.iter().map(|j| j.sample.question_id.clone()).collect::<BTreeSet<_>>(),
        questions,
        "no question missing a verdict"
    );
    assert!(judged.iter().all(|j| j.verdict == Verdict::Match), "the server answers these sums right");
    assert!(cluster.read("dead-letters").is_empty());

    // Extra teacher calls: records in flight (2 per replica) or done but not yet committed
    // when s1 died, and in flight at the two rebalances that followed (its departure, s4's
    // arrival). Each duplicate sample record cost one of them.
    let teacher_calls = server.stats.answered.load(Ordering::Relaxed) as usize;
    let duplicates = sample_records.len() - QUESTIONS;
    assert!(teacher_calls >= QUESTIONS + duplicates, "{teacher_calls} calls for {duplicates} duplicates");
    assert!(teacher_calls <= QUESTIONS + 24, "{teacher_calls} teacher calls for {QUESTIONS} questions");

    // Who did the work: the killed replica before it died, the survivors, the added ones.
    let by = |producer: &str, records: &[distillery_runtime::reader::ReadRecord]| {
        records.iter().filter(|r| r.header("distillery-producer") == Some(producer)).count()
    };
    let sampler_counts: Vec<(String, usize)> = ["s1", "s2", "s3", "s4"]
        .iter()
        .map(|r| (r.to_string(), by(&format!("sampler/{r}"), &sample_records)))
        .collect();
    let judge_counts: Vec<(String, usize)> =
        ["j1", "j2", "j3"].iter().map(|r| (r.to_string(), by(&format!("judge/{r}"), &judged_records))).collect();
    assert!(sampler_counts[0].1 > 0, "the killed replica worked before it died: {sampler_counts:?}");
    eprintln!(
        "{QUESTIONS} questions in {:.1}s; samples by replica {sampler_counts:?} ({} records, {} replayed duplicates); \
         verdicts by replica {judge_counts:?} ({} records, {} replayed duplicates); {} teacher calls answered",
        elapsed.as_secs_f64(),
        sample_records.len(),
        sample_records.len() - QUESTIONS,
        judged_records.len(),
        judged_records.len() - QUESTIONS,
        teacher_calls,
    );
}
