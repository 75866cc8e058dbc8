//! The trainer's contract when its input misbehaves, over a real broker: a shard id is never
//! trained twice (a replayed manifest is skipped), a failure to read its input never ends the
//! run (it retries, then exits non-zero for its supervisor, with no final checkpoint), and a
//! saved position that no longer exists in the topic (recreated, or past retention) is refused
//! instead of silently starting over.

use distillery_packer::ffd::{Row, Sequence};
use distillery_packer::shard::TokenizedSequence;
use distillery_runtime::bench::produce_keyed;
use distillery_schemas::{decode, encode, stable_id, CheckpointEvent, TrainMetrics};
use distillery_tests::{distillery_bin, records, repo_root, wait_until, Cluster};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A tiny trainer over `shards`; `extra` are more settings lines.
fn topology(extra: &str) -> String {
    format!(
        r#"
experiment = "contract"
[topics.shards]
schema = "shard_manifest"
partitions = 1
external = true
[topics.checkpoints]
schema = "checkpoint_event"
partitions = 1
[topics.train-metrics]
schema = "train_metrics"
partitions = 1

[processors.trainer]
type = "trainer"
inputs = ["shards"]
outputs = {{ checkpoints = "checkpoints", metrics = "train-metrics" }}
[processors.trainer.settings]
student = "random"
model_config = "{{dir}}/config.json"
style = "teacher-a"
global_batch_rows = 2
learning_rate = 1e-2
warmup_ratio = 0.0
checkpoint_every_steps = 1
checkpoint_store = "{{dir}}/checkpoints"
read_retry_secs = 3
{extra}
"#
    )
}

fn write_config(cluster: &Cluster) {
    let config = serde_json::json!({
        "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": false,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "model_type": "llama"
    });
    std::fs::write(cluster.path("config.json"), config.to_string()).unwrap();
}

/// Shard `index` (2 rows of 2 sequences) written to the cluster's folder; its manifest record.
fn shard(cluster: &Cluster, index: i64) -> (String, Vec<u8>) {
    let rows: Vec<Row<TokenizedSequence>> = (0..2)
        .map(|r| {
            let sequences: Vec<Sequence<TokenizedSequence>> = (0..2)
                .map(|s| {
                    let seed = (index * 4 + r * 2 + s) as u32;
                    let input_ids: Vec<u32> = (0..8).map(|i| (seed + i) % 32).collect();
                    let loss_mask = (0..8).map(|i| u8::from(i >= 3)).collect();
                    Sequence {
                        tokens: 8,
                        item: TokenizedSequence { question_id: format!("q{seed}"), input_ids, loss_mask },
                    }
                })
                .collect();
            Row { tokens: 16, sequences }
        })
        .collect();
    records::shard(cluster.dir.path(), index, &rows, 16)
}

fn checkpoints(cluster: &Cluster) -> Vec<CheckpointEvent> {
    cluster.read("checkpoints").iter().map(|r| decode::<CheckpointEvent>(&r.payload).unwrap()).collect()
}

fn trained_shards(event: &CheckpointEvent) -> Vec<String> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}/trainer_state.json", event.uri)).unwrap()).unwrap();
    serde_json::from_value(state["shard_ids"].clone()).unwrap()
}

/// Waits for a process to exit on its own, or panics after `timeout`.
fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < timeout, "did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_published_twice_is_trained_once() {
    let cluster = Cluster::start(&topology("steps = 100\nstop_when_idle_secs = 2")).await;
    write_config(&cluster);
    let (s0, s1, s2) = (shard(&cluster, 0), shard(&cluster, 1), shard(&cluster, 2));
    // A replayed manifest: the same shard id again, after another shard.
    let records = [s0, s1.clone(), s1, s2];
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("shards"), &records).await.unwrap();
    let mut trainer = cluster.spawn("trainer", "0");
    let status = wait_exit(&mut trainer.child, Duration::from_secs(120));
    assert!(status.success(), "{}", trainer.log());
    let last = checkpoints(&cluster).into_iter().find(|c| c.is_final).expect("a final checkpoint");
    let ids = trained_shards(&last);
    assert_eq!(ids, ["0", "1", "2"].map(|i| stable_id(&["shard", i])), "each shard id once, in topic order");
    assert_eq!(last.shards_consumed, 3);
    assert_eq!(last.step, 3, "6 rows in 2-row steps");
    assert_eq!(last.consumed[0].next_offset, 4, "the position moved past the replayed manifest");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trainer_that_cannot_read_its_shards_exits_non_zero_without_a_final_checkpoint() {
    let cluster = Cluster::start(&topology("steps = 4")).await;
    write_config(&cluster);
    // The same topology, but the shards come from a topic that does not exist.
    let missing = std::fs::read_to_string(&cluster.topology_path)
        .unwrap()
        .replace("[topics.shards]\n", "[topics.shards]\nexperiment = \"nowhere\"\n");
    let missing_path = cluster.path("missing.toml");
    std::fs::write(&missing_path, missing).unwrap();
    let log = std::fs::File::create(cluster.path("missing.log")).unwrap();
    let mut child = Command::new(distillery_bin())
        .current_dir(repo_root())
        .args(["run", "trainer", "--topology"])
        .arg(&missing_path)
        .args(["--bootstrap-servers", &cluster.broker.bootstrap_servers()])
        .env("RUST_LOG", "info,rdkafka=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let log = std::fs::read_to_string(cluster.path("missing.log")).unwrap();
    assert!(!status.success(), "the trainer must fail for its supervisor: {log}");
    assert!(log.contains("nowhere.shards"), "the error names the topic: {log}");
    assert!(checkpoints(&cluster).iter().all(|c| !c.is_final), "a final checkpoint after a failed read");

    // With the topic there, the same run trains to the end (it was not marked complete).
    produce_keyed(
        &cluster.connection(),
        &cluster.topology.topic_name("shards"),
        &[0, 1, 2, 3].map(|i| shard(&cluster, i)),
    )
    .await
    .unwrap();
    let mut trainer = cluster.spawn("trainer", "0");
    let status = wait_exit(&mut trainer.child, Duration::from_secs(120));
    assert!(status.success(), "{}", trainer.log());
    let last = checkpoints(&cluster).into_iter().find(|c| c.is_final).expect("a final checkpoint");
    assert_eq!(last.step, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_position_the_topic_no_longer_has_is_refused() {
    let mut cluster = Cluster::start(&topology("steps = 100")).await;
    write_config(&cluster);
    let shards: Vec<_> = (0..4).map(|i| shard(&cluster, i)).collect();
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("shards"), &shards).await.unwrap();
    let mut trainer = cluster.spawn("trainer", "0");
    wait_until("a checkpoint past the third shard", Duration::from_secs(120), || {
        checkpoints(&cluster).iter().any(|c| c.consumed[0].next_offset >= 3)
    });
    trainer.kill9();
    let saved = checkpoints(&cluster);
    // The broker loses its shards topic (recreated empty: the memory store starts over); the
    // checkpoint events survive (published back as they were) and one new shard arrives.
    cluster.broker.stop();
    cluster.broker.restart().unwrap();
    distillery_runtime::admin::apply_topology(&cluster.topology, &cluster.connection()).await.unwrap();
    let events: Vec<(String, Vec<u8>)> = saved.iter().map(|e| (e.run.clone(), encode(e).unwrap())).collect();
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("checkpoints"), &events).await.unwrap();
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("shards"), &[shard(&cluster, 9)]).await.unwrap();

    let mut restarted = cluster.spawn("trainer", "0");
    let status = wait_exit(&mut restarted.child, Duration::from_secs(60));
    let log = restarted.log();
    assert!(!status.success(), "resuming past the topic's end must fail: {log}");
    assert!(log.contains("offset"), "the error names the missing offset: {log}");
    let metrics: Vec<TrainMetrics> =
        cluster.read("train-metrics").iter().map(|r| decode::<TrainMetrics>(&r.payload).unwrap()).collect();
    assert!(metrics.is_empty(), "nothing trained on the new topic from a stale position: {metrics:?}");
}
