//! `distillery replay`: a new experiment from a retained topic of an earlier one, without
//! re-running what produced that topic (the teachers' GPU hours, a judge's calls).
//!
//! A replay is a topology rewrite followed by an ordinary run:
//! 1. Keep the processors downstream of the stage topic: those that read it, those that read
//!    their outputs, and so on (narrowed by `--processors` when given). The rest (the feeder,
//!    the teachers, ...) are dropped.
//! 2. Every topic the kept processors read but none of them writes (the stage topic, at
//!    least) gets `experiment = FROM`: its name resolves to the source run's retained topic,
//!    which the new consumer groups read from the beginning and nothing ever writes.
//! 3. The experiment becomes TO, so every other topic, every consumer group
//!    (`{TO}.{processor}`) and the dead letters belong to the new run. Topics nobody in the
//!    replay uses are left out (the new run gets no empty `questions` or `samples`).
//! 4. Apply (create the new topics; the source topic must exist), start every kept instance
//!    in this process exactly as `distillery run` does, wait until the work is done, stop.
//!
//! Done means: every consumer group of the replay has committed all of its input, every
//! packer has shipped (or dead-lettered) every accepted question it read, and no topic of the
//! new experiment grew for `--settle-secs`. Running the same replay again resumes from the
//! committed offsets and publishes nothing twice. `--follow` keeps running (for a source
//! experiment still being written) until SIGINT/SIGTERM; `--write-topology` only writes the
//! rewritten topology, whose processors then run as separate `distillery run` replicas.

use crate::registry;
use distillery_runtime::broker::{BrokerStore, LocalBroker};
use distillery_runtime::reader::{end_offset_total, group_lag, read_to_end};
use distillery_runtime::topology::{valid_experiment, DEAD_LETTERS};
use distillery_runtime::{admin, shutdown, Connection, Topology};
use distillery_schemas::{decode, AgreedSample, DeadLetter, ShardManifest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Source experiment whose retained stage topic is read (never written).
    #[arg(long)]
    from: String,
    /// Topic (short name, as under [topics] in the topology) to replay from, e.g. samples,
    /// judged, agreed or shards.gpt-oss. The processors downstream of it run again.
    #[arg(long)]
    stage: String,
    /// New experiment: the namespace of every topic and consumer group the replay writes.
    #[arg(long)]
    to: String,
    /// Topology of the new run (the source's file, or a copy with new settings); its
    /// `experiment` is replaced by --to.
    #[arg(long)]
    topology: PathBuf,
    /// Kafka bootstrap servers; overrides the topology's `[kafka] bootstrap_servers`.
    #[arg(long, env = "DISTILLERY_BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,
    /// Run only these downstream processors (comma-separated instance names). A topic they
    /// read that none of them writes is read from the source experiment too.
    #[arg(long, value_delimiter = ',')]
    processors: Vec<String>,
    /// Keep running after the replay caught up, until SIGINT/SIGTERM (for a source
    /// experiment that is still being written).
    #[arg(long)]
    follow: bool,
    /// Write the replay's topology to this file and exit without running it: then run its
    /// processors with `distillery run NAME --topology FILE`, N replicas each.
    #[arg(long)]
    write_topology: Option<PathBuf>,
    /// How long no topic of the new experiment may grow before the replay counts as done.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// When the topology's broker is "embedded": the work folder of the local broker's store
    /// (the quickstart's by default), so the quickstart's experiment can be replayed.
    #[arg(long, default_value = "work/quickstart")]
    work_dir: PathBuf,
}

/// The rewritten topology of a replay.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub topology: Topology,
    /// The rewritten topology as TOML (what `--write-topology` writes).
    pub text: String,
    /// The kept processor instances, upstream first.
    pub processors: Vec<String>,
    /// Topics read from the source experiment (short names), the stage first.
    pub sources: Vec<String>,
}

/// Rewrites the topology `text` into the replay of `stage` from experiment `from` into
/// experiment `to`, keeping only the processors in `only` when it is not empty.
pub fn plan(
    text: &str,
    origin: &str,
    from: &str,
    stage: &str,
    to: &str,
    only: &[String],
) -> anyhow::Result<ReplayPlan> {
    let topology = Topology::parse(text, origin)?;
    for (flag, name) in [("--from", from), ("--to", to)] {
        anyhow::ensure!(
            valid_experiment(name),
            "{flag} '{name}' must be non-empty and use only letters, digits, '-', '_' and '.'"
        );
    }
    anyhow::ensure!(from != to, "--to must name a new experiment: replaying into '{from}' would write its topics");
    if !topology.topics.contains_key(stage) {
        let known: Vec<_> = topology.topics.keys().map(String::as_str).collect();
        anyhow::bail!("--stage '{stage}' is not a topic of {origin} (it has: {})", known.join(", "));
    }

    // 1. The processors downstream of the stage, in the order they are reached.
    let mut reached = BTreeSet::from([stage.to_string()]);
    let mut downstream: Vec<String> = Vec::new();
    loop {
        let next: Vec<String> = topology
            .processors
            .iter()
            .filter(|(name, p)| !downstream.contains(name) && p.inputs.iter().any(|t| reached.contains(t)))
            .map(|(name, _)| name.clone())
            .collect();
        if next.is_empty() {
            break;
        }
        for name in next {
            reached.extend(topology.processors[&name].outputs.values().cloned());
            downstream.push(name);
        }
    }
    anyhow::ensure!(!downstream.is_empty(), "no processor of {origin} reads '{stage}': nothing to replay");
    for name in only {
        anyhow::ensure!(
            downstream.contains(name),
            "--processors names '{name}', which is not downstream of '{stage}' (downstream: {})",
            downstream.join(", ")
        );
    }
    let kept: Vec<String> = downstream.into_iter().filter(|name| only.is_empty() || only.contains(name)).collect();

    // 2. What the kept processors read but do not write comes from the source experiment.
    let written: BTreeSet<&String> = kept.iter().flat_map(|name| topology.processors[name].outputs.values()).collect();
    if let Some(writer) = kept.iter().find(|name| topology.processors[*name].outputs.values().any(|t| t == stage)) {
        anyhow::bail!(
            "processor '{writer}' writes '{stage}' and also reads what comes from it; a replay never writes its stage"
        );
    }
    let mut sources = vec![stage.to_string()];
    for name in &kept {
        for input in &topology.processors[name].inputs {
            if !written.contains(input) && !sources.contains(input) {
                sources.push(input.clone());
            }
        }
    }
    let used: BTreeSet<&String> = kept
        .iter()
        .flat_map(|name| {
            let p = &topology.processors[name];
            p.inputs.iter().chain(p.outputs.values())
        })
        .collect();

    // 3. The same edits on the TOML document, so the written file is an ordinary topology.
    let mut doc: toml::Table = text.parse()?;
    doc.insert("experiment".into(), to.into());
    if let Some(toml::Value::Table(processors)) = doc.get_mut("processors") {
        processors.retain(|name, _| kept.iter().any(|k| k == name));
    }
    if let Some(toml::Value::Table(topics)) = doc.get_mut("topics") {
        topics.retain(|name, _| used.iter().any(|u| u.as_str() == name) || name == DEAD_LETTERS);
        for source in &sources {
            let Some(toml::Value::Table(topic)) = topics.get_mut(source) else { continue };
            // A topic that already names its experiment keeps it, except the stage.
            if source == stage || !topic.contains_key("experiment") {
                topic.insert("experiment".into(), from.into());
            }
        }
    }
    let text = format!(
        "# `distillery replay --from {from} --stage {stage} --to {to}` of {origin}: the processors\n\
         # downstream of '{stage}', reading {} from experiment '{from}'.\n\n{}",
        sources.join(", "),
        toml::to_string(&doc)?
    );
    let rewritten = Topology::parse(&text, &format!("the replay of {origin}"))?;
    rewritten.validate(&format!("the replay of {origin}"), &registry::processor_types())?;
    let processors = upstream_first(&rewritten, &kept);
    Ok(ReplayPlan { topology: rewritten, text, processors, sources })
}

/// `names` ordered so that a processor comes after every kept processor writing its inputs
/// (a cycle keeps its file order).
fn upstream_first(topology: &Topology, names: &[String]) -> Vec<String> {
    let mut ordered: Vec<String> = Vec::new();
    let mut left: Vec<String> = names.to_vec();
    while !left.is_empty() {
        let ready = left.iter().position(|name| {
            topology.processors[name].inputs.iter().all(|input| {
                !left
                    .iter()
                    .any(|other| other != name && topology.processors[other].outputs.values().any(|t| t == input))
            })
        });
        ordered.push(left.remove(ready.unwrap_or(0)));
    }
    ordered
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.topology)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.topology.display()))?;
    let origin = args.topology.display().to_string();
    let plan = plan(&text, &origin, &args.from, &args.stage, &args.to, &args.processors)?;
    if let Some(path) = &args.write_topology {
        std::fs::write(path, &plan.text)?;
        println!(
            "wrote {} (experiment '{}': {}; reads {} of '{}')",
            path.display(),
            args.to,
            plan.processors.join(", "),
            plan.sources.join(", "),
            args.from
        );
        return Ok(());
    }
    let not_runnable: Vec<String> = plan
        .processors
        .iter()
        .filter(|name| !registry::RUNNABLE.contains(&plan.topology.processors[*name].kind.as_str()))
        .cloned()
        .collect();
    anyhow::ensure!(
        not_runnable.is_empty(),
        "this build cannot run {} yet; choose the processors to replay with --processors (downstream of '{}': {})",
        not_runnable.join(", "),
        args.stage,
        plan.processors.join(", ")
    );

    let embedded = args.bootstrap_servers.is_none() && plan.topology.kafka.bootstrap_servers == "embedded";
    let broker = if embedded {
        std::fs::create_dir_all(&args.work_dir)?;
        let store = args.work_dir.join("broker.db");
        let broker = LocalBroker::start(BrokerStore::Sqlite(store.clone()), Some(&args.work_dir.join("broker.log")))?;
        println!("local broker on {} (store {})", broker.bootstrap_servers(), store.display());
        Some(broker)
    } else {
        None
    };
    let connection = match &broker {
        Some(broker) => broker.connection(),
        None => Connection::from_settings(&plan.topology.kafka, args.bootstrap_servers.as_deref())
            .map_err(anyhow::Error::msg)?,
    };
    admin::apply_topology(&plan.topology, &connection).await?;
    let topology = Arc::new(plan.topology.clone());
    println!(
        "replaying {} of experiment '{}' into '{}': {}",
        plan.sources.iter().map(|s| topology.topic_name(s)).collect::<Vec<_>>().join(", "),
        args.from,
        args.to,
        plan.processors.join(", ")
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for name in &plan.processors {
        for task in registry::spawn_replicas(&topology, name, &connection, &stop_rx) {
            tasks.push((name.clone(), task));
        }
    }

    let signal = shutdown::signal();
    tokio::pin!(signal);
    let settle = Duration::from_secs(args.settle_secs);
    let outcome = tokio::select! {
        _ = &mut signal => Outcome::Stopped,
        name = first_to_end(&tasks) => Outcome::Failed(name),
        done = wait_until_done(&topology, &plan.processors, &connection, settle), if !args.follow => match done {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Error(e),
        },
    };
    let _ = stop_tx.send(true);
    let mut failures = Vec::new();
    for (name, task) in tasks {
        match task.await? {
            Ok(summary) => println!("{name:<24} {summary}"),
            Err(e) => {
                println!("{name:<24} failed: {e:#}");
                failures.push(format!("processor '{name}' failed: {e:#}"));
            }
        }
    }
    match outcome {
        Outcome::Error(e) => return Err(e),
        Outcome::Failed(name) => {
            anyhow::bail!("{}", failures.pop().unwrap_or_else(|| format!("processor '{name}' stopped by itself")))
        }
        Outcome::Done | Outcome::Stopped => {}
    }
    println!("\n{:<50} {:>7}", format!("topic (experiment '{}')", args.to), "records");
    for short in topology.topics.keys().filter(|t| !topology.is_foreign(t)) {
        let (connection, name) = (connection.clone(), topology.topic_name(short));
        let records = tokio::task::spawn_blocking(move || end_offset_total(&connection, &name)).await??;
        println!("{:<50} {records:>7}", topology.topic_name(short));
    }
    drop(broker);
    if matches!(outcome, Outcome::Done) {
        println!("\nreplay done in {:.1}s; the source experiment was only read", started.elapsed().as_secs_f64());
    } else {
        println!(
            "\nstopped after {:.1}s; run the same command again to resume where it stopped",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// How the replay's run ended.
enum Outcome {
    /// Every downstream processor finished the replayed input.
    Done,
    /// SIGINT/SIGTERM.
    Stopped,
    /// A processor ended by itself, which they only do when something went wrong.
    Failed(String),
    /// Watching the progress failed.
    Error(anyhow::Error),
}

/// Resolves with the name of the first processor task that ends.
async fn first_to_end(tasks: &[(String, tokio::task::JoinHandle<anyhow::Result<String>>)]) -> String {
    loop {
        if let Some((name, _)) = tasks.iter().find(|(_, task)| task.is_finished()) {
            return name.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every consumer group of the replay has committed all of its input, every
/// packer has shipped or dead-lettered every accepted question it read, and no topic of the
/// new experiment grew for `settle`.
async fn wait_until_done(
    topology: &Arc<Topology>,
    processors: &[String],
    connection: &Connection,
    settle: Duration,
) -> anyhow::Result<()> {
    let mut packers = PackerProgress::default();
    let mut last_ends: Option<(BTreeMap<String, i64>, Instant)> = None;
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Upstream first: once a processor is caught up, its input no longer grows, so a
        // later zero downstream has seen all of its outputs.
        let mut lag = 0;
        for name in processors {
            let topics: Vec<String> = topology.processors[name].inputs.iter().map(|t| topology.topic_name(t)).collect();
            let (connection, group) = (connection.clone(), topology.group_id(name));
            lag += tokio::task::spawn_blocking(move || group_lag(&connection, &group, &topics)).await??;
        }
        if lag > 0 {
            last_ends = None;
            if last_report.elapsed() > Duration::from_secs(10) {
                println!("  {lag} record(s) still to process");
                last_report = Instant::now();
            }
            continue;
        }
        if !packers.all_shipped(topology, processors, connection).await? {
            last_ends = None;
            continue;
        }
        let ends = {
            let (topology, connection) = (topology.clone(), connection.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeMap<String, i64>> {
                let mut ends = BTreeMap::new();
                for short in topology.topics.keys().filter(|t| !topology.is_foreign(t)) {
                    ends.insert(short.clone(), end_offset_total(&connection, &topology.topic_name(short))?);
                }
                Ok(ends)
            })
            .await??
        };
        match &last_ends {
            Some((previous, since)) if *previous == ends => {
                if since.elapsed() >= settle {
                    return Ok(());
                }
            }
            _ => last_ends = Some((ends, Instant::now())),
        }
    }
}

/// Whether each packer has shipped everything it was given. A packer holds sequences until a
/// shard fills or its input is idle for `flush_idle_secs`, so a caught-up consumer group is
/// not enough: every accepted question on its input must be in a published shard or in its
/// dead letters.
#[derive(Default)]
struct PackerProgress {
    /// Accepted question ids per input topic, with the topic's end offset when read (an
    /// input is read again only when it grew).
    accepted: BTreeMap<String, (i64, BTreeSet<String>)>,
}

impl PackerProgress {
    async fn all_shipped(
        &mut self,
        topology: &Arc<Topology>,
        processors: &[String],
        connection: &Connection,
    ) -> anyhow::Result<bool> {
        for name in processors {
            let instance = &topology.processors[name];
            if instance.kind != "packer" {
                continue;
            }
            let mut want = BTreeSet::new();
            for input in &instance.inputs {
                want.extend(self.accepted(&topology.topic_name(input), connection).await?.iter().cloned());
            }
            let shards = topology.topic_name(instance.outputs.get("shards").map(String::as_str).unwrap_or_default());
            let (connection, dead_letters, name) =
                (connection.clone(), topology.topic_name(DEAD_LETTERS), name.clone());
            let accounted = tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeSet<String>> {
                let mut ids: BTreeSet<String> = read_to_end(&connection, &shards, Duration::from_secs(600))?
                    .iter()
                    .filter_map(|r| decode::<ShardManifest>(&r.payload).ok())
                    .flat_map(|m| m.question_ids)
                    .collect();
                ids.extend(
                    read_to_end(&connection, &dead_letters, Duration::from_secs(600))?
                        .iter()
                        .filter_map(|r| decode::<DeadLetter>(&r.payload).ok())
                        .filter(|letter| letter.processor == name)
                        .filter_map(|letter| decode::<AgreedSample>(&letter.original).ok())
                        .map(|agreed| agreed.question_id),
                );
                Ok(ids)
            })
            .await??;
            if !want.is_subset(&accounted) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn accepted(&mut self, topic: &str, connection: &Connection) -> anyhow::Result<&BTreeSet<String>> {
        let end = {
            let (connection, topic) = (connection.clone(), topic.to_string());
            tokio::task::spawn_blocking(move || end_offset_total(&connection, &topic)).await??
        };
        if self.accepted.get(topic).is_none_or(|(seen, _)| *seen != end) {
            let (connection, name) = (connection.clone(), topic.to_string());
            let ids = tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeSet<String>> {
                Ok(read_to_end(&connection, &name, Duration::from_secs(3600))?
                    .iter()
                    .filter_map(|r| decode::<AgreedSample>(&r.payload).ok())
                    .filter(|a| a.accepted)
                    .map(|a| a.question_id)
                    .collect())
            })
            .await??;
            self.accepted.insert(topic.to_string(), (end, ids));
        }
        Ok(&self.accepted[topic].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quickstart() -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology/quickstart.toml");
        std::fs::read_to_string(root).unwrap()
    }

    #[test]
    fn replaying_judged_keeps_agreement_and_packer_and_reads_judged_from_the_source() {
        let plan = plan(&quickstart(), "quickstart.toml", "quickstart", "judged", "q2", &[]).unwrap();
        let downstream = ["agreement", "packer-concise", "packer-reference", "trainer-concise", "trainer-reference"];
        assert_eq!(plan.processors, [&downstream[..], &["evaluator"]].concat());
        assert_eq!(plan.sources, ["judged"]);
        let t = &plan.topology;
        assert_eq!(t.experiment, "q2");
        assert_eq!(t.topic_name("judged"), "quickstart.judged");
        assert_eq!(t.topic_name("agreed"), "q2.agreed");
        assert_eq!(t.topic_name("dead-letters"), "q2.dead-letters");
        assert_eq!(t.group_id("agreement"), "q2.agreement", "new consumer groups read from the beginning");
        let topics: Vec<_> = t.topics.keys().map(String::as_str).collect();
        assert_eq!(
            topics,
            [
                "agreed",
                "checkpoints",
                "dead-letters",
                "eval-results",
                "judged",
                "rejected",
                "shards.concise",
                "shards.reference",
                "train-metrics"
            ]
        );
        // The written topology is an ordinary topology that means the same.
        let again = Topology::parse(&plan.text, "written").unwrap();
        assert_eq!(again.topic_name("judged"), "quickstart.judged");
        let mut written: Vec<&str> = again.processors.keys().map(String::as_str).collect();
        written.sort();
        let mut expected = plan.processors.iter().map(String::as_str).collect::<Vec<_>>();
        expected.sort();
        assert_eq!(written, expected);
    }

    #[test]
    fn replaying_samples_reruns_the_judge_and_everything_after_it_in_order() {
        let all = plan(&quickstart(), "q", "quickstart", "samples", "rejudge", &[]).unwrap();
        assert_eq!(all.processors[..2], ["judge", "agreement"]);
        assert_eq!(all.processors.last().map(String::as_str), Some("evaluator"));
        let judge_only = plan(&quickstart(), "q", "quickstart", "samples", "rejudge", &["judge".into()]).unwrap();
        assert_eq!(judge_only.processors, ["judge"]);
    }

    #[test]
    fn a_narrowed_replay_reads_every_unfed_input_from_the_source() {
        let plan = plan(&quickstart(), "q", "quickstart", "judged", "repack", &["packer-reference".into()]).unwrap();
        assert_eq!(plan.processors, ["packer-reference"]);
        assert_eq!(plan.sources, ["judged", "agreed"]);
        assert_eq!(plan.topology.topic_name("agreed"), "quickstart.agreed");
        assert_eq!(plan.topology.topic_name("shards.reference"), "repack.shards.reference");
    }

    #[test]
    fn bad_replays_are_refused_with_the_reason() {
        let err = |from: &str, stage: &str, to: &str, only: &[&str]| {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            plan(&quickstart(), "q", from, stage, to, &only).unwrap_err().to_string()
        };
        assert!(err("quickstart", "judged", "quickstart", &[]).contains("--to must name a new experiment"));
        assert!(err("quickstart", "judgd", "x", &[]).contains("--stage 'judgd' is not a topic"));
        assert!(err("quickstart", "eval-results", "x", &[]).contains("no processor of q reads"));
        assert!(err("quickstart", "agreed", "x", &["judge"]).contains("'judge', which is not downstream"));
        assert!(err("quick start", "judged", "x", &[]).contains("--from 'quick start'"));
    }
}
