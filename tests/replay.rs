//! `distillery replay` over a real broker. An experiment runs feeder -> two replay teachers
//! (one right on every question, one only on the even ones) -> judge -> agreement (both
//! teachers must match) -> packer. Then, without touching the teachers:
//! - re-judge: replay `samples` into a new experiment with the same settings; every stage's
//!   output has exactly the ids of the original;
//! - re-agree: replay `judged` with agreement requiring only the first teacher; now every
//!   question is agreed and packed, once;
//! - the same replay again resumes and publishes nothing twice.
//!
//! The source experiment's topics end where they ended before the replays.

use distillery_runtime::reader::{end_offset_total, group_lag, read_to_end, ReadRecord};
use distillery_schemas::{decode, AgreedSample, JudgedSample, ShardManifest};
use distillery_tests::{distillery_bin, ids_with_counts, repo_root, wait_until, Cluster};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QUESTIONS: usize = 40;

const TOPOLOGY: &str = r#"
experiment = "orig"
[topics.questions]
schema = "question"
partitions = 4
[topics.samples]
schema = "teacher_sample"
partitions = 4
retention_ms = -1
[topics.judged]
schema = "judged_sample"
partitions = 4
[topics.agreed]
schema = "agreed_sample"
partitions = 4
[topics.rejected]
schema = "agreed_sample"
partitions = 4
[topics."shards.a"]
schema = "shard_manifest"
partitions = 1

[processors.feeder]
type = "feeder"
outputs = { questions = "questions" }
settings = { files = [{ uri = "{dir}/rows.jsonl", format = "fields", dataset = "r", problem_field = "q", answer_field = "a", id_field = "key" }] }

[processors.sampler-a]
type = "sampler"
inputs = ["questions"]
outputs = { samples = "samples" }
[processors.sampler-a.settings]
teacher = "teacher-a"
model = "recorded-a"
replay = { dataset = { uri = "{dir}/rows.jsonl", format = "fields", dataset = "r", problem_field = "q", answer_field = "a", id_field = "key" }, response_field = "right" }

[processors.sampler-b]
type = "sampler"
inputs = ["questions"]
outputs = { samples = "samples" }
[processors.sampler-b.settings]
teacher = "teacher-b"
model = "recorded-b"
replay = { dataset = { uri = "{dir}/rows.jsonl", format = "fields", dataset = "r", problem_field = "q", answer_field = "a", id_field = "key" }, response_field = "even" }

[processors.judge]
type = "judge"
inputs = ["samples"]
outputs = { judged = "judged" }
settings = { mode = "rules-only" }

[processors.agreement]
type = "agreement"
inputs = ["judged"]
outputs = { agreed = "agreed", rejected = "rejected" }
settings = { required_teachers = ["teacher-a", "teacher-b"] }

[processors.packer-a]
type = "packer"
inputs = ["agreed"]
outputs = { shards = "shards.a" }
runtime = { max_in_flight = 1 }
[processors.packer-a.settings]
style = "teacher-a"
tokenizer = "{repo}/topology/data/student/tokenizer.json"
tokenizer_config = "{repo}/topology/data/student/tokenizer_config.json"
store = "{dir}/shards"
row_tokens = 8192
rows_per_shard = 4
flush_idle_secs = 1
"#;

/// Questions `What is i + 1?`; teacher a answers every one right, teacher b only the even ones.
fn write_rows(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for i in 0..QUESTIONS {
        let right = format!("<think>Add one to {i}.</think>The answer is \\boxed{{{}}}.", i + 1);
        let even = if i % 2 == 0 { right.clone() } else { format!("<think>Guess.</think>\\boxed{{{}}}", i + 7) };
        let row = serde_json::json!({"key": format!("q{i:03}"), "q": format!("What is {i} + 1?"), "a": (i + 1).to_string(), "right": right, "even": even});
        writeln!(file, "{row}").unwrap();
    }
}

fn read(cluster: &Cluster, topic: &str) -> Vec<ReadRecord> {
    read_to_end(&cluster.connection(), topic, Duration::from_secs(60)).unwrap()
}

fn question_ids(cluster: &Cluster, topic: &str) -> BTreeSet<String> {
    read(cluster, topic).iter().map(|r| decode::<AgreedSample>(&r.payload).unwrap().question_id).collect()
}

/// Question ids in the shards of a manifest topic, once per manifest (manifests de-duplicated
/// by id, as a trainer reads them).
fn packed(cluster: &Cluster, topic: &str) -> BTreeMap<String, usize> {
    let manifests: BTreeMap<String, ShardManifest> = read(cluster, topic)
        .iter()
        .map(|r| decode::<ShardManifest>(&r.payload).unwrap())
        .map(|m| (m.id.clone(), m))
        .collect();
    let mut counts = BTreeMap::new();
    for manifest in manifests.values() {
        assert!(Path::new(&manifest.uri).exists(), "{} was written before its manifest", manifest.uri);
        for id in &manifest.question_ids {
            *counts.entry(id.clone()).or_insert(0) += 1;
        }
    }
    counts
}

/// End offsets of every topic of an experiment's topology.
fn ends(cluster: &Cluster) -> BTreeMap<String, i64> {
    let t = &cluster.topology;
    t.topics.keys().map(|s| (s.clone(), end_offset_total(&cluster.connection(), &t.topic_name(s)).unwrap())).collect()
}

/// Runs `distillery replay` to completion (it must stop by itself) and returns its output.
fn replay(cluster: &Cluster, topology: &Path, stage: &str, to: &str) -> String {
    let log_path = cluster.path(&format!("replay-{to}-{stage}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut child = Command::new(distillery_bin())
        .current_dir(repo_root())
        .args(["replay", "--from", "orig", "--stage", stage, "--to", to, "--topology"])
        .arg(topology)
        .args(["--bootstrap-servers", &cluster.broker.bootstrap_servers(), "--settle-secs", "1"])
        .env("RUST_LOG", "warn,rdkafka=error")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until("the replay to finish by itself", Duration::from_secs(90), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let output = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.unwrap().success(), "replay failed:\n{output}");
    eprintln!("replay of {stage} into {to}: {:.1}s", started.elapsed().as_secs_f64());
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_rebuild_complete_duplicate_free_experiments_without_touching_the_source() {
    let cluster = Cluster::start(TOPOLOGY).await;
    write_rows(&cluster.path("rows.jsonl"));
    let even: BTreeSet<String> = (0..QUESTIONS).step_by(2).map(|i| format!("r:q{i:03}")).collect();
    let all: BTreeSet<String> = (0..QUESTIONS).map(|i| format!("r:q{i:03}")).collect();

    // The original experiment, as separate processes.
    let started = Instant::now();
    let stages = ["sampler-a", "sampler-b", "judge", "agreement", "packer-a"];
    let mut procs: Vec<_> = stages.iter().map(|name| cluster.spawn(name, "0")).collect();
    cluster.run_source("feeder");
    wait_until("the original experiment", Duration::from_secs(90), || {
        stages.iter().all(|s| cluster.lag(s) == 0) && packed(&cluster, "orig.shards.a").len() == even.len()
    });
    for proc in &mut procs {
        assert!(proc.terminate().success(), "{}", proc.log());
    }
    eprintln!("original experiment: {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(question_ids(&cluster, "orig.agreed"), even, "both teachers right only on the even questions");
    assert_eq!(packed(&cluster, "orig.shards.a").keys().cloned().collect::<BTreeSet<_>>(), even);
    let judged_ids = ids_with_counts(&cluster.read("judged")).into_keys().collect::<BTreeSet<_>>();
    assert_eq!(judged_ids.len(), 2 * QUESTIONS);
    let source_ends = ends(&cluster);

    // Re-judge: the same settings from `samples` reproduce every downstream stage exactly.
    let output = replay(&cluster, &cluster.topology_path, "samples", "rejudge");
    assert!(output.contains("replay done in"), "{output}");
    let judged = read(&cluster, "rejudge.judged");
    assert_eq!(ids_with_counts(&judged).into_keys().collect::<BTreeSet<_>>(), judged_ids, "same judged ids");
    assert_eq!(judged.len(), judged_ids.len(), "no duplicates");
    assert!(judged.iter().all(|r| decode::<JudgedSample>(&r.payload).is_ok()));
    assert_eq!(question_ids(&cluster, "rejudge.agreed"), even);
    assert_eq!(read(&cluster, "rejudge.agreed").len(), even.len());
    let rejudged_packs = packed(&cluster, "rejudge.shards.a");
    assert_eq!(rejudged_packs.keys().cloned().collect::<BTreeSet<_>>(), even);
    assert!(rejudged_packs.values().all(|&n| n == 1), "each question in one shard");
    let group = group_lag(&cluster.connection(), "rejudge.judge", &["orig.samples".to_string()]).unwrap();
    assert_eq!(group, 0, "the new judge group read the source samples to their end");
    assert!(read(&cluster, "rejudge.dead-letters").is_empty());

    // Re-agree with a different setting: only teacher a must match, so every question passes.
    let text = std::fs::read_to_string(&cluster.topology_path)
        .unwrap()
        .replace(r#"required_teachers = ["teacher-a", "teacher-b"]"#, r#"required_teachers = ["teacher-a"]"#);
    let a_only = cluster.path("a-only.toml");
    std::fs::write(&a_only, text).unwrap();
    let output = replay(&cluster, &a_only, "judged", "a-only");
    assert!(output.contains("agreement") && output.contains("packer-a"), "{output}");
    assert!(!output.contains("judge "), "nothing upstream of judged runs: {output}");
    let agreed = read(&cluster, "a-only.agreed");
    assert_eq!(question_ids(&cluster, "a-only.agreed"), all, "every question agreed");
    assert_eq!(agreed.len(), QUESTIONS, "no duplicates");
    assert!(read(&cluster, "a-only.rejected").is_empty());
    let packs = packed(&cluster, "a-only.shards.a");
    assert_eq!(packs.keys().cloned().collect::<BTreeSet<_>>(), all);
    assert!(packs.values().all(|&n| n == 1), "each question in one shard");

    // The same replay again resumes from its committed offsets: nothing new is published.
    let before: Vec<i64> = ["agreed", "rejected", "shards.a", "dead-letters"]
        .iter()
        .map(|t| end_offset_total(&cluster.connection(), &format!("a-only.{t}")).unwrap())
        .collect();
    replay(&cluster, &a_only, "judged", "a-only");
    let after: Vec<i64> = ["agreed", "rejected", "shards.a", "dead-letters"]
        .iter()
        .map(|t| end_offset_total(&cluster.connection(), &format!("a-only.{t}")).unwrap())
        .collect();
    assert_eq!(before, after, "a second run of the same replay publishes nothing twice");

    assert_eq!(ends(&cluster), source_ends, "the source experiment's topics were never written");
}
