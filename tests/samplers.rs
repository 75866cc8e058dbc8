//! Teacher samplers over real HTTP against the fault-injecting OpenAI-compatible server, and a
//! replay teacher serving the assistant turns of Nemotron-format rows.

use distillery_llm_test_server::{style_for, Fault, LlmServer, ReasoningStyle, ServerConfig};
use distillery_runtime::bench::produce_all;
use distillery_schemas::{decode, DeadLetter, JudgeMethod, JudgedSample, Question, TeacherSample, Verdict};
use distillery_tests::{encoded_question, ids_with_counts, repo_root, wait_until, write_questions, Cluster};
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
[topics.judged]
schema = "judged_sample"
partitions = 4
"#;

fn judge(url: &str) -> String {
    format!(
        r#"
[processors.judge]
type = "judge"
inputs = ["samples"]
outputs = {{ judged = "judged" }}
runtime = {{ max_in_flight = 128 }}
[processors.judge.settings]
model = "test/judge"
server = {{ endpoints = ["{url}"], retry_attempts = 10, retry_min_delay_ms = 5, retry_max_delay_ms = 100, request_timeout_secs = 10 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_teachers_and_the_judge_under_thirty_percent_faults_handle_every_question_once() {
    // Every tenth question is answered in words, which the rule verifier leaves to the LLM judge.
    let dir = tempfile::tempdir().unwrap();
    write_questions(&dir.path().join("questions.jsonl"), QUESTIONS, 80);
    let mut answers = std::collections::HashMap::new();
    for (i, line) in std::fs::read_to_string(dir.path().join("questions.jsonl")).unwrap().lines().enumerate() {
        if i % 10 == 0 {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            answers.insert(row["q"].as_str().unwrap().to_string(), format!("\\text{{the number }} {}", i + 1));
        }
    }
    let config = ServerConfig {
        answers,
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
{}{}{}"#,
        live_sampler("sampler-a", "teacher-a", &url),
        live_sampler("sampler-b", "teacher-b", &url),
        judge(&url)
    );
    let cluster = Cluster::start(&topology).await;
    std::fs::copy(dir.path().join("questions.jsonl"), cluster.path("questions.jsonl")).unwrap();
    let mut a = cluster.spawn("sampler-a", "0");
    let mut b = cluster.spawn("sampler-b", "0");
    let mut j = cluster.spawn("judge", "0");
    cluster.run_source("feeder");
    wait_until("samplers and judge done", Duration::from_secs(120), || {
        cluster.lag("sampler-a") == 0 && cluster.lag("sampler-b") == 0 && cluster.lag("judge") == 0
    });
    assert!(a.terminate().success() && b.terminate().success() && j.terminate().success());

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

    // The judge: one verdict per sample; the clear cases by rule, the worded ones by the LLM.
    let judged: BTreeMap<String, JudgedSample> = cluster
        .read("judged")
        .iter()
        .map(|r| decode::<JudgedSample>(&r.payload).unwrap())
        .map(|j| (j.sample.id.clone(), j))
        .collect();
    let judge_letters = letters.iter().filter(|l| l.processor == "judge").count();
    assert_eq!(judged.len() + judge_letters, samples.len(), "every sample judged once (or dead-lettered): {}", j.log());
    let mut by_path = BTreeMap::<(String, String), usize>::new();
    for j in judged.values() {
        *by_path.entry((format!("{:?}", j.method), format!("{:?}", j.verdict))).or_default() += 1;
        match (j.sample.finish_reason.as_str(), j.sample.answer.as_deref()) {
            ("length", _) => assert_eq!((j.verdict, j.method), (Verdict::Mismatch, JudgeMethod::Rule)),
            (_, Some(answer)) if answer.contains("the number") => {
                assert_eq!((j.verdict, j.method), (Verdict::Match, JudgeMethod::Llm), "{j:?}");
                // The judge model's answer (not its reasoning) is recorded: its bold verdict.
                assert!(j.judge_output.as_deref().unwrap().contains("**MATCH**"), "{j:?}");
            }
            _ => assert_eq!((j.verdict, j.method), (Verdict::Match, JudgeMethod::Rule), "{j:?}"),
        }
    }
    eprintln!("verdicts by (method, verdict): {by_path:?}");
    assert!(by_path.keys().any(|(m, _)| m == "Llm") && by_path.keys().any(|(m, _)| m == "Rule"));

    // The requests: the paper's prompt around the problem, no system prompt, the settings; the
    // judge's system prompt verbatim with both answers in their tags.
    let bodies = server.stats.bodies.lock().unwrap();
    let judge_body = bodies.iter().find(|b| b["model"] == "test/judge").unwrap();
    assert_eq!(judge_body["messages"][0]["content"], distillery_judge::config::DEFAULT_SYSTEM_PROMPT);
    assert!(judge_body["messages"][1]["content"].as_str().unwrap().starts_with("<CORRECT_ANSWER>\n"));
    let body = bodies.iter().find(|b| b["model"] == "test/teacher-a").unwrap();
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
    let stranger = encoded_question("nm:not-recorded", "Unrecorded?");
    produce_all(&cluster.connection(), &cluster.topology.topic_name("questions"), &[stranger]).await.unwrap();
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
async fn bad_questions_empty_problems_empty_answers_and_huge_responses_get_clear_dead_letters() {
    let server = LlmServer::start(ServerConfig {
        oversized_problems: vec!["HUGE".into()],
        empty_problems: vec!["EMPTY".into()],
        ..ServerConfig::default()
    })
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
    let question = encoded_question;
    let inputs = [
        b"{\"not\": \"avro\"}".to_vec(),
        question("empty", "  "),
        question("huge", "a HUGE answer"),
        question("empty-answer", "an EMPTY answer"),
        question("fine", "What is 1 + 1?"),
    ];
    produce_all(&cluster.connection(), &cluster.topology.topic_name("questions"), &inputs).await.unwrap();
    let mut sampler = cluster.spawn("sampler-a", "0");
    wait_until("settled", Duration::from_secs(60), || cluster.lag("sampler-a") == 0);
    assert!(sampler.is_running());
    assert!(sampler.terminate().success());
    let samples: Vec<TeacherSample> = cluster.read("samples").iter().map(|r| decode(&r.payload).unwrap()).collect();
    assert_eq!(samples.iter().map(|s| s.question_id.as_str()).collect::<Vec<_>>(), ["fine"], "{samples:?}");
    let errors: Vec<String> =
        cluster.read("dead-letters").iter().map(|r| decode::<DeadLetter>(&r.payload).unwrap().error).collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with("gave up after 10 attempts; last error:")
            && e.ends_with("empty completion (finish_reason stop)")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.starts_with("cannot decode the record as question")), "{errors:?}");
    assert!(errors.iter().any(|e| e == "question empty has no problem text"), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.ends_with("response of 2500373 bytes exceeds max_response_bytes (1048576)")),
        "{errors:?}"
    );
}
