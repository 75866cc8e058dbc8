//! What a run is made of: the teachers (local test servers), the questions, the topology, and
//! the scripted late verdict.

use super::{ChaosArgs, RunContext, STEADY_TRAINER};
use distillery_llm_test_server::{Fault, LlmServer, ServerConfig};
use distillery_schemas::{
    encode, now_ms, stable_id, JudgeMethod, JudgedSample, SamplingSettings, TeacherSample, Verdict,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;

/// A question the driver itself gives the agreement, not fed to the teachers: its first
/// verdict (teacher A's) is an hour old in event time, so it expires at once; once it has,
/// teacher B's verdict arrives, late, and must change nothing.
pub const EXPIRING_QUESTION: &str = "q-expiring";

/// The agreement's `expire_after_secs`: far beyond what the disruptions delay a verdict by,
/// so only the scripted question expires.
pub const EXPIRE_AFTER_SECS: u64 = 600;

/// The id of question `i`.
pub fn question_id(i: usize) -> String {
    format!("q{i:05}")
}

pub fn problem(i: usize) -> String {
    format!("Question {i}: What is {i} + 1?")
}

pub fn write_questions(path: &Path, n: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(file, "{}", serde_json::json!({"key": question_id(i), "q": problem(i), "a": (i + 1).to_string()}))?;
    }
    Ok(file.flush()?)
}

/// Two endpoints per teacher. Teacher B answers every seventh question wrong.
pub struct Teachers {
    pub a: [LlmServer; 2],
    pub b: [LlmServer; 2],
}

/// Teacher requests, and the answers among them (requests minus the faults that got no
/// answer): what the LLM servers were asked to generate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TeacherCalls {
    pub requests: u64,
    pub answered: u64,
}

impl Teachers {
    pub async fn start(args: &ChaosArgs, latency_ms: u64) -> anyhow::Result<Teachers> {
        let config = |seed: u64, answers: HashMap<String, String>| ServerConfig {
            fault_rate: args.fault_rate,
            faults: Fault::RETRYABLE.to_vec(),
            fault_latency_ms: 2 * latency_ms,
            latency_ms,
            retry_after_secs: 0,
            answers,
            seed: args.seed ^ seed,
            ..ServerConfig::default()
        };
        let wrong: HashMap<String, String> =
            (0..args.questions).filter(|i| i % 7 == 3).map(|i| (problem(i), (i + 2).to_string())).collect();
        Ok(Teachers {
            a: [LlmServer::start(config(1, HashMap::new())).await?, LlmServer::start(config(2, HashMap::new())).await?],
            b: [LlmServer::start(config(3, wrong.clone())).await?, LlmServer::start(config(4, wrong)).await?],
        })
    }

    fn servers(&self) -> impl Iterator<Item = &LlmServer> {
        self.a.iter().chain(&self.b)
    }

    pub fn faults(&self) -> BTreeMap<Fault, u64> {
        let mut total = BTreeMap::new();
        for server in self.servers() {
            for (fault, n) in server.stats.faults() {
                *total.entry(fault).or_insert(0) += n;
            }
        }
        total
    }

    pub fn calls(&self) -> TeacherCalls {
        let mut calls = TeacherCalls::default();
        for server in self.servers() {
            calls.requests += server.stats.requests.load(Ordering::Relaxed);
            calls.answered += server.stats.answered.load(Ordering::Relaxed);
        }
        calls
    }
}

/// Teacher A's MATCH for [`EXPIRING_QUESTION`], judged an hour ago (so it expires at once).
pub fn expiring_verdict() -> (String, Vec<u8>) {
    verdict("teacher-a", now_ms() - 3_600_000)
}

/// Teacher B's MATCH for [`EXPIRING_QUESTION`], now: after the question expired.
pub fn late_verdict() -> (String, Vec<u8>) {
    verdict("teacher-b", now_ms())
}

/// A MATCH of `teacher` for [`EXPIRING_QUESTION`], as the judge writes them. Returns (key,
/// record).
fn verdict(teacher: &str, judged_at_ms: i64) -> (String, Vec<u8>) {
    let question = EXPIRING_QUESTION.to_string();
    let sample = TeacherSample {
        id: stable_id(&[&question, teacher, "0"]),
        question_id: question.clone(),
        dataset: "chaos".into(),
        problem: "What is 1 + 1?".into(),
        expected_answer: "2".into(),
        teacher: teacher.into(),
        attempt: 0,
        model: format!("test/{teacher}"),
        server_model: None,
        endpoint: None,
        reasoning: Some("1 + 1 = 2.".into()),
        answer: Some("\\boxed{2}".into()),
        finish_reason: "stop".into(),
        prompt_tokens: 10,
        completion_tokens: 10,
        reasoning_tokens: None,
        latency_ms: 1,
        sampling: SamplingSettings {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 2048,
            reasoning_effort: None,
            system_prompt: None,
            prompt_template: "{problem}".into(),
            seed: None,
        },
        replayed: false,
        created_at_ms: judged_at_ms,
    };
    let judged = JudgedSample {
        id: stable_id(&[&sample.id, "judge"]),
        sample,
        verdict: Verdict::Match,
        extracted_answer: Some("2".into()),
        method: JudgeMethod::Rule,
        judge_model: None,
        judge_output: None,
        detail: None,
        judged_at_ms,
    };
    (question, encode(&judged).expect("a judged sample encodes"))
}

/// The topology of one run. Every stage's replicas share a consumer group; the topics have
/// two partitions per replica, so a replica that joins still gets some.
pub fn topology_text(
    context: &RunContext,
    experiment: &str,
    teachers: &Teachers,
    trainer_steps: Option<u64>,
) -> String {
    let args = &context.args;
    let data = context.cwd.join("topology/data/student");
    let tokenizer = format!(
        "tokenizer = \"{}\"\ntokenizer_config = \"{}\"",
        data.join("tokenizer.json").display(),
        data.join("tokenizer_config.json").display()
    );
    let store = format!("{}/{experiment}", context.store_root);
    let replicas = args.replicas;
    // Short session timeouts so a killed member's partitions move on within seconds.
    let runtime = "session_timeout_ms = 3000, commit_interval_ms = 200";
    let sampler = |name: &str, teacher: &str, servers: &[LlmServer; 2]| {
        format!(
            r#"
[processors.{name}]
type = "sampler"
inputs = ["questions"]
outputs = {{ samples = "samples" }}
replicas = {replicas}
runtime = {{ max_in_flight = 8, {runtime} }}
[processors.{name}.settings]
teacher = "{teacher}"
model = "test/{teacher}"
max_tokens = 2048
server = {{ endpoints = ["{}", "{}"], retry_attempts = 40, retry_min_delay_ms = 10, retry_max_delay_ms = 500, request_timeout_secs = 10 }}
"#,
            servers[0].base_url(),
            servers[1].base_url()
        )
    };
    let packer = |style: &str| {
        format!(
            r#"
[processors.packer-{style}]
type = "packer"
inputs = ["agreed"]
outputs = {{ shards = "shards.{style}" }}
replicas = {replicas}
runtime = {{ max_in_flight = 1, tick_interval_ms = 500, {runtime} }}
[processors.packer-{style}.settings]
style = "teacher-{style}"
{tokenizer}
store = "{store}/shards/{style}"
row_tokens = 256
rows_per_shard = 4
flush_idle_secs = 3
"#
        )
    };
    let trainer = |name: &str| {
        format!(
            r#"
[processors.{name}]
type = "trainer"
inputs = ["shards.a"]
outputs = {{ checkpoints = "checkpoints", metrics = "train-metrics" }}
[processors.{name}.settings]
student = "random"
model_config = "tiny"
style = "teacher-a"
{tokenizer}
steps = {}
global_batch_rows = 2
learning_rate = 1e-3
warmup_start_lr = 1e-4
checkpoint_every_steps = 2
checkpoint_store = "{store}/checkpoints"
"#,
            trainer_steps.unwrap_or(1)
        )
    };
    let keyed = 2 * replicas.max(2);
    let topics: String = [
        ("questions", "question", keyed),
        ("samples", "teacher_sample", keyed),
        ("judged", "judged_sample", keyed),
        ("agreed", "agreed_sample", keyed),
        ("rejected", "agreed_sample", keyed),
        ("\"shards.a\"", "shard_manifest", 1),
        ("\"shards.b\"", "shard_manifest", 1),
        ("checkpoints", "checkpoint_event", 1),
        ("train-metrics", "train_metrics", 1),
    ]
    .iter()
    .map(|(name, schema, partitions)| format!("[topics.{name}]\nschema = \"{schema}\"\npartitions = {partitions}\n"))
    .collect();
    format!(
        r#"experiment = "chaos-{experiment}"
{topics}
[processors.feeder]
type = "feeder"
outputs = {{ questions = "questions" }}
settings = {{ files = [{{ uri = "{questions}", format = "fields", dataset = "chaos", problem_field = "q", answer_field = "a", id_field = "key" }}] }}
{sampler_a}{sampler_b}
[processors.judge]
type = "judge"
inputs = ["samples"]
outputs = {{ judged = "judged" }}
replicas = {replicas}
runtime = {{ {runtime} }}
settings = {{ mode = "rules-only" }}

[processors.agreement]
type = "agreement"
inputs = ["judged"]
outputs = {{ agreed = "agreed", rejected = "rejected" }}
replicas = {replicas}
runtime = {{ max_in_flight = 1, tick_interval_ms = 500, {runtime} }}
settings = {{ required_teachers = ["teacher-a", "teacher-b"], expire_after_secs = {EXPIRE_AFTER_SECS} }}
{packer_a}{packer_b}{trainer}{steady}"#,
        questions = context.questions_path.display(),
        sampler_a = sampler("sampler-a", "teacher-a", &teachers.a),
        sampler_b = sampler("sampler-b", "teacher-b", &teachers.b),
        packer_a = packer("a"),
        packer_b = packer("b"),
        trainer = trainer("trainer-a"),
        steady = trainer(STEADY_TRAINER),
    )
}
