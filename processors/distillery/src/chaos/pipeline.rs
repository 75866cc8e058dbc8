//! One run: a broker with the topology applied and its processors running as child processes,
//! several replicas per stage, supervised until every question is decided, packed and (with
//! trainers) trained on.

use super::disruptions::Disruptions;
use super::outcome::Outcome;
use super::setup::{self, Teachers, EXPIRING_QUESTION};
use super::{kind_of, RunContext, KINDS, REPLICATED};
use distillery_runtime::bench::produce_keyed;
use distillery_runtime::broker::{BrokerStore, LocalBroker};
use distillery_runtime::reader::{group_lag, read_to_end, EndOffsets, ReadRecord};
use distillery_runtime::{admin, Connection, Topology};
use distillery_schemas::{
    decode, AgreedSample, CheckpointEvent, DeadLetter, JudgedSample, Question, ShardManifest, TeacherSample,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker with the topology applied and its processors running as child processes.
pub struct Pipeline {
    pub dir: PathBuf,
    pub broker: LocalBroker,
    pub topology: Topology,
    topology_path: PathBuf,
    pub with_trainers: bool,
    /// Running replicas, by `instance/replica`.
    pub replicas: BTreeMap<String, Replica>,
    /// Replicas told to leave (SIGTERM), until they exit.
    leaving: Vec<(String, Child)>,
    starts: usize,
    joined: usize,
    /// Processes that exited on their own and were restarted: (replica, status, last log line).
    pub unplanned_exits: Vec<(String, String, String)>,
    /// When teacher B's late verdict was published (after the scripted expiry).
    late_verdict_sent: Option<Instant>,
    /// One client for the output counts the driver reads several times a second.
    ends: EndOffsets,
}

pub struct Replica {
    pub instance: String,
    replica: String,
    child: Child,
    started: Instant,
    /// The stage's output count when this replica started (it is killed only after it grew).
    output_at_start: i64,
    finished: bool,
    log: PathBuf,
}

/// Whether a packer replica is in the middle of a shipment, and if so whether it is a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipping {
    No,
    Shard,
    Flush,
}

impl Pipeline {
    pub(crate) fn start(
        context: &RunContext,
        run: &str,
        teachers: &Teachers,
        trainer_steps: Option<u64>,
    ) -> anyhow::Result<Pipeline> {
        let dir = context.work.join(run);
        std::fs::create_dir_all(dir.join("logs"))?;
        let broker = LocalBroker::start(BrokerStore::Sqlite(dir.join("broker.db")), Some(&dir.join("broker.log")))?;
        let topology_path = dir.join("topology.toml");
        std::fs::write(&topology_path, setup::topology_text(context, run, teachers, trainer_steps))?;
        let topology = Topology::load(&topology_path)?;
        topology.validate(&topology_path.display().to_string(), &crate::registry::processor_types())?;
        context.runtime.block_on(admin::apply_topology(&topology, &broker.connection()))?;
        let ends = EndOffsets::new(&broker.connection())?;
        let mut pipeline = Pipeline {
            dir,
            broker,
            topology,
            topology_path,
            with_trainers: trainer_steps.is_some(),
            replicas: BTreeMap::new(),
            leaving: Vec::new(),
            starts: 0,
            joined: 0,
            unplanned_exits: Vec::new(),
            late_verdict_sent: None,
            ends,
        };
        let consumers: Vec<String> = pipeline
            .topology
            .processors
            .iter()
            .filter(|(_, p)| !p.inputs.is_empty() && (pipeline.with_trainers || p.kind != "trainer"))
            .map(|(name, _)| name.clone())
            .collect();
        for name in consumers {
            let replicas = if REPLICATED.contains(&kind_of(&name)) { context.args.replicas } else { 1 };
            for replica in 0..replicas {
                pipeline.spawn(context, &name, &replica.to_string())?;
            }
        }
        let mut feeder = pipeline.command(context, "feeder", "0")?.spawn()?;
        anyhow::ensure!(feeder.wait()?.success(), "the feeder failed (logs in {})", pipeline.dir.display());
        let judged = pipeline.topology.topic_name("judged");
        context.runtime.block_on(produce_keyed(&pipeline.connection(), &judged, &[setup::expiring_verdict()]))?;
        Ok(pipeline)
    }

    pub fn connection(&self) -> Connection {
        self.broker.connection()
    }

    fn command(&mut self, context: &RunContext, name: &str, replica: &str) -> anyhow::Result<Command> {
        self.starts += 1;
        let log_path = self.dir.join("logs").join(format!("{name}-{replica}-{}.log", self.starts));
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(&context.bin);
        command
            .current_dir(&context.cwd)
            .args(["run", name, "--topology"])
            .arg(&self.topology_path)
            .args(["--bootstrap-servers", &self.broker.bootstrap_servers(), "--replica", replica])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    }

    fn spawn(&mut self, context: &RunContext, name: &str, replica: &str) -> anyhow::Result<()> {
        let log = self.dir.join("logs").join(format!("{name}-{replica}-{}.log", self.starts + 1));
        let child = self.command(context, name, replica)?.spawn()?;
        let output_at_start = self.output_count(kind_of(name)).unwrap_or(0);
        self.replicas.insert(
            format!("{name}/{replica}"),
            Replica {
                instance: name.to_string(),
                replica: replica.to_string(),
                child,
                started: Instant::now(),
                output_at_start,
                finished: false,
                log,
            },
        );
        Ok(())
    }

    /// Records on a kind's output topics, or on every stage's with "any" (None while the
    /// broker does not answer).
    pub fn output_count(&self, kind: &str) -> Option<i64> {
        KINDS
            .iter()
            .filter(|(k, _, _)| kind == "any" || *k == kind)
            .flat_map(|(_, _, outputs)| outputs.iter())
            .map(|t| self.ends.total(&self.topology.topic_name(t)).ok())
            .sum()
    }

    pub fn read(&self, topic: &str) -> anyhow::Result<Vec<ReadRecord>> {
        read_to_end(&self.connection(), &self.topology.topic_name(topic), Duration::from_secs(30))
    }

    /// Restarts processes that exited on their own (a trainer that finished its steps stays
    /// finished); reaps the replicas that were told to leave.
    fn supervise(&mut self, context: &RunContext) -> anyhow::Result<()> {
        self.leaving.retain_mut(|(_, child)| child.try_wait().ok().flatten().is_none());
        let mut exited = Vec::new();
        for (key, replica) in &mut self.replicas {
            if replica.finished {
                continue;
            }
            if let Some(status) = replica.child.try_wait()? {
                let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
                if status.success() && replica.instance.starts_with("trainer") {
                    replica.finished = true;
                    continue;
                }
                let last = log
                    .lines()
                    .find(|l| l.starts_with("Error:"))
                    .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
                    .unwrap_or_default()
                    .to_string();
                exited.push((key.clone(), replica.instance.clone(), replica.replica.clone(), status.to_string(), last));
            }
        }
        for (key, instance, replica, status, last) in exited {
            println!("  {key} exited on its own ({status}): {last}; restarting it");
            self.unplanned_exits.push((key, status, last));
            self.spawn(context, &instance, &replica)?;
        }
        Ok(())
    }

    /// SIGKILL, then start again at once.
    pub(crate) fn kill_and_restart(&mut self, context: &RunContext, key: &str) -> anyhow::Result<()> {
        let replica = self.replicas.get_mut(key).expect("a running replica");
        let _ = replica.child.kill();
        let _ = replica.child.wait();
        let (instance, id) = (replica.instance.clone(), replica.replica.clone());
        self.spawn(context, &instance, &id)
    }

    /// A replica joins `instance`'s group; returns its key.
    pub(crate) fn join(&mut self, context: &RunContext, instance: &str) -> anyhow::Result<String> {
        self.joined += 1;
        let replica = format!("joined-{}", self.joined);
        self.spawn(context, instance, &replica)?;
        Ok(format!("{instance}/{replica}"))
    }

    /// A replica that joined `instance`'s group and has run for `at_least`, if one is still
    /// running.
    pub fn joined_replica(&self, instance: &str, at_least: Duration) -> Option<String> {
        self.replicas
            .iter()
            .find(|(_, r)| {
                r.instance == instance && r.replica.starts_with("joined-") && r.started.elapsed() >= at_least
            })
            .map(|(key, _)| key.clone())
    }

    /// Whether a replica that joined `instance`'s group is running.
    pub fn has_joined_replica(&self, instance: &str) -> bool {
        self.joined_replica(instance, Duration::ZERO).is_some()
    }

    /// The replica leaves its group: SIGTERM, a graceful stop (it commits and hands its
    /// partitions over).
    pub fn leave(&mut self, key: &str) {
        if let Some(replica) = self.replicas.remove(key) {
            let _ = Command::new("kill").args(["-TERM", &replica.child.id().to_string()]).status();
            self.leaving.push((key.to_string(), replica.child));
        }
    }

    /// Replicas of `kind` worth killing: running, up for a while, and the stage has produced
    /// something since they started (so the kill lands on work in progress).
    pub fn killable(&mut self, kind: &str) -> Vec<String> {
        let output = self.output_count(kind).unwrap_or(0);
        self.replicas
            .iter_mut()
            .filter(|(_, r)| kind_of(&r.instance) == kind)
            .filter_map(|(key, r)| {
                let alive = !r.finished && r.child.try_wait().ok().flatten().is_none();
                (alive && r.started.elapsed() > Duration::from_millis(1500) && output > r.output_at_start)
                    .then(|| key.clone())
            })
            .collect()
    }

    /// Packer replicas up for a while that are shipping right now (while the stage may
    /// produce nothing: their shipments wait for the store).
    pub fn packers_shipping(&self) -> Vec<(String, Shipping)> {
        self.replicas
            .iter()
            .filter(|(_, r)| kind_of(&r.instance) == "packer" && r.started.elapsed() > Duration::from_millis(1500))
            .map(|(key, _)| (key.clone(), self.shipping(key)))
            .filter(|(_, state)| *state != Shipping::No)
            .collect()
    }

    /// Whether a packer replica is shipping right now, from its log: a "shipping shard" line
    /// not yet followed by the shipment's outcome.
    pub fn shipping(&self, key: &str) -> Shipping {
        let Some(replica) = self.replicas.get(key) else { return Shipping::No };
        let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
        let Some(last) = log.lines().rev().find(|l| {
            l.contains("shipping shard")
                || l.contains("shard published")
                || l.contains("shard upload failed")
                || l.contains("not published")
        }) else {
            return Shipping::No;
        };
        match (last.contains("shipping shard"), last.contains("flush=true")) {
            (true, true) => Shipping::Flush,
            (true, false) => Shipping::Shard,
            _ => Shipping::No,
        }
    }

    /// Runs until every question is decided, packed by both packers, the scripted expiry and
    /// its late verdict are through, and (with trainers) both trainers wrote their final
    /// checkpoint; then stops everything and reads the outcome.
    pub(crate) fn run_to_end(
        mut self,
        context: &RunContext,
        teachers: &Teachers,
        mut chaos: Option<&mut Disruptions>,
    ) -> anyhow::Result<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(context.args.timeout_secs);
        let mut last_report = Instant::now();
        let mut last_progress = Instant::now();
        loop {
            self.supervise(context)?;
            if let Some(chaos) = chaos.as_deref_mut() {
                chaos.step(context, &mut self)?;
            }
            // Reading every topic takes a while: often enough to see the end, not so often
            // that the disruptions wait for it.
            if last_progress.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            last_progress = Instant::now();
            let progress = self.progress();
            if let Ok(p) = &progress {
                if p.expired && self.late_verdict_sent.is_none() {
                    // The question expired: now teacher B's verdict for it arrives, late.
                    let topic = self.topology.topic_name("judged");
                    context.runtime.block_on(produce_keyed(&self.connection(), &topic, &[setup::late_verdict()]))?;
                    println!("  question {EXPIRING_QUESTION} expired; its late verdict published");
                    self.late_verdict_sent = Some(Instant::now());
                }
            }
            let disruptions_done = chaos.as_deref().is_none_or(|c| c.done());
            let complete = progress.as_ref().is_ok_and(|p| p.is_complete(context.args.questions, self.with_trainers));
            if complete && disruptions_done && self.late_verdict_read() {
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
        }
        for child in self.replicas.values_mut().map(|r| &mut r.child).chain(self.leaving.iter_mut().map(|(_, c)| c)) {
            if child.try_wait()?.is_none() {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            }
        }
        for child in self.replicas.values_mut().map(|r| &mut r.child).chain(self.leaving.iter_mut().map(|(_, c)| c)) {
            let _ = child.wait();
        }
        Outcome::read(context, &self, teachers)
    }

    /// Whether the agreement read everything on `judged`, the late verdict included (and a
    /// moment passed for a wrong decision to show).
    fn late_verdict_read(&self) -> bool {
        let Some(sent) = self.late_verdict_sent else { return false };
        let topics = [self.topology.topic_name("judged")];
        let lag = group_lag(&self.connection(), &self.topology.group_id("agreement"), &topics);
        sent.elapsed() > Duration::from_secs(2) && lag.is_ok_and(|lag| lag == 0)
    }

    fn progress(&self) -> anyhow::Result<Progress> {
        let mut decided = BTreeSet::new();
        let mut agreed = BTreeSet::new();
        let mut expired = false;
        for topic in ["agreed", "rejected"] {
            for record in self.read(topic)? {
                let sample: AgreedSample = decode(&record.payload)?;
                if topic == "agreed" {
                    agreed.insert(sample.question_id.clone());
                }
                if sample.question_id == EXPIRING_QUESTION {
                    expired |= sample.reason.as_deref().is_some_and(|r| r.starts_with("expired"));
                    continue;
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
            expired,
            packed_a: packed("shards.a")?,
            packed_b: packed("shards.b")?,
            final_checkpoints: finals,
        })
    }
}

struct Progress {
    decided: usize,
    agreed: usize,
    /// The scripted question expired.
    expired: bool,
    packed_a: usize,
    packed_b: usize,
    final_checkpoints: usize,
}

impl Progress {
    fn is_complete(&self, questions: usize, with_trainers: bool) -> bool {
        self.decided == questions
            && self.expired
            && self.packed_a == self.agreed
            && self.packed_b == self.agreed
            && (!with_trainers || self.final_checkpoints >= 2)
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decided {}, agreed {}, packed {}/{}, {EXPIRING_QUESTION} expired: {}, final checkpoints {}",
            self.decided, self.agreed, self.packed_a, self.packed_b, self.expired, self.final_checkpoints
        )
    }
}
