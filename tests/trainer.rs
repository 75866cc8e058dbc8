//! The trainer over a real broker and a local object store: shards from the packer's format,
//! manifests on a one-partition topic, a tiny random-init student. One trainer runs
//! uninterrupted; a second, identical one is SIGKILLed twice and restarted. The second resumes
//! from its checkpoints, trains on exactly the same shard sequence and ends with bit-identical
//! weights; every step's metrics and every checkpoint are published once per step (replays
//! carry the same id and the same numbers).

use distillery_packer::ffd::{Row, Sequence};
use distillery_packer::shard::TokenizedSequence;
use distillery_runtime::bench::produce_keyed;
use distillery_schemas::{decode, stable_id, CheckpointEvent, TrainMetrics};
use distillery_tests::{wait_until, Cluster};
use std::collections::BTreeMap;
use std::time::Duration;

const STEPS: i64 = 12;

const TOPICS: &str = r#"
experiment = "trainer"
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
"#;

/// Two identical trainers (same seed, same shards): `steady` runs through, `killed` is killed.
fn topology() -> String {
    let trainer = |name: &str| {
        format!(
            r#"
[processors.{name}]
type = "trainer"
inputs = ["shards"]
outputs = {{ checkpoints = "checkpoints", metrics = "train-metrics" }}
[processors.{name}.settings]
student = "random"
model_config = "{{dir}}/config.json"
init_seed = 3
style = "teacher-a"
steps = 12
global_batch_rows = 4
learning_rate = 1e-2
warmup_ratio = 0.1
warmup_start_lr = 1e-3
checkpoint_every_steps = 3
checkpoint_store = "{{dir}}/checkpoints"
"#
        )
    };
    format!("{TOPICS}{}{}", trainer("steady"), trainer("killed"))
}

/// 11 shards of 5 rows (55 rows; 12 steps × 4 rows use 48): shard and batch boundaries differ,
/// so resuming mid-shard is exercised.
fn write_shards(cluster: &Cluster) -> Vec<(String, Vec<u8>)> {
    let mut records = Vec::new();
    for shard_index in 0..11i64 {
        let rows: Vec<Row<TokenizedSequence>> = (0..5)
            .map(|r| {
                let sequences: Vec<Sequence<TokenizedSequence>> = (0..3)
                    .map(|s| {
                        let seed = (shard_index * 15 + r * 3 + s) as u32;
                        let len = 8 + (seed % 7) as usize;
                        let input_ids: Vec<u32> = (0..len as u32).map(|i| (seed + i) % 32).collect();
                        let loss_mask = (0..len).map(|i| u8::from(i >= 3)).collect();
                        Sequence {
                            tokens: len,
                            item: TokenizedSequence { question_id: format!("q{seed}"), input_ids, loss_mask },
                        }
                    })
                    .collect();
                Row { tokens: sequences.iter().map(|s| s.tokens).sum(), sequences }
            })
            .collect();
        records.push(distillery_tests::records::shard(cluster.dir.path(), shard_index, &rows, 64));
    }
    records
}

fn events(cluster: &Cluster, run: &str) -> Vec<CheckpointEvent> {
    let run = format!("trainer/{run}");
    cluster
        .read("checkpoints")
        .iter()
        .map(|r| decode::<CheckpointEvent>(&r.payload).unwrap())
        .filter(|e| e.run == run)
        .collect()
}

fn metrics(cluster: &Cluster, run: &str) -> Vec<TrainMetrics> {
    let run = format!("trainer/{run}");
    cluster
        .read("train-metrics")
        .iter()
        .map(|r| decode::<TrainMetrics>(&r.payload).unwrap())
        .filter(|m| m.run == run)
        .collect()
}

fn final_event(cluster: &Cluster, run: &str) -> Option<CheckpointEvent> {
    events(cluster, run).into_iter().find(|e| e.is_final)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_trainer_resumes_to_bit_identical_weights() {
    let cluster = Cluster::start(&topology()).await;
    let config = serde_json::json!({
        "vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": false,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "model_type": "llama"
    });
    std::fs::write(cluster.path("config.json"), config.to_string()).unwrap();
    let shards = write_shards(&cluster);
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("shards"), &shards).await.unwrap();

    let mut steady = cluster.spawn("steady", "0");
    let mut killed = cluster.spawn("killed", "0");
    // Kill it twice: once after its first checkpoint, once after its second.
    for checkpoints in [1, 2] {
        wait_until("a checkpoint of the killed trainer", Duration::from_secs(120), || {
            events(&cluster, "killed").len() >= checkpoints
        });
        killed.kill9();
        killed = cluster.spawn("killed", "0");
    }
    wait_until("both trainers finished", Duration::from_secs(180), || {
        final_event(&cluster, "steady").is_some() && final_event(&cluster, "killed").is_some()
    });
    assert!(steady.terminate().success());
    assert!(killed.terminate().success());
    assert!(killed.log().contains("resuming from checkpoint"), "{}", killed.log());

    let (a, b) = (final_event(&cluster, "steady").unwrap(), final_event(&cluster, "killed").unwrap());
    assert_eq!((a.step, b.step), (STEPS, STEPS));
    assert_eq!(a.consumed[0].next_offset, b.consumed[0].next_offset);
    assert_eq!(a.consumed[0].next_offset, 9, "48 rows of 5-row shards: 9 shards done, 3 rows of the 10th");
    let read = |uri: &str, file: &str| std::fs::read(format!("{uri}/{file}")).unwrap();
    assert_eq!(read(&a.uri, "model.safetensors"), read(&b.uri, "model.safetensors"), "bit-identical weights");
    assert_eq!(read(&a.uri, "optimizer.safetensors"), read(&b.uri, "optimizer.safetensors"));
    let state = |uri: &str| serde_json::from_slice::<serde_json::Value>(&read(uri, "trainer_state.json")).unwrap();
    assert_eq!(state(&a.uri)["shard_ids"], state(&b.uri)["shard_ids"], "the same shard sequence");
    assert_eq!(state(&a.uri)["shard_ids"].as_array().unwrap().len(), 10);

    // Every step's metrics: one id per step; a redone step repeats the same loss exactly.
    let by_step = |run: &str| {
        let mut steps = BTreeMap::<i64, Vec<f64>>::new();
        for m in metrics(&cluster, run) {
            assert_eq!(m.id, stable_id(&[&m.run, &m.step.to_string()]));
            steps.entry(m.step).or_default().push(m.loss);
        }
        steps
    };
    let (steady_steps, killed_steps) = (by_step("steady"), by_step("killed"));
    assert_eq!(steady_steps.keys().copied().collect::<Vec<_>>(), (1..=STEPS).collect::<Vec<_>>());
    assert_eq!(killed_steps.keys().copied().collect::<Vec<_>>(), (1..=STEPS).collect::<Vec<_>>());
    for (step, losses) in &killed_steps {
        assert!(losses.iter().all(|l| *l == steady_steps[step][0]), "step {step}: {losses:?}");
    }
    let first = steady_steps[&1][0];
    let last = steady_steps[&STEPS][0];
    assert!(last < first, "the loss falls: {first} -> {last}");
    // Checkpoints are complete where their events point, in Hugging Face layout.
    for event in events(&cluster, "killed") {
        for file in ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
            assert!(std::path::Path::new(&format!("{}/{file}", event.uri)).exists(), "{} has {file}", event.uri);
        }
    }
    eprintln!("loss {first:.4} -> {last:.4}; killed trainer's metric records: {}", metrics(&cluster, "killed").len());
}
