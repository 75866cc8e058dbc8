//! `distillery chaos`: the claim users rely on, checked end to end. The same questions go
//! through the full topology twice, each run on its own local broker, with every stage but the
//! trainer running as several replicas (`--replicas`: samplers, judge, agreement, packers):
//!
//! 1. **clean**: nothing is disturbed;
//! 2. **chaos**: a driver SIGKILLs a random processor replica every second or so (at least
//!    `kills_per_kind` kills of each kind: sampler, judge, agreement, packer, trainer) and
//!    restarts it; replicas join and leave their groups (`rebalances_per_kind` of each kind:
//!    a rebalance storm); the teachers answer 30% of requests with faults, one endpoint of a
//!    teacher goes down, the broker is killed and restarted on its SQLite store, and the S3
//!    server goes away (when shards go to S3) as the stream ends, so packer kills land during
//!    shipments and flushes that wait for it.
//!
//! In both runs one question expires in the agreement (the driver gives it teacher A's verdict,
//! an hour old), and once it has, the driver publishes teacher B's verdict for it, late: an
//! expired question must stay rejected.
//!
//! Then the two are compared: the agreed and rejected questions, the multiset of packed
//! sequences per style (packing order may differ, contents may not), the totals in the shard
//! manifests, the dead letters; every manifest must point at a complete shard, no question may
//! sit in two shards (across every packer replica) and none may be both agreed and rejected.
//! In the chaos run a second trainer that is never killed reads the same shards: the killed one
//! must end on the same shard sequence (none skipped, none repeated) with bit-identical
//! weights and optimizer state. The teacher calls per sample are reported: replays after kills
//! and rebalances must not cost many more.
//!
//! Teachers are local OpenAI-compatible test servers over real HTTP (two endpoints per
//! teacher; the second teacher is wrong on every seventh question so the agreement filter
//! rejects some). The faults injected are the retryable ones (latency, 429, 500, 503,
//! resets, truncated JSON): a truncated generation changes a sample's content, so it would
//! make the two runs legitimately differ; `tests/samplers.rs` covers it.
//!
//! The driver is also the supervisor: a process that exits on its own is restarted (as
//! compose's `restart: unless-stopped` would) and counted in the report.
//!
//! # Layout
//! - `setup`: the teachers, the questions and the topology of a run.
//! - `pipeline`: one run's broker and processor replicas, supervised until it completes.
//! - `disruptions`: the kills, joins, leaves and outages of the chaos run.
//! - `outcome`: what a run produced, read back from its topics and the object store.
//! - `report`: the comparison and its table.

mod disruptions;
mod outcome;
mod pipeline;
mod report;
mod setup;

pub use outcome::{ManifestTotals, Outcome, TrainerComparison};
pub use report::ChaosReport;

use disruptions::Disruptions;
use distillery_llm_test_server::proxy::TcpProxy;
use pipeline::Pipeline;
use setup::Teachers;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Questions fed through both runs ("What is i + 1?").
    #[arg(long, default_value_t = 1000)]
    pub questions: usize,
    /// Replicas of each sampler, the judge, the agreement and each packer (one consumer
    /// group each; the trainers run alone).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// SIGKILLs of each processor kind in the chaos run, at least.
    #[arg(long, default_value_t = 10)]
    pub kills_per_kind: usize,
    /// Pause between two kills, drawn uniformly from [min, max] milliseconds.
    #[arg(long, default_value_t = 300)]
    pub kill_gap_min_ms: u64,
    #[arg(long, default_value_t = 900)]
    pub kill_gap_max_ms: u64,
    /// Replicas joining or leaving their group, per kind (sampler, judge, agreement,
    /// packer), at least: an extra replica starts, and later stops (SIGTERM).
    #[arg(long, default_value_t = 6)]
    pub rebalances_per_kind: usize,
    /// Pause between two joins or leaves, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub rebalance_gap_ms: u64,
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
    /// How long the S3 server is unreachable in the chaos run (only with --s3-bucket), from
    /// when nearly every question is decided (the packers' last shipments and flushes wait);
    /// longer, up to 4x, until a packer kill has landed during a shipment and during a flush.
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

/// Kinds of processor the driver kills, their instances, and the topics whose growth shows
/// each is working.
const KINDS: [(&str, &[&str], &[&str]); 5] = [
    ("sampler", &["sampler-a", "sampler-b"], &["samples"]),
    ("judge", &["judge"], &["judged"]),
    ("agreement", &["agreement"], &["agreed", "rejected"]),
    ("packer", &["packer-a", "packer-b"], &["shards.a", "shards.b"]),
    ("trainer", &["trainer-a"], &["train-metrics"]),
];

/// The kinds that run as several replicas (and join and leave their groups).
const REPLICATED: [&str; 4] = ["sampler", "judge", "agreement", "packer"];

/// The trainer that is never killed: the reference the killed one is compared with.
const STEADY_TRAINER: &str = "trainer-a-steady";

pub async fn run(args: ChaosArgs) -> anyhow::Result<ChaosReport> {
    anyhow::ensure!(args.replicas >= 1, "--replicas must be at least 1");
    let cwd = std::env::current_dir()?;
    let work = cwd.join(&args.work_dir);
    for run in ["clean", "chaos"] {
        let _ = std::fs::remove_dir_all(work.join(run));
    }
    std::fs::create_dir_all(&work)?;
    let questions_path = work.join("questions.jsonl");
    setup::write_questions(&questions_path, args.questions)?;

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

pub(crate) struct RunContext {
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
    println!(
        "clean run: {} questions, {} replicas per stage, no disruption",
        context.args.questions, context.args.replicas
    );
    let clean_outcome = clean.run_to_end(context, &context.teachers[0], None)?;
    let clean_secs = started.elapsed().as_secs_f64();
    println!("clean run done in {clean_secs:.0}s: {}", clean_outcome.summary());

    // The trainers take most of the rows the clean run packed, so they keep working (and
    // being killed) through most of the chaos run.
    let rows = clean_outcome.manifest_totals.get("a").map_or(0, |t| t.rows);
    let trainer_steps = context.args.trainer_steps.min(rows * 7 / 10 / 2).max(4);
    let chaos_started = Instant::now();
    let chaos = Pipeline::start(context, "chaos", &context.teachers[1], Some(trainer_steps))?;
    println!(
        "chaos run: SIGKILLs every {}-{} ms, a replica joins or leaves every {} ms, trainers take {trainer_steps} steps",
        context.args.kill_gap_min_ms, context.args.kill_gap_max_ms, context.args.rebalance_gap_ms
    );
    let mut disruptions = Disruptions::new(context);
    let chaos_outcome = chaos.run_to_end(context, &context.teachers[1], Some(&mut disruptions))?;
    let chaos_secs = chaos_started.elapsed().as_secs_f64();
    println!("chaos run done in {chaos_secs:.0}s: {}", chaos_outcome.summary());

    let faults = context.teachers[1].faults();
    Ok(ChaosReport::compare(context, clean_outcome, chaos_outcome, disruptions, faults, clean_secs, chaos_secs))
}

fn kind_of(name: &str) -> &'static str {
    KINDS.iter().find(|(_, names, _)| names.contains(&name)).map_or("other", |(kind, _, _)| kind)
}
