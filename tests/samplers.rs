//! Teacher samplers over real HTTP against the fault-injecting OpenAI-compatible server, and a
//! replay teacher serving the assistant turns of Nemotron-format rows.

use distillery_llm_test_server::{style_for, Fault, LlmServer, ReasoningStyle, ServerConfig};
use distillery_runtime::bench::produce_all;
use distillery_schemas::{decode, encode, DeadLetter, Question, TeacherSample};
use distillery_tests::{ids_with_counts, repo_root, wait_until, write_questions, Cluster};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

const QUESTIONS: usize = 500;

fn live_sampler(name: &str, teacher: &str, url: &str) -> String {
    format!(
        r#"
[processors.{name}]
type = "sampler"
inputs = ["questions"]
outputs = {{ samples = "samples" }}
runtime = {{ max_in_flight = 128 }}
[processors.{name}.settings]
teacher = "{teacher}"
model = "test/{teacher}"
max_tokens = 2048
server = {{ endpoints = ["{url}"], retry_attempts = 10, retry_min_delay_ms = 5, retry_max_delay_ms = 100, request_timeout_secs = 10 }}
"#
    )
}

const TOPICS: &str = r#"
[topics.questions]
schema = "question"
partitions = 4
[topics.samples]
schema = "teacher_sample"
partitions = 4
"#;

#[tokio::test(flavor = "multi_thread")]
async fn two_teachers_under_thirty_percent_faults_answer_every_question_once() {
    let config = ServerConfig {
        fault_rate: 0.3,
        faults: Fault::ALL.to_vec(),
        fault_latency_ms: 50,
        retry_after_secs: 0,
        ..ServerConfig::default()
    };
    let server = LlmServer::start(config.clone()).await.unwrap();
    server.keep_bodies();
    let url = server.base_url();
    let topology = format!(
        r#"experiment = "samplers"
{TOPICS}
[processors.feeder]
type = "feeder"
outputs = {{ questions = "questions" }}
settings = {{ files = [{{ uri = "{{dir}}/questions.jsonl", format = "fields", dataset = "s", problem_field = "q", answer_field = "a", id_field = "key" }}] }}
{}{}"#,
        live_sampler("sampler-a", "teacher-a", &url),
        live_sampler("sampler-b", "teacher-b", &url)
    );
    let cluster = Cluster::start(&topology).await;
    write_questions(&cluster.path("questions.jsonl"), QUESTIONS, 80);
    let mut a = cluster.spawn("sampler-a", "0");
    let mut b = cluster.spawn("sampler-b", "0");
    cluster.run_source("feeder");
    wait_until("both samplers done", Duration::from_secs(120), || {
        cluster.lag("sampler-a") == 0 && cluster.lag("sampler-b") == 0
    });
    assert!(a.terminate().success() && b.terminate().success());

    let questions: Vec<Question> = cluster.read("questions").iter().map(|r| decode(&r.payload).unwrap()).collect();
    assert_eq!(questions.len(), QUESTIONS);
    let records = cluster.read("samples");
    let samples: BTreeMap<String, TeacherSample> =
        records.iter().map(|r| decode::<TeacherSample>(&r.payload).unwrap()).map(|s| (s.id.clone(), s)).collect();
    let letters: Vec<DeadLetter> = cluster.read("dead-letters").iter().map(|r| decode(&r.payload).unwrap()).collect();
    assert!(letters.iter().all(|l| !l.error.is_empty()));

    // Every (question, teacher) ends with exactly one sample id, or a dead letter with a reason.
    let lettered: HashSet<(String, String)> = letters
        .iter()
        .map(|l| (decode::<Question>(&l.original).unwrap().id, l.processor.replace("sampler-", "teacher-")))
        .collect();
    for q in &questions {
        for teacher in ["teacher-a", "teacher-b"] {
            let n = samples.values().filter(|s| s.question_id == q.id && s.teacher == teacher).count();
            let dead = lettered.contains(&(q.id.clone(), teacher.to_string()));
            assert!(n == 1 || (n == 0 && dead), "{} / {teacher}: {n} samples, dead letter: {dead}", q.id);
        }
    }
    assert!(ids_with_counts(&records).len() == samples.len(), "duplicates are replays of the same id");
    assert!(
        samples.len() >= 2 * QUESTIONS - 5,
        "30% faults are retried away: {} samples, {} dead letters",
        samples.len(),
        letters.len()
    );

    // All three reasoning styles occurred and were parsed; truncated generations are results.
    let styles: HashSet<ReasoningStyle> = questions.iter().map(|q| style_for(&config, &q.problem)).collect();
    assert_eq!(styles.len(), 3);
    let mut truncated = 0;
    for s in samples.values() {
        assert!(s.reasoning.as_deref().unwrap().starts_with("Let me think about this."), "{s:?}");
        match s.finish_reason.as_str() {
            "stop" => assert!(s.answer.as_deref().unwrap().starts_with("The answer is \\boxed{")),
            "length" => {
                assert_eq!(s.answer, None);
                truncated += 1;
            }
            other => panic!("finish_reason {other}"),
        }
        assert!(s.completion_tokens > 0 && !s.replayed && s.endpoint.as_deref() == Some(url.as_str()));
        assert_eq!(s.sampling.max_tokens, 2048);
    }
    assert!(truncated > 0, "the 'length' fault produced truncated samples");
    let faults = server.stats.faults();
    assert_eq!(faults.len(), Fault::ALL.len(), "every fault kind was injected: {faults:?}");

    // The request: the paper's prompt around the problem, no system prompt, the settings.
    let bodies = server.stats.bodies.lock().unwrap();
    let body = &bodies[0];
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert!(messages[0]["content"].as_str().unwrap().starts_with(
        "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}.\n\nWhat is "
    ));
    assert_eq!(body["max_tokens"], 2048);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_teacher_serves_the_recorded_assistant_turns() {
    let fixture = repo_root().join("tests/fixtures/nemotron-format.parquet").display().to_string();
    let topology = format!(
        r#"experiment = "replay"
{TOPICS}
[processors.feeder]
type = "feeder"
outputs = {{ questions = "questions" }}
settings = {{ files = [{{ uri = "{fixture}", format = "nemotron", dataset = "nm" }}] }}
[processors.sampler-r1]
type = "sampler"
inputs = ["questions"]
outputs = {{ samples = "samples" }}
[processors.sampler-r1.settings]
teacher = "deepseek-r1"
model = "deepseek-ai/DeepSeek-R1"
replay = {{ dataset = {{ uri = "{fixture}", format = "nemotron", dataset = "nm" }} }}
"#
    );
    let cluster = Cluster::start(&topology).await;
    let mut sampler = cluster.spawn("sampler-r1", "0");
    cluster.run_source("feeder");
    // A question the recording does not have is a dead letter, not a silent drop.
    let stranger = Question {
        id: "nm:not-recorded".into(),
        dataset: "nm".into(),
        source_uri: "x".into(),
        source_row: 0,
        problem: "Unrecorded?".into(),
        expected_answer: "1".into(),
        metadata: Default::default(),
    };
    produce_all(&cluster.connection(), &cluster.topology.topic_name("questions"), &[encode(&stranger).unwrap()])
        .await
        .unwrap();
    wait_until("replayed", Duration::from_secs(60), || cluster.lag("sampler-r1") == 0);
    assert!(sampler.terminate().success());

    let samples: Vec<TeacherSample> = cluster.read("samples").iter().map(|r| decode(&r.payload).unwrap()).collect();
    assert_eq!(samples.len(), 100);
    assert_eq!(samples.iter().map(|s| &s.question_id).collect::<BTreeSet<_>>().len(), 100);
    for s in &samples {
        assert!(s.replayed && s.teacher == "deepseek-r1" && s.endpoint.is_none());
        let answer = s.answer.as_deref().unwrap();
        assert!(answer.starts_with("The final answer is $\\boxed{"), "{answer}");
        assert!(answer.contains(&s.expected_answer), "the reference solution's answer is the ground truth");
        assert!(!s.reasoning.as_deref().unwrap().contains("<think>"));
    }
    let letters: Vec<DeadLetter> = cluster.read("dead-letters").iter().map(|r| decode(&r.payload).unwrap()).collect();
    let sampler_letters: Vec<_> = letters.iter().filter(|l| l.processor == "sampler-r1").collect();
    assert_eq!(sampler_letters.len(), 1);
    assert!(
        sampler_letters[0].error.starts_with("no recorded trace for question nm:not-recorded"),
        "{}",
        sampler_letters[0].error
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_questions_empty_problems_and_huge_responses_get_clear_dead_letters() {
    let server = LlmServer::start(ServerConfig { oversized_problems: vec!["HUGE".into()], ..ServerConfig::default() })
        .await
        .unwrap();
    let topology = format!(
        r#"experiment = "sampler-dlq"
{TOPICS}
[processors.feeder]
type = "feeder"
outputs = {{ questions = "questions" }}
settings = {{ files = [{{ uri = "unused.jsonl", format = "aime" }}] }}
{}"#,
        live_sampler("sampler-a", "teacher-a", &server.base_url())
    );
    let cluster = Cluster::start(&topology).await;
    let question = |id: &str, problem: &str| {
        encode(&Question {
            id: id.into(),
            dataset: "d".into(),
            source_uri: "x".into(),
            source_row: 0,
            problem: problem.into(),
            expected_answer: "1".into(),
            metadata: Default::default(),
        })
        .unwrap()
    };
    let inputs = [
        b"{\"not\": \"avro\"}".to_vec(),
        question("empty", "  "),
        question("huge", "a HUGE answer"),
        question("fine", "What is 1 + 1?"),
    ];
    produce_all(&cluster.connection(), &cluster.topology.topic_name("questions"), &inputs).await.unwrap();
    let mut sampler = cluster.spawn("sampler-a", "0");
    wait_until("settled", Duration::from_secs(60), || cluster.lag("sampler-a") == 0);
    assert!(sampler.is_running());
    assert!(sampler.terminate().success());
    let samples: Vec<TeacherSample> = cluster.read("samples").iter().map(|r| decode(&r.payload).unwrap()).collect();
    assert_eq!(samples.iter().map(|s| s.question_id.as_str()).collect::<Vec<_>>(), ["fine"]);
    let errors: Vec<String> =
        cluster.read("dead-letters").iter().map(|r| decode::<DeadLetter>(&r.payload).unwrap().error).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("cannot decode the record as question")), "{errors:?}");
    assert!(errors.iter().any(|e| e == "question empty has no problem text"), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.ends_with("response of 2500373 bytes exceeds max_response_bytes (1048576)")),
        "{errors:?}"
    );
}
