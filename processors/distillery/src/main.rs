//! `distillery`: run one processor of a topology (the unit of horizontal scaling), manage
//! topologies, start the local broker, read topics, benchmark, and run the quickstart.
//! Parses flags and calls the libraries; nothing else lives here.

use distillery::{bench, chaos, quickstart, registry, replay, report};

use clap::{Parser, Subcommand};
use distillery_runtime::broker::{BrokerStore, LocalBroker};
use distillery_runtime::{admin, reader, shutdown, telemetry, Connection, ProcessorRun, Topology};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "distillery",
    version,
    about = "Streaming reasoning distillation on Kafka: teachers -> judge -> agreement -> packer -> trainer -> evaluators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct BrokerArgs {
    /// Kafka bootstrap servers; overrides the topology's `[kafka] bootstrap_servers`.
    #[arg(long, env = "DISTILLERY_BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run one processor instance of a topology until SIGINT/SIGTERM (sources such as the
    /// feeder stop by themselves when their input is published). Start it N times for N
    /// replicas: they share the input partitions through their consumer group.
    Run {
        /// Processor instance name, as under [processors.NAME] in the topology.
        name: String,
        #[arg(long)]
        topology: PathBuf,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Replica label for logs, headers and transactional ids (default: host-pid).
        #[arg(long)]
        replica: Option<String>,
        /// Serve Prometheus metrics: a bare port (9898) binds 127.0.0.1; HOST:PORT binds
        /// there (0.0.0.0:9898 to let other machines scrape). No listener unless given.
        #[arg(long, env = "DISTILLERY_METRICS_ADDR", value_parser = telemetry::parse_metrics_addr)]
        metrics_addr: Option<SocketAddr>,
    },
    /// Topology files: create their topics, or check them.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Run the local Kafka-API broker (Nisshi) in the foreground, for running processors as
    /// separate processes on one machine.
    Broker {
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// SQLite file to keep the log across restarts; in memory when absent.
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Print the records of a topic (from the beginning to its current end) as JSON lines.
    Tail {
        /// Topic short name (e.g. questions) as in the topology.
        topic: String,
        #[arg(long)]
        topology: PathBuf,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
    /// Convert packed shards for other training engines.
    Export {
        #[command(subcommand)]
        target: ExportTarget,
    },
    /// Run the whole embedded pipeline in one process: start the local broker, apply
    /// topology/quickstart.toml, run every processor, print what each stage did.
    Quickstart(quickstart::QuickstartArgs),
    /// A new experiment from a retained topic of an earlier one: run the processors
    /// downstream of --stage under the experiment --to, reading the stage topic of --from
    /// from the beginning (new consumer groups; the source is never written). Stops when the
    /// replayed work is done (or, with --follow, on SIGINT/SIGTERM).
    Replay(replay::ReplayArgs),
    /// Write the paper's report (Table 1: pass@8 and average tokens per student and teacher
    /// style on AIME25, GSM8K, MATH-500; the token ratio between styles; Figure 1: loss vs
    /// step) from an experiment's eval-results and train-metrics topics. Works on a partial
    /// run and says what is missing.
    Report(report::ReportArgs),
    /// Prove the pipeline under failure: the same questions through the full topology twice
    /// (clean, then with SIGKILLs of every processor kind, teacher faults and outages, an S3
    /// outage and a broker restart) and a comparison of what reached the packers and the
    /// trainer. Prints a table; exits non-zero if anything was lost or duplicated.
    Chaos(chaos::ChaosArgs),
}

#[derive(Subcommand)]
enum ExportTarget {
    /// NeMo's packed-sequence `.npy` (`input_ids`, `loss_mask`, `seq_start_id` per pack) and
    /// its packing metadata JSON: from the shards a shards topic published (--topic, read from
    /// the broker; shards fetched from wherever their manifests point, S3 included), or from
    /// every shard file in a local folder (--shards; this also takes a shard a killed packer
    /// uploaded but never published).
    Nemo {
        /// Folder holding `shard-*.safetensors` and their `.json` manifests.
        #[arg(long, required_unless_present = "topic", conflicts_with = "topic")]
        shards: Option<PathBuf>,
        /// A shards topic (short name, e.g. shards.gpt-oss) of --topology.
        #[arg(long, requires = "topology")]
        topic: Option<String>,
        #[arg(long)]
        topology: Option<PathBuf>,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Output `.npy`; the metadata goes beside it as `<name>.metadata.json`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Create every missing topic (idempotent; existing topics must have the same partition count).
    Apply {
        file: PathBuf,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Reject a topology whose processors read topics no one writes, whose ports or schemas
    /// do not match, or whose settings do not parse.
    Check { file: PathBuf },
}

fn load_topology(path: &std::path::Path) -> anyhow::Result<Topology> {
    let topology = Topology::load(path)?;
    topology.validate(&path.display().to_string(), &registry::processor_types())?;
    Ok(topology)
}

fn connect(topology: &Topology, broker: &BrokerArgs) -> anyhow::Result<Connection> {
    Connection::from_settings(&topology.kafka, broker.bootstrap_servers.as_deref()).map_err(anyhow::Error::msg)
}

fn default_replica() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The quickstart draws live progress lines on a terminal: only warnings interleave.
    use std::io::IsTerminal;
    if matches!(cli.command, Command::Quickstart(_)) && std::io::stderr().is_terminal() {
        telemetry::init_logging_with_default("warn");
    } else {
        telemetry::init_logging();
    }
    match cli.command {
        Command::Run { name, topology, broker, replica, metrics_addr } => {
            let topology = load_topology(&topology)?;
            if let Some(addr) = metrics_addr {
                telemetry::serve_metrics(addr)?;
            }
            let connection = connect(&topology, &broker)?;
            let run = ProcessorRun {
                topology: Arc::new(topology),
                name,
                replica: replica.unwrap_or_else(default_replica),
                connection,
            };
            let summary = match registry::run_instance(run, shutdown::signal()).await {
                Ok(summary) => summary,
                // The torch engine's exit status is the run's (a supervisor reads it).
                Err(e) => match e.downcast_ref::<distillery::torchrun::EngineExit>() {
                    Some(exit) => {
                        eprintln!("Error: {e}");
                        std::process::exit(exit.code);
                    }
                    None => return Err(e),
                },
            };
            println!("{summary}");
            // Work abandoned at the shutdown deadline may still sit on a blocking thread (an
            // in-process generation, a training step); the runtime would wait for it when
            // dropped. Its input offsets are uncommitted, so the next owner redoes it: exit now.
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        Command::Topology { action: TopologyAction::Check { file } } => {
            let topology = load_topology(&file)?;
            for (name, instance) in &topology.processors {
                if !registry::RUNNABLE.contains(&instance.kind.as_str()) {
                    println!(
                        "note: processor '{name}' (type {}) checks, but this build cannot run it yet",
                        instance.kind
                    );
                }
            }
            println!(
                "{}: ok ({} topics, {} processors, experiment '{}')",
                file.display(),
                topology.topics.len(),
                topology.processors.len(),
                topology.experiment
            );
        }
        Command::Topology { action: TopologyAction::Apply { file, broker } } => {
            let topology = load_topology(&file)?;
            let connection = connect(&topology, &broker)?;
            for topic in admin::apply_topology(&topology, &connection).await? {
                println!("{:<50} {:>3} partitions  {:?}", topic.name, topic.partitions, topic.outcome);
            }
        }
        Command::Broker { port, store } => {
            let store = store.map(BrokerStore::Sqlite).unwrap_or(BrokerStore::Memory);
            let broker = LocalBroker::start_on(port, store, None)?;
            println!("local broker on {} (Ctrl-C stops it)", broker.bootstrap_servers());
            shutdown::signal().await;
            drop(broker);
        }
        Command::Tail { topic, topology, broker } => {
            let topology = Topology::load(&topology)?;
            let connection = connect(&topology, &broker)?;
            let name = topology.topic_name(&topic);
            let records =
                tokio::task::spawn_blocking(move || reader::read_to_end(&connection, &name, Duration::from_secs(600)))
                    .await??;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for record in records {
                let line = match distillery_schemas::decode_any(&record.payload) {
                    Ok(decoded) => {
                        serde_json::json!({"partition": record.partition, "offset": record.offset, "kind": decoded.kind.name(), "record": decoded.json})
                    }
                    Err(e) => {
                        serde_json::json!({"partition": record.partition, "offset": record.offset, "undecodable": e.to_string()})
                    }
                };
                // A closed pipe (`| head`) ends the listing quietly.
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
        }
        Command::Bench { which } => bench::run(which).await?,
        Command::Quickstart(args) => quickstart::run(args).await?,
        Command::Replay(args) => replay::run(args).await?,
        Command::Report(args) => report::run(args).await?,
        Command::Chaos(args) => {
            let report = chaos::run(args).await?;
            anyhow::ensure!(
                report.records_lost == 0 && report.duplicates_reaching_trainer == 0 && report.differences.is_empty(),
                "the chaos run differs from the clean run (see the table above)"
            );
        }
        Command::Export { target: ExportTarget::Nemo { shards, topic, topology, broker, out } } => {
            let summary = match (shards, topic, topology) {
                (Some(shards), _, _) => distillery_packer::nemo::export_folder(&shards, &out)?,
                (None, Some(topic), Some(topology)) => {
                    let topology = load_topology(&topology)?;
                    let connection = connect(&topology, &broker)?;
                    let name = topology.topic_name(&topic);
                    let records = tokio::task::spawn_blocking(move || {
                        reader::read_to_end(&connection, &name, Duration::from_secs(600))
                    })
                    .await??;
                    let manifests = records
                        .iter()
                        .map(|r| distillery_schemas::decode::<distillery_schemas::ShardManifest>(&r.payload))
                        .collect::<Result<Vec<_>, _>>()?;
                    let runtime = tokio::runtime::Handle::current();
                    tokio::task::block_in_place(|| {
                        distillery_packer::nemo::export_published(
                            &manifests,
                            |uri| runtime.block_on(distillery_runtime::objects::get_bytes(uri)),
                            &out,
                        )
                    })?
                }
                _ => anyhow::bail!("give --shards FOLDER, or --topic NAME with --topology FILE"),
            };
            println!("{summary}");
        }
    }
    Ok(())
}
