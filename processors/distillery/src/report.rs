//! `distillery report`: the paper's report (Table 1, the token ratio between styles, Figure 1)
//! from an experiment's eval-results and train-metrics topics, read from the beginning. The
//! rendering lives in `distillery_evaluator::report`; this only finds the topics and the
//! broker.

use distillery_evaluator::report::{read_topics, write_report};
use distillery_runtime::{Connection, Topology};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Experiment whose topics are read (`{experiment}.eval-results`, ...); the topology's
    /// own experiment when absent.
    #[arg(long)]
    experiment: Option<String>,
    /// Topology naming the topics (those with schema eval_result and train_metrics) and the
    /// broker.
    #[arg(long, default_value = "topology/paper.toml")]
    topology: PathBuf,
    /// Kafka bootstrap servers; overrides the topology's `[kafka] bootstrap_servers`.
    #[arg(long, env = "DISTILLERY_BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,
    /// Folder for report.md and loss_vs_step.png (default: work/report/EXPERIMENT).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let topology = Topology::load(&args.topology)?;
    let experiment = args.experiment.unwrap_or_else(|| topology.experiment.clone());
    let connection =
        Connection::from_settings(&topology.kafka, args.bootstrap_servers.as_deref()).map_err(anyhow::Error::msg)?;
    let data = read_topics(&connection, &topology, &experiment).await?;
    let out = args.out.unwrap_or_else(|| PathBuf::from("work/report").join(&experiment));
    let path = write_report(&data, &out)?;
    println!(
        "{}: {} eval result(s), {} train-metrics record(s){}",
        path.display(),
        data.evals.len(),
        data.metrics.len(),
        if data.notes.is_empty() { String::new() } else { format!("; {}", data.notes.join("; ")) }
    );
    Ok(())
}
