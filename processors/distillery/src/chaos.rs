//! `distillery chaos`: the claim users rely on, checked end to end. The same questions go
//! through the full topology twice, each run on its own local broker:
//!
//! 1. **clean**: nothing is disturbed;
//! 2. **chaos**: a driver SIGKILLs a random processor replica every second or so (at least
//!    `kills_per_kind` kills of each kind: sampler, judge, agreement, packer, trainer) and
//!    restarts it, while the teachers answer 30% of requests with faults, one endpoint of a
//!    teacher goes down, the S3 server goes away (when shards go to S3), and the broker is
//!    killed and restarted on its SQLite store.
//!
//! Then the two are compared: the agreed and rejected questions, the multiset of packed
//! sequences per style (packing order may differ, contents may not), the totals in the shard
//! manifests; every manifest must point at a complete shard and no question may sit in two
//! shards. In the chaos run a second trainer that is never killed reads the same shards: the
//! killed one must end on the same shard sequence (none skipped, none repeated) with
//! bit-identical weights and optimizer state.
//!
//! Teachers are local OpenAI-compatible test servers over real HTTP (two endpoints per
//! teacher; the second teacher is wrong on every seventh question so the agreement filter
//! rejects some). The faults injected are the retryable ones (latency, 429, 500, 503,
//! resets, truncated JSON): a truncated generation changes a sample's content, so it would
//! make the two runs legitimately differ; `tests/samplers.rs` covers it.
//!
//! The driver is also the supervisor: a process that exits on its own is restarted (as
//! compose's `restart: unless-stopped` would) and counted in the report.

use distillery_llm_test_server::proxy::TcpProxy;
use distillery_llm_test_server::{Fault, LlmServer, ServerConfig};
use distillery_packer::shard::read_shard;
use distillery_runtime::broker::{BrokerStore, LocalBroker};
use distillery_runtime::objects::get_bytes;
use distillery_runtime::reader::{end_offset_total, read_to_end, ReadRecord};
use distillery_runtime::{admin, Connection, Topology};
use distillery_schemas::{
    decode, AgreedSample, CheckpointEvent, DeadLetter, JudgedSample, Question, ShardManifest, TeacherSample,
};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Questions fed through both runs ("What is i + 1?").
    #[arg(long, default_value_t = 1000)]
    pub questions: usize,
    /// SIGKILLs of each processor kind in the chaos run, at least.
    #[arg(long, default_value_t = 10)]
    pub kills_per_kind: usize,
    /// Pause between two kills, drawn uniformly from [min, max] milliseconds.
    #[arg(long, default_value_t = 300)]
    pub kill_gap_min_ms: u64,
    #[arg(long, default_value_t = 900)]
    pub kill_gap_max_ms: u64,
    /// Share of teacher requests answered with a fault (both runs).
    #[arg(long, default_value_t = 0.3)]
    pub fault_rate: f64,
    /// Latency of every teacher answer in the chaos run: it sets how long the run lasts,
    /// so that every kind can be killed often while it works. (The clean run's teachers answer
    /// at once; latency does not change what they answer.)
    #[arg(long, default_value_t = 300)]
    pub teacher_latency_ms: u64,
    /// Optimizer steps of the two trainers in the chaos run (at most 70% of the rows the
    /// clean run packed, so they never wait for rows that may not come).
    #[arg(long, default_value_t = 120)]
    pub trainer_steps: u64,
    /// How long one endpoint of teacher A is down in the chaos run.
    #[arg(long, default_value_t = 60)]
    pub teacher_down_secs: u64,
    /// How long the S3 server is unreachable in the chaos run (only with --s3-bucket).
    #[arg(long, default_value_t = 20)]
    pub s3_down_secs: u64,
    /// Put shards and checkpoints in this S3 bucket, reached at $AWS_ENDPOINT (with the usual
    /// AWS_* credentials) through a proxy the driver can cut. Without it they go to a local
    /// folder and there is no S3 outage.
    #[arg(long)]
    pub s3_bucket: Option<String>,
    #[arg(long, default_value_t = 20261129)]
    pub seed: u64,
    /// Logs, broker stores and (without S3) shards and checkpoints; emptied first.
    #[arg(long, default_value = "work/chaos")]
    pub work_dir: PathBuf,
    /// The `distillery` binary that runs the processors (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Give up on a run after this long.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

/// Kinds of processor the driver kills, and the topics whose growth shows each is working.
const KINDS: [(&str, &[&str], &[&str]); 5] = [
    ("sampler", &["sampler-a", "sampler-b"], &["samples"]),
    ("judge", &["judge"], &["judged"]),
    ("agreement", &["agreement"], &["agreed", "rejected"]),
    ("packer", &["packer-a", "packer-b"], &["shards.a", "shards.b"]),
    ("trainer", &["trainer-a"], &["train-metrics"]),
];

/// The trainer that is never killed: the reference the killed one is compared with.
const STEADY_TRAINER: &str = "trainer-a-steady";

pub async fn run(args: ChaosArgs) -> anyhow::Result<ChaosReport> {
    let cwd = std::env::current_dir()?;
    let work = cwd.join(&args.work_dir);
    for run in ["clean", "chaos"] {
        let _ = std::fs::remove_dir_all(work.join(run));
    }
    std::fs::create_dir_all(&work)?;
    let questions_path = work.join("questions.jsonl");
    write_questions(&questions_path, args.questions)?;

    let teachers = [Teachers::start(&args, 0).await?, Teachers::start(&args, args.teacher_latency_ms).await?];
    let (store_root, s3_proxy) = match &args.s3_bucket {
        Some(bucket) => {
            let endpoint = std::env::var("AWS_ENDPOINT")
                .map_err(|_| anyhow::anyhow!("--s3-bucket needs AWS_ENDPOINT (e.g. http://127.0.0.1:9000)"))?;
            let upstream = endpoint.trim_start_matches("http://").trim_end_matches('/');
            let upstream = tokio::net::lookup_host(upstream)
                .await?
                .next()
                .ok_or_else(|| anyhow::anyhow!("cannot resolve {endpoint}"))?;
            let proxy = TcpProxy::start(upstream).await?;
            // Every process, this one included, reaches S3 through the proxy.
            std::env::set_var("AWS_ENDPOINT", format!("http://{}", proxy.addr));
            std::env::set_var("AWS_ALLOW_HTTP", "true");
            // A fresh prefix per invocation: nothing of an earlier run is read back.
            let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            (format!("s3://{bucket}/chaos-{}-{started}", args.seed), Some(proxy))
        }
        None => (work.display().to_string(), None),
    };
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?,
    };
    let context = Arc::new(RunContext {
        args: args.clone(),
        cwd,
        work,
        bin,
        questions_path,
        store_root,
        teachers,
        s3_proxy,
        runtime: tokio::runtime::Handle::current(),
    });
    let report = tokio::task::spawn_blocking(move || drive(&context)).await??;
    println!("{}", report.to_markdown());
    Ok(report)
}

struct RunContext {
    args: ChaosArgs,
    cwd: PathBuf,
    work: PathBuf,
    bin: PathBuf,
    questions_path: PathBuf,
    store_root: String,
    /// The clean run's teachers, then the chaos run's.
    teachers: [Teachers; 2],
    s3_proxy: Option<TcpProxy>,
    runtime: tokio::runtime::Handle,
}

fn drive(context: &RunContext) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let clean = Pipeline::start(context, "clean", &context.teachers[0], None)?;
    println!("clean run: {} questions, no disruption", context.args.questions);
    let clean_outcome = clean.run_to_end(context, None)?;
    let clean_secs = started.elapsed().as_secs_f64();
    println!("clean run done in {clean_secs:.0}s: {}", clean_outcome.summary());

    // The trainers take most of the rows the clean run packed, so they keep working (and
    // being killed) through most of the chaos run.
    let rows = clean_outcome.manifest_totals.get("a").map_or(0, |t| t.rows);
    let trainer_steps = context.args.trainer_steps.min(rows * 7 / 10 / 2).max(4);
    let chaos_started = Instant::now();
    let chaos = Pipeline::start(context, "chaos", &context.teachers[1], Some(trainer_steps))?;
    println!(
        "chaos run: SIGKILLs every {}-{} ms, trainers take {trainer_steps} steps",
        context.args.kill_gap_min_ms, context.args.kill_gap_max_ms
    );
    let mut disruptions = Disruptions::new(context, &chaos);
    let chaos_outcome = chaos.run_to_end(context, Some(&mut disruptions))?;
    let chaos_secs = chaos_started.elapsed().as_secs_f64();
    println!("chaos run done in {chaos_secs:.0}s: {}", chaos_outcome.summary());

    let faults = context.teachers[1].faults();
    Ok(ChaosReport::compare(context, clean_outcome, chaos_outcome, disruptions, faults, clean_secs, chaos_secs))
}

// --- teachers -------------------------------------------------------------------------------

/// Two endpoints per teacher. Teacher B answers every seventh question wrong.
struct Teachers {
    a: [LlmServer; 2],
    b: [LlmServer; 2],
}

impl Teachers {
    async fn start(args: &ChaosArgs, latency_ms: u64) -> anyhow::Result<Teachers> {
        let config = |seed: u64, answers: std::collections::HashMap<String, String>| ServerConfig {
            fault_rate: args.fault_rate,
            faults: Fault::RETRYABLE.to_vec(),
            fault_latency_ms: 2 * latency_ms,
            latency_ms,
            retry_after_secs: 0,
            answers,
            seed: args.seed ^ seed,
            ..ServerConfig::default()
        };
        let wrong: std::collections::HashMap<String, String> =
            (0..args.questions).filter(|i| i % 7 == 3).map(|i| (problem(i), (i + 2).to_string())).collect();
        Ok(Teachers {
            a: [
                LlmServer::start(config(1, Default::default())).await?,
                LlmServer::start(config(2, Default::default())).await?,
            ],
            b: [LlmServer::start(config(3, wrong.clone())).await?, LlmServer::start(config(4, wrong)).await?],
        })
    }

    fn faults(&self) -> BTreeMap<Fault, u64> {
        let mut total = BTreeMap::new();
        for server in self.a.iter().chain(&self.b) {
            for (fault, n) in server.stats.faults() {
                *total.entry(fault).or_insert(0) += n;
            }
        }
        total
    }
}

fn problem(i: usize) -> String {
    format!("Question {i}: What is {i} + 1?")
}

fn write_questions(path: &Path, n: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            file,
            "{}",
            serde_json::json!({"key": format!("q{i:05}"), "q": problem(i), "a": (i + 1).to_string()})
        )?;
    }
    Ok(file.flush()?)
}

// --- the topology ---------------------------------------------------------------------------

fn topology_text(context: &RunContext, experiment: &str, teachers: &Teachers, trainer_steps: Option<u64>) -> String {
    let data = context.cwd.join("topology/data/student");
    let tokenizer = format!(
        "tokenizer = \"{}\"\ntokenizer_config = \"{}\"",
        data.join("tokenizer.json").display(),
        data.join("tokenizer_config.json").display()
    );
    let store = format!("{}/{experiment}", context.store_root);
    // Short session timeouts so a killed member's partitions move on within seconds.
    let runtime = "session_timeout_ms = 3000, commit_interval_ms = 200";
    let sampler = |name: &str, teacher: &str, servers: &[LlmServer; 2]| {
        format!(
            r#"
[processors.{name}]
type = "sampler"
inputs = ["questions"]
outputs = {{ samples = "samples" }}
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
runtime = {{ max_in_flight = 1, {runtime} }}
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
    let topics: String = [
        ("questions", "question", 4),
        ("samples", "teacher_sample", 4),
        ("judged", "judged_sample", 4),
        ("agreed", "agreed_sample", 4),
        ("rejected", "agreed_sample", 4),
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
runtime = {{ {runtime} }}
settings = {{ mode = "rules-only" }}

[processors.agreement]
type = "agreement"
inputs = ["judged"]
outputs = {{ agreed = "agreed", rejected = "rejected" }}
runtime = {{ max_in_flight = 1, {runtime} }}
settings = {{ required_teachers = ["teacher-a", "teacher-b"] }}
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

// --- one run --------------------------------------------------------------------------------

/// A broker with the topology applied and its processors running as child processes.
struct Pipeline {
    dir: PathBuf,
    broker: LocalBroker,
    topology: Topology,
    topology_path: PathBuf,
    with_trainers: bool,
    replicas: BTreeMap<String, Replica>,
    starts: usize,
    /// Processes that exited on their own and were restarted: (name, status, last log line).
    unplanned_exits: Vec<(String, String, String)>,
}

struct Replica {
    child: Child,
    started: Instant,
    /// The stage's output count when this replica started (it is killed only after it grew).
    output_at_start: i64,
    finished: bool,
    log: PathBuf,
}

impl Pipeline {
    fn start(
        context: &RunContext,
        run: &str,
        teachers: &Teachers,
        trainer_steps: Option<u64>,
    ) -> anyhow::Result<Pipeline> {
        let dir = context.work.join(run);
        std::fs::create_dir_all(dir.join("logs"))?;
        let broker = LocalBroker::start(BrokerStore::Sqlite(dir.join("broker.db")), Some(&dir.join("broker.log")))?;
        let topology_path = dir.join("topology.toml");
        std::fs::write(&topology_path, topology_text(context, run, teachers, trainer_steps))?;
        let topology = Topology::load(&topology_path)?;
        topology.validate(&topology_path.display().to_string(), &crate::registry::processor_types())?;
        context.runtime.block_on(admin::apply_topology(&topology, &broker.connection()))?;
        let mut pipeline = Pipeline {
            dir,
            broker,
            topology,
            topology_path,
            with_trainers: trainer_steps.is_some(),
            replicas: BTreeMap::new(),
            starts: 0,
            unplanned_exits: Vec::new(),
        };
        let consumers: Vec<String> = pipeline
            .topology
            .processors
            .iter()
            .filter(|(_, p)| !p.inputs.is_empty() && (pipeline.with_trainers || p.kind != "trainer"))
            .map(|(name, _)| name.clone())
            .collect();
        for name in consumers {
            pipeline.spawn(context, &name)?;
        }
        let mut feeder = pipeline.command(context, "feeder")?.spawn()?;
        anyhow::ensure!(feeder.wait()?.success(), "the feeder failed (logs in {})", pipeline.dir.display());
        Ok(pipeline)
    }

    fn connection(&self) -> Connection {
        self.broker.connection()
    }

    fn command(&mut self, context: &RunContext, name: &str) -> anyhow::Result<Command> {
        self.starts += 1;
        let log_path = self.dir.join("logs").join(format!("{name}-{}.log", self.starts));
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(&context.bin);
        command
            .current_dir(&context.cwd)
            .args(["run", name, "--topology"])
            .arg(&self.topology_path)
            .args(["--bootstrap-servers", &self.broker.bootstrap_servers(), "--replica", "0"])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    }

    fn spawn(&mut self, context: &RunContext, name: &str) -> anyhow::Result<()> {
        let log = self.dir.join("logs").join(format!("{name}-{}.log", self.starts + 1));
        let child = self.command(context, name)?.spawn()?;
        let output_at_start = self.output_count(kind_of(name)).unwrap_or(0);
        self.replicas.insert(
            name.to_string(),
            Replica { child, started: Instant::now(), output_at_start, finished: false, log },
        );
        Ok(())
    }

    /// Records on a kind's output topics (None while the broker does not answer).
    /// Records on a kind's output topics, or on every stage's with "any" (None while the
    /// broker does not answer).
    fn output_count(&self, kind: &str) -> Option<i64> {
        let connection = self.connection();
        KINDS
            .iter()
            .filter(|(k, _, _)| kind == "any" || *k == kind)
            .flat_map(|(_, _, outputs)| outputs.iter())
            .map(|t| end_offset_total(&connection, &self.topology.topic_name(t)).ok())
            .sum()
    }

    fn read(&self, topic: &str) -> anyhow::Result<Vec<ReadRecord>> {
        read_to_end(&self.connection(), &self.topology.topic_name(topic), Duration::from_secs(30))
    }

    /// Restarts processes that exited on their own; a trainer that finished its steps stays
    /// finished.
    fn supervise(&mut self, context: &RunContext) -> anyhow::Result<()> {
        let mut exited = Vec::new();
        for (name, replica) in &mut self.replicas {
            if replica.finished {
                continue;
            }
            if let Some(status) = replica.child.try_wait()? {
                let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
                if status.success() && name.starts_with("trainer") {
                    replica.finished = true;
                    continue;
                }
                let last = log
                    .lines()
                    .find(|l| l.starts_with("Error:"))
                    .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
                    .unwrap_or_default()
                    .to_string();
                exited.push((name.clone(), status.to_string(), last));
            }
        }
        for (name, status, last) in exited {
            println!("  {name} exited on its own ({status}): {last}; restarting it");
            self.unplanned_exits.push((name.clone(), status, last));
            self.spawn(context, &name)?;
        }
        Ok(())
    }

    /// SIGKILL, then start again at once.
    fn kill_and_restart(&mut self, context: &RunContext, name: &str) -> anyhow::Result<()> {
        let replica = self.replicas.get_mut(name).expect("a running replica");
        let _ = replica.child.kill();
        let _ = replica.child.wait();
        self.spawn(context, name)
    }

    /// Replicas of `kind` worth killing: running, up for a while, and the stage has produced
    /// something since they started (so the kill lands on work in progress).
    fn killable(&mut self, kind: &str) -> Vec<String> {
        let output = self.output_count(kind).unwrap_or(0);
        let (_, names, _) = KINDS.iter().find(|(k, _, _)| *k == kind).expect("a known kind");
        names
            .iter()
            .filter(|name| {
                self.replicas.get_mut(**name).is_some_and(|r| {
                    !r.finished
                        && r.child.try_wait().ok().flatten().is_none()
                        && r.started.elapsed() > Duration::from_millis(1500)
                        && output > r.output_at_start
                })
            })
            .map(|name| name.to_string())
            .collect()
    }

    /// Runs until every question is decided, packed by both packers and (with trainers) both
    /// trainers wrote their final checkpoint; then stops everything and reads the outcome.
    fn run_to_end(mut self, context: &RunContext, mut chaos: Option<&mut Disruptions>) -> anyhow::Result<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(context.args.timeout_secs);
        let mut last_report = Instant::now();
        loop {
            self.supervise(context)?;
            if let Some(chaos) = chaos.as_deref_mut() {
                chaos.step(context, &mut self)?;
            }
            let progress = self.progress();
            let disruptions_done = chaos.as_deref().is_none_or(|c| c.done());
            if progress.as_ref().is_ok_and(|p| p.is_complete(context.args.questions, self.with_trainers))
                && disruptions_done
            {
                break;
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                match &progress {
                    Ok(p) => println!("  {p}"),
                    Err(e) => println!("  progress unknown: {e:#}"),
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the {} run did not complete in {} s ({}); logs in {}",
                    self.dir.display(),
                    context.args.timeout_secs,
                    progress.map(|p| p.to_string()).unwrap_or_else(|e| format!("{e:#}")),
                    self.dir.join("logs").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for replica in self.replicas.values_mut() {
            if replica.child.try_wait()?.is_none() {
                let _ = Command::new("kill").args(["-TERM", &replica.child.id().to_string()]).status();
            }
        }
        for replica in self.replicas.values_mut() {
            let _ = replica.child.wait();
        }
        Outcome::read(context, &self)
    }

    fn progress(&self) -> anyhow::Result<Progress> {
        let mut decided = BTreeSet::new();
        let mut agreed = BTreeSet::new();
        for topic in ["agreed", "rejected"] {
            for record in self.read(topic)? {
                let sample: AgreedSample = decode(&record.payload)?;
                if topic == "agreed" {
                    agreed.insert(sample.question_id.clone());
                }
                decided.insert(sample.question_id);
            }
        }
        // A question whose sample went to the dead letters is settled too: it will never be
        // decided (and the comparison reports the letter).
        for record in self.read("dead-letters")? {
            let letter: DeadLetter = decode(&record.payload)?;
            let question = decode::<Question>(&letter.original)
                .map(|q| q.id)
                .or_else(|_| decode::<TeacherSample>(&letter.original).map(|s| s.question_id))
                .or_else(|_| decode::<JudgedSample>(&letter.original).map(|j| j.sample.question_id));
            if let Ok(question) = question {
                decided.insert(question);
            }
        }
        let packed = |topic: &str| -> anyhow::Result<usize> {
            let mut questions = BTreeSet::new();
            for record in self.read(topic)? {
                questions.extend(decode::<ShardManifest>(&record.payload)?.question_ids);
            }
            Ok(questions.len())
        };
        let finals = self
            .read("checkpoints")?
            .iter()
            .map(|r| decode::<CheckpointEvent>(&r.payload))
            .filter(|c| c.as_ref().is_ok_and(|c| c.is_final))
            .count();
        Ok(Progress {
            decided: decided.len(),
            agreed: agreed.len(),
            packed_a: packed("shards.a")?,
            packed_b: packed("shards.b")?,
            final_checkpoints: finals,
        })
    }
}

fn kind_of(name: &str) -> &'static str {
    KINDS.iter().find(|(_, names, _)| names.contains(&name)).map_or("other", |(kind, _, _)| kind)
}

struct Progress {
    decided: usize,
    agreed: usize,
    packed_a: usize,
    packed_b: usize,
    final_checkpoints: usize,
}

impl Progress {
    fn is_complete(&self, questions: usize, with_trainers: bool) -> bool {
        self.decided == questions
            && self.packed_a == self.agreed
            && self.packed_b == self.agreed
            && (!with_trainers || self.final_checkpoints >= 2)
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decided {}, agreed {}, packed {}/{}, final checkpoints {}",
            self.decided, self.agreed, self.packed_a, self.packed_b, self.final_checkpoints
        )
    }
}

// --- the disruptions of the chaos run -------------------------------------------------------

/// The kill schedule and the outages, advanced by [`Disruptions::step`] from the run loop.
pub struct Disruptions {
    rng: rand::rngs::StdRng,
    started: Instant,
    next_kill: Instant,
    pub kills: BTreeMap<&'static str, usize>,
    /// (kind, when, the kind's output count then) for kills not yet followed by new output.
    pending_recovery: Vec<(&'static str, Instant, i64)>,
    pub kill_recovery_secs: Vec<f64>,
    outages: Vec<Outage>,
}

struct Outage {
    what: Service,
    begins_after: Duration,
    lasts: Duration,
    state: OutageState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Service {
    TeacherEndpoint,
    S3,
    Broker,
}

enum OutageState {
    Waiting,
    Down(Instant),
    /// Back up at this time; recovered when the watched output grows past the count.
    Back(Instant, i64),
    Recovered(f64),
}

impl Disruptions {
    fn new(context: &RunContext, _pipeline: &Pipeline) -> Disruptions {
        let args = &context.args;
        let mut outages = vec![Outage {
            what: Service::TeacherEndpoint,
            begins_after: Duration::from_secs(5),
            lasts: Duration::from_secs(args.teacher_down_secs),
            state: OutageState::Waiting,
        }];
        if context.s3_proxy.is_some() {
            outages.push(Outage {
                what: Service::S3,
                begins_after: Duration::from_secs(12),
                lasts: Duration::from_secs(args.s3_down_secs),
                state: OutageState::Waiting,
            });
        }
        outages.push(Outage {
            what: Service::Broker,
            begins_after: Duration::from_secs(20),
            lasts: Duration::from_secs(3),
            state: OutageState::Waiting,
        });
        Disruptions {
            rng: rand::rngs::StdRng::seed_from_u64(args.seed),
            started: Instant::now(),
            next_kill: Instant::now() + Duration::from_secs(2),
            kills: KINDS.iter().map(|(kind, _, _)| (*kind, 0)).collect(),
            pending_recovery: Vec::new(),
            kill_recovery_secs: Vec::new(),
            outages,
        }
    }

    fn done(&self) -> bool {
        self.outages.iter().all(|o| matches!(o.state, OutageState::Back(..) | OutageState::Recovered(_)))
    }

    fn step(&mut self, context: &RunContext, pipeline: &mut Pipeline) -> anyhow::Result<()> {
        let now = Instant::now();
        // Kills finish their recovery when the stage's output grows again.
        let mut still_pending = Vec::new();
        for (kind, at, count) in std::mem::take(&mut self.pending_recovery) {
            match pipeline.output_count(kind) {
                Some(n) if n > count => self.kill_recovery_secs.push(at.elapsed().as_secs_f64()),
                _ => still_pending.push((kind, at, count)),
            }
        }
        self.pending_recovery = still_pending;

        for outage in &mut self.outages {
            let watched = match outage.what {
                Service::TeacherEndpoint => "sampler",
                Service::S3 => "packer",
                Service::Broker => "any",
            };
            match outage.state {
                OutageState::Waiting if self.started.elapsed() >= outage.begins_after => {
                    println!("  {:?} down for {:?}", outage.what, outage.lasts);
                    match outage.what {
                        Service::TeacherEndpoint => context.teachers[1].a[0].set_down(true),
                        Service::S3 => context.s3_proxy.as_ref().expect("S3 outages need S3").set_down(true)?,
                        // Down and up here: every read of a topic would wait out its timeout
                        // while the broker is gone.
                        Service::Broker => {
                            pipeline.broker.stop();
                            std::thread::sleep(outage.lasts);
                            pipeline.broker.restart()?;
                            println!("  broker back after {:.1}s", now.elapsed().as_secs_f64());
                            let count = pipeline.output_count(watched).unwrap_or(0);
                            outage.state = OutageState::Back(Instant::now(), count);
                            continue;
                        }
                    }
                    outage.state = OutageState::Down(now);
                }
                OutageState::Down(since) if since.elapsed() >= outage.lasts => {
                    match outage.what {
                        Service::TeacherEndpoint => context.teachers[1].a[0].set_down(false),
                        Service::S3 => context.s3_proxy.as_ref().expect("S3 outages need S3").set_down(false)?,
                        Service::Broker => unreachable!("the broker is restarted as it goes down"),
                    }
                    println!("  {:?} back after {:.1}s", outage.what, since.elapsed().as_secs_f64());
                    outage.state = OutageState::Back(Instant::now(), pipeline.output_count(watched).unwrap_or(0));
                }
                OutageState::Back(at, count) if pipeline.output_count(watched).is_some_and(|n| n > count) => {
                    outage.state = OutageState::Recovered(at.elapsed().as_secs_f64());
                }
                _ => {}
            }
        }

        if now < self.next_kill {
            return Ok(());
        }
        let (min, max) = (context.args.kill_gap_min_ms, context.args.kill_gap_max_ms.max(context.args.kill_gap_min_ms));
        self.next_kill = now + Duration::from_millis(self.rng.gen_range(min..=max));
        // The kind furthest behind its quota goes next, among those with a replica to kill.
        let mut wanted: Vec<&'static str> =
            self.kills.iter().filter(|(_, n)| **n < context.args.kills_per_kind).map(|(kind, _)| *kind).collect();
        let mut keyed: Vec<_> = wanted.drain(..).map(|kind| (self.kills[kind], self.rng.gen::<u32>(), kind)).collect();
        keyed.sort();
        wanted.extend(keyed.into_iter().map(|(_, _, kind)| kind));
        for kind in wanted {
            let candidates = pipeline.killable(kind);
            if candidates.is_empty() {
                continue;
            }
            let name = &candidates[self.rng.gen_range(0..candidates.len())];
            let count = pipeline.output_count(kind).unwrap_or(0);
            pipeline.kill_and_restart(context, name)?;
            *self.kills.get_mut(kind).expect("a known kind") += 1;
            self.pending_recovery.push((kind, now, count));
            break;
        }
        Ok(())
    }

    fn outage_recovery(&self, what: Service) -> Option<(Duration, Option<f64>)> {
        let outage = self.outages.iter().find(|o| o.what == what)?;
        let recovered = match outage.state {
            OutageState::Recovered(secs) => Some(secs),
            _ => None,
        };
        Some((outage.lasts, recovered))
    }
}

// --- what a run produced --------------------------------------------------------------------

#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct ManifestTotals {
    pub shards: usize,
    pub rows: u64,
    pub sequences: u64,
    pub tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Default)]
pub struct Outcome {
    /// Question id -> the traces agreed on (teacher, sample id, answer).
    pub agreed: BTreeMap<String, Vec<(String, String, String)>>,
    pub rejected: BTreeSet<String>,
    /// Questions with two different decisions (different record ids or contents).
    pub conflicting_decisions: Vec<String>,
    /// Per style: sha256 of (input ids, loss mask) of each packed sequence -> how often.
    pub sequences: BTreeMap<String, BTreeMap<String, usize>>,
    pub manifest_totals: BTreeMap<String, ManifestTotals>,
    /// Question ids found in two different shards.
    pub questions_in_two_shards: Vec<String>,
    /// Manifests whose object is missing, partial, or disagrees with the manifest.
    pub bad_manifests: Vec<String>,
    pub dead_letters: Vec<String>,
    pub trainer: Option<TrainerComparison>,
    pub unplanned_exits: Vec<(String, String, String)>,
}

#[derive(Debug, Clone)]
pub struct TrainerComparison {
    pub steps: u64,
    pub shards: usize,
    pub weights_identical: bool,
    pub optimizer_identical: bool,
    pub same_shard_sequence: bool,
    /// Shard ids the killed trainer trained on twice.
    pub repeated_shards: usize,
    /// Whether its shard sequence is exactly the topic's distinct manifests, in order.
    pub follows_topic_order: bool,
}

impl Outcome {
    fn read(context: &RunContext, pipeline: &Pipeline) -> anyhow::Result<Outcome> {
        let mut outcome = Outcome { unplanned_exits: pipeline.unplanned_exits.clone(), ..Outcome::default() };
        let mut decisions: BTreeMap<String, (String, bool)> = BTreeMap::new();
        for topic in ["agreed", "rejected"] {
            for record in pipeline.read(topic)? {
                let sample: AgreedSample = decode(&record.payload)?;
                let previous = decisions.insert(sample.question_id.clone(), (sample.id.clone(), sample.accepted));
                if previous.is_some_and(|p| p != (sample.id.clone(), sample.accepted)) {
                    outcome.conflicting_decisions.push(sample.question_id.clone());
                }
                if sample.accepted {
                    let mut traces: Vec<_> = sample
                        .traces
                        .iter()
                        .map(|t| (t.teacher.clone(), t.sample_id.clone(), t.answer.clone().unwrap_or_default()))
                        .collect();
                    traces.sort();
                    outcome.agreed.insert(sample.question_id, traces);
                } else {
                    outcome.rejected.insert(sample.question_id);
                }
            }
        }
        for record in pipeline.read("dead-letters")? {
            let letter: DeadLetter = decode(&record.payload)?;
            outcome.dead_letters.push(format!("{}: {}", letter.processor, letter.error));
        }

        let mut shard_order_a = Vec::new();
        for style in ["a", "b"] {
            let mut manifests: BTreeMap<String, ShardManifest> = BTreeMap::new();
            let mut order = Vec::new();
            for record in pipeline.read(&format!("shards.{style}"))? {
                let manifest: ShardManifest = decode(&record.payload)?;
                match manifests.get(&manifest.id) {
                    Some(seen) if seen.sha256 != manifest.sha256 || seen.uri != manifest.uri => {
                        outcome.bad_manifests.push(format!("{}: published twice with different shards", manifest.id));
                    }
                    Some(_) => {}
                    None => {
                        order.push(manifest.id.clone());
                        manifests.insert(manifest.id.clone(), manifest);
                    }
                }
            }
            let totals = outcome.manifest_totals.entry(style.to_string()).or_default();
            let sequences = outcome.sequences.entry(style.to_string()).or_default();
            let mut shard_of_question: BTreeMap<String, String> = BTreeMap::new();
            for manifest in manifests.values() {
                totals.shards += 1;
                totals.rows += manifest.rows as u64;
                totals.sequences += manifest.sequences as u64;
                totals.tokens += manifest.tokens as u64;
                totals.completion_tokens += manifest.completion_tokens as u64;
                for question in &manifest.question_ids {
                    if shard_of_question.insert(question.clone(), manifest.id.clone()).is_some() {
                        outcome.questions_in_two_shards.push(question.clone());
                    }
                }
                let shard = context
                    .runtime
                    .block_on(get_bytes(&manifest.uri))
                    .and_then(|bytes| read_shard(&bytes, Some(&manifest.sha256)).map(|s| (bytes.len(), s)));
                let (bytes, shard) = match shard {
                    Ok(shard) => shard,
                    Err(e) => {
                        outcome.bad_manifests.push(format!("{}: {e:#}", manifest.uri));
                        continue;
                    }
                };
                let mask_total: u64 = shard.loss_mask.iter().map(|m| *m as u64).sum();
                if bytes as i64 != manifest.bytes
                    || shard.cu_seqlens.len() as i64 - 1 != manifest.sequences as i64
                    || shard.row_offsets.len() as i64 - 1 != manifest.rows as i64
                    || shard.input_ids.len() as i64 != manifest.tokens
                    || mask_total as i64 != manifest.completion_tokens
                {
                    outcome.bad_manifests.push(format!("{}: counts disagree with the shard file", manifest.uri));
                }
                for bounds in shard.cu_seqlens.windows(2) {
                    let (start, end) = (bounds[0] as usize, bounds[1] as usize);
                    let mut hasher = Sha256::new();
                    for id in &shard.input_ids[start..end] {
                        hasher.update(id.to_le_bytes());
                    }
                    hasher.update(&shard.loss_mask[start..end]);
                    *sequences.entry(hex::encode(hasher.finalize())).or_insert(0) += 1;
                }
            }
            if style == "a" {
                shard_order_a = order;
            }
        }
        if pipeline.with_trainers {
            outcome.trainer = Some(compare_trainers(context, pipeline, &shard_order_a)?);
        }
        Ok(outcome)
    }

    fn summary(&self) -> String {
        let sequences: usize = self.sequences.values().flat_map(|s| s.values()).sum();
        format!(
            "{} agreed, {} rejected, {} packed sequences in {} shards, {} dead letters",
            self.agreed.len(),
            self.rejected.len(),
            sequences,
            self.manifest_totals.values().map(|t| t.shards).sum::<usize>(),
            self.dead_letters.len()
        )
    }
}

/// The killed trainer against its never-killed twin: final weights, optimizer state and the
/// shards each trained on.
fn compare_trainers(
    context: &RunContext,
    pipeline: &Pipeline,
    topic_order: &[String],
) -> anyhow::Result<TrainerComparison> {
    let finals: BTreeMap<String, CheckpointEvent> = pipeline
        .read("checkpoints")?
        .iter()
        .map(|r| decode::<CheckpointEvent>(&r.payload))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|c| c.is_final)
        .map(|c| (c.run.rsplit('/').next().unwrap_or_default().to_string(), c))
        .collect();
    let file = |trainer: &str, name: &str| -> anyhow::Result<Vec<u8>> {
        let event = finals.get(trainer).ok_or_else(|| anyhow::anyhow!("no final checkpoint of {trainer}"))?;
        context.runtime.block_on(get_bytes(&format!("{}/{name}", event.uri.trim_end_matches('/'))))
    };
    let shard_ids = |trainer: &str| -> anyhow::Result<Vec<String>> {
        let state: serde_json::Value = serde_json::from_slice(&file(trainer, "trainer_state.json")?)?;
        Ok(serde_json::from_value(state["shard_ids"].clone())?)
    };
    let (killed, steady) = (shard_ids("trainer-a")?, shard_ids(STEADY_TRAINER)?);
    let distinct: BTreeSet<&String> = killed.iter().collect();
    Ok(TrainerComparison {
        steps: finals.get("trainer-a").map_or(0, |e| e.step as u64),
        shards: killed.len(),
        weights_identical: file("trainer-a", "model.safetensors")? == file(STEADY_TRAINER, "model.safetensors")?,
        optimizer_identical: file("trainer-a", "optimizer.safetensors")?
            == file(STEADY_TRAINER, "optimizer.safetensors")?,
        same_shard_sequence: killed == steady,
        repeated_shards: killed.len() - distinct.len(),
        follows_topic_order: topic_order.starts_with(&killed),
    })
}

// --- the report -----------------------------------------------------------------------------

pub struct ChaosReport {
    pub questions: usize,
    pub kills: BTreeMap<&'static str, usize>,
    pub unplanned_exits: usize,
    pub faults: BTreeMap<Fault, u64>,
    pub teacher_down: Option<(Duration, Option<f64>)>,
    pub s3_down: Option<(Duration, Option<f64>)>,
    pub broker_restart: Option<(Duration, Option<f64>)>,
    pub kill_recovery_secs: Vec<f64>,
    /// Questions or packed sequences of the clean run missing from the chaos run.
    pub records_lost: usize,
    /// Packed sequences beyond the clean run's count, questions in two shards, and shards the
    /// killed trainer trained on twice.
    pub duplicates_reaching_trainer: usize,
    /// Everything else that differs between the runs (empty when they agree).
    pub differences: Vec<String>,
    pub clean: Outcome,
    pub chaos: Outcome,
    pub clean_secs: f64,
    pub chaos_secs: f64,
}

impl ChaosReport {
    fn compare(
        context: &RunContext,
        clean: Outcome,
        chaos: Outcome,
        disruptions: Disruptions,
        faults: BTreeMap<Fault, u64>,
        clean_secs: f64,
        chaos_secs: f64,
    ) -> ChaosReport {
        let mut differences = Vec::new();
        let mut lost = 0;
        let mut duplicates = 0;
        for question in clean.agreed.keys().chain(&clean.rejected) {
            if !chaos.agreed.contains_key(question) && !chaos.rejected.contains(question) {
                lost += 1;
            }
        }
        if clean.agreed != chaos.agreed {
            differences.push("the agreed questions or their traces differ".into());
        }
        if clean.rejected != chaos.rejected {
            differences.push("the rejected questions differ".into());
        }
        for (style, clean_sequences) in &clean.sequences {
            let chaos_sequences = chaos.sequences.get(style).cloned().unwrap_or_default();
            for (hash, n) in clean_sequences {
                lost += n.saturating_sub(*chaos_sequences.get(hash).unwrap_or(&0));
            }
            for (hash, n) in &chaos_sequences {
                duplicates += n.saturating_sub(*clean_sequences.get(hash).unwrap_or(&0));
            }
            let (a, b) = (&clean.manifest_totals[style], chaos.manifest_totals.get(style).cloned().unwrap_or_default());
            if (a.sequences, a.tokens, a.completion_tokens) != (b.sequences, b.tokens, b.completion_tokens) {
                differences.push(format!("style {style}: manifest totals {a:?} (clean) vs {b:?} (chaos)"));
            }
        }
        for outcome in [&clean, &chaos] {
            duplicates += outcome.questions_in_two_shards.len();
            differences.extend(outcome.bad_manifests.iter().cloned());
            differences.extend(outcome.conflicting_decisions.iter().map(|q| format!("{q}: two different decisions")));
            differences.extend(outcome.dead_letters.iter().map(|l| format!("dead letter: {l}")));
        }
        match &chaos.trainer {
            Some(t) => {
                duplicates += t.repeated_shards;
                if !(t.weights_identical && t.optimizer_identical && t.same_shard_sequence && t.follows_topic_order) {
                    differences.push(format!("trainer: {t:?}"));
                }
            }
            None => differences.push("no trainer comparison".into()),
        }
        ChaosReport {
            questions: context.args.questions,
            kills: disruptions.kills.clone(),
            unplanned_exits: chaos.unplanned_exits.len(),
            faults,
            teacher_down: disruptions.outage_recovery(Service::TeacherEndpoint),
            s3_down: disruptions.outage_recovery(Service::S3),
            broker_restart: disruptions.outage_recovery(Service::Broker),
            kill_recovery_secs: disruptions.kill_recovery_secs.clone(),
            records_lost: lost,
            duplicates_reaching_trainer: duplicates,
            differences,
            clean,
            chaos,
            clean_secs,
            chaos_secs,
        }
    }

    pub fn total_kills(&self) -> usize {
        self.kills.values().sum()
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let kills: Vec<String> = self.kills.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        let faults: Vec<String> = self.faults.iter().map(|(f, n)| format!("{} {n}", f.name())).collect();
        let mut recovery = self.kill_recovery_secs.clone();
        recovery.sort_by(f64::total_cmp);
        let percentile = |p: f64| recovery.get(((recovery.len() as f64 - 1.0) * p).round() as usize).copied();
        let secs = |s: Option<f64>| s.map_or("not measured".to_string(), |s| format!("{s:.1} s"));
        let outage = |o: &Option<(Duration, Option<f64>)>| match o {
            Some((lasted, recovered)) => format!("{} s; output again {} after", lasted.as_secs(), secs(*recovered)),
            None => "not run".into(),
        };
        let trainer = match &self.chaos.trainer {
            Some(t) => format!(
                "{} after {} steps on {} shards (shard sequence {}, none repeated: {})",
                if t.weights_identical && t.optimizer_identical {
                    "bit-identical weights and optimizer"
                } else {
                    "DIFFERENT weights"
                },
                t.steps,
                t.shards,
                if t.same_shard_sequence && t.follows_topic_order { "identical" } else { "DIFFERENT" },
                t.repeated_shards == 0
            ),
            None => "not compared".into(),
        };
        let _ = writeln!(out, "| chaos run ({} questions) | result |\n|---|---|", self.questions);
        let _ = writeln!(out, "| SIGKILLs survived | {} ({}) |", self.total_kills(), kills.join(", "));
        let _ = writeln!(out, "| processes that exited on their own and were restarted | {} |", self.unplanned_exits);
        let _ = writeln!(
            out,
            "| teacher faults injected | {} ({}) |",
            self.faults.values().sum::<u64>(),
            faults.join(", ")
        );
        let _ = writeln!(out, "| one teacher endpoint down | {} |", outage(&self.teacher_down));
        let _ = writeln!(out, "| S3 server unreachable | {} |", outage(&self.s3_down));
        let _ = writeln!(out, "| broker SIGKILLed and restarted (SQLite store) | {} |", outage(&self.broker_restart));
        let _ = writeln!(
            out,
            "| time from a kill to the stage's next output | median {}, 90th percentile {}, max {} ({} kills measured) |",
            secs(percentile(0.5)),
            secs(percentile(0.9)),
            secs(recovery.last().copied()),
            recovery.len()
        );
        let _ = writeln!(
            out,
            "| agreed / rejected | {} / {} (clean run: {} / {}) |",
            self.chaos.agreed.len(),
            self.chaos.rejected.len(),
            self.clean.agreed.len(),
            self.clean.rejected.len()
        );
        let _ = writeln!(out, "| packed: clean run | {} |", self.clean.summary());
        let _ = writeln!(out, "| packed: chaos run | {} |", self.chaos.summary());
        let _ = writeln!(out, "| records lost | {} |", self.records_lost);
        let _ = writeln!(out, "| duplicates reaching the trainer | {} |", self.duplicates_reaching_trainer);
        let _ = writeln!(out, "| killed trainer vs its never-killed twin | {trainer} |");
        let _ = writeln!(out, "| wall time | clean {:.0} s, chaos {:.0} s |", self.clean_secs, self.chaos_secs);
        if self.differences.is_empty() {
            let _ = writeln!(out, "\nThe chaos run's dataset is identical to the clean run's.");
        } else {
            let _ = writeln!(out, "\nDifferences:");
            for difference in &self.differences {
                let _ = writeln!(out, "- {difference}");
            }
        }
        out
    }
}
