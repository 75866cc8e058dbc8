//! The packer over a real broker and a local object store: 200 agreed samples rendered with
//! Nemotron-Nano-v2's chat template, tokenized, packed by online FFD into rows and shards,
//! with the packer killed (SIGKILL) mid-stream and restarted. Every question ends up in
//! exactly one published shard; every manifest points at a complete shard whose checksum,
//! counts and masks match.

use distillery_packer::shard::{read_shard, ShardFileManifest};
use distillery_runtime::bench::produce_keyed;
use distillery_schemas::{decode, ShardManifest};
use distillery_tests::records::{agreed_sample, write_student};
use distillery_tests::{venv_python, wait_until, Cluster};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;

const SAMPLES: usize = 200;

const TOPOLOGY: &str = r#"
experiment = "packer"
[topics.agreed]
schema = "agreed_sample"
partitions = 2
external = true
[topics."shards.a"]
schema = "shard_manifest"
partitions = 1

[processors.packer-a]
type = "packer"
inputs = ["agreed"]
outputs = { shards = "shards.a" }
runtime = { max_in_flight = 1, commit_interval_ms = 100, session_timeout_ms = 1000 }
[processors.packer-a.settings]
style = "teacher-a"
tokenizer = "{dir}/tokenizer.json"
tokenizer_config = "{dir}/tokenizer_config.json"
store = "{dir}/shards"
row_tokens = 4096
rows_per_shard = 4
window_sequences = 16
max_open_rows = 4
flush_idle_secs = 2
"#;

/// The published manifests, de-duplicated by id.
fn manifests(cluster: &Cluster) -> BTreeMap<String, ShardManifest> {
    cluster
        .read("shards.a")
        .iter()
        .map(|r| decode::<ShardManifest>(&r.payload).unwrap())
        .map(|m| (m.id.clone(), m))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_question_lands_in_exactly_one_complete_shard_despite_a_kill() {
    let cluster = Cluster::start(TOPOLOGY).await;
    write_student(cluster.dir.path());

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let records: Vec<_> = (0..SAMPLES).map(|i| agreed_sample(i, rng.gen_range(5..60))).collect();
    let topic = cluster.topology.topic_name("agreed");
    let mut packer = cluster.spawn("packer-a", "0");
    produce_keyed(&cluster.connection(), &topic, &records[..SAMPLES / 2]).await.unwrap();
    wait_until("some shards", Duration::from_secs(60), || !cluster.read("shards.a").is_empty());
    packer.kill9();
    packer = cluster.spawn("packer-a", "0");
    produce_keyed(&cluster.connection(), &topic, &records[SAMPLES / 2..]).await.unwrap();
    let covered = |cluster: &Cluster| manifests(cluster).values().map(|m| m.question_ids.len()).sum::<usize>();
    wait_until("every question packed (the last shard after the idle flush)", Duration::from_secs(90), || {
        covered(&cluster) >= SAMPLES
    });
    assert!(packer.terminate().success());
    assert!(packer.log().contains("learned"), "the restarted packer read the published manifests: {}", packer.log());

    let manifests = manifests(&cluster);
    let mut packed = BTreeMap::<String, usize>::new();
    for m in manifests.values() {
        for q in &m.question_ids {
            *packed.entry(q.clone()).or_default() += 1;
        }
        // The shard is complete, matches its checksum, and its counts and masks add up.
        let bytes = std::fs::read(&m.uri).unwrap();
        let shard = read_shard(&bytes, Some(&m.sha256)).unwrap();
        assert_eq!(shard.input_ids.len() as i64, m.tokens);
        assert_eq!(shard.loss_mask.iter().filter(|&&b| b == 1).count() as i64, m.completion_tokens);
        assert_eq!(shard.cu_seqlens.len() - 1, m.sequences as usize);
        assert_eq!(shard.row_offsets.len() - 1, m.rows as usize);
        assert!(shard.row_offsets.windows(2).all(|w| (w[1] - w[0]) <= m.row_capacity), "no row overflows");
        let side: ShardFileManifest = serde_json::from_slice(&std::fs::read(&m.manifest_uri).unwrap()).unwrap();
        assert_eq!(side.sha256, m.sha256);
        assert!(m.fill_ratio > 0.0 && m.fill_ratio <= 1.0);
    }
    // Python reads a shard without this project (safetensors + numpy) and checks the masks:
    // positions restart at every sequence, and each sequence's loss mask is one suffix.
    let check = r#"
import sys
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
ids, mask, pos, cu, rows = t["input_ids"], t["loss_mask"], t["position_ids"], t["cu_seqlens"], t["row_offsets"]
assert ids.shape == mask.shape == pos.shape and cu[0] == 0 and cu[-1] == len(ids) == rows[-1]
for s, e in zip(cu[:-1], cu[1:]):
    assert (pos[s:e] == range(e - s)).all()
    m = mask[s:e]
    first = int(m.argmax())
    assert m[first:].all() and not m[:first].any() and m.any()
print("ok", len(cu) - 1)
"#;
    for m in manifests.values().take(3) {
        let out = std::process::Command::new(venv_python())
            .args(["-c", check, &m.uri])
            .output()
            .expect("run python (.ci/install-tools)");
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ok {}", m.sequences));
    }
    // NeMo's packed layout: np.load gives one dict per row.
    let npy = cluster.path("packed.npy");
    let export = std::process::Command::new(distillery_tests::distillery_bin())
        // From the topic: a shard the killed packer uploaded but never published is not data.
        .args(["export", "nemo", "--topic", "shards.a", "--topology"])
        .arg(&cluster.topology_path)
        .args(["--bootstrap-servers", &cluster.broker.bootstrap_servers(), "--out"])
        .arg(&npy)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let rows: i32 = manifests.values().map(|m| m.rows).sum();
    let check = r#"
import json, sys
import numpy as np
packs = np.load(sys.argv[1], allow_pickle=True)
assert all(p["seq_start_id"][0] == 0 for p in packs)
assert all(len(p["input_ids"]) == len(p["loss_mask"]) for p in packs)
meta = json.load(open(sys.argv[1][:-4] + ".metadata.json"))
print(len(packs), sum(len(p["seq_start_id"]) for p in packs), meta[0]["pack_size"])
"#;
    let out = std::process::Command::new(venv_python()).args(["-c", check]).arg(&npy).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let total_sequences: i32 = manifests.values().map(|m| m.sequences).sum();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{rows} {total_sequences} 4096"));
    assert_eq!(packed.len(), SAMPLES, "every question packed");
    assert!(
        packed.values().all(|&n| n == 1),
        "no question in two shards: {:?}",
        packed.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let fill: f64 = manifests.values().map(|m| m.tokens as f64).sum::<f64>()
        / manifests.values().map(|m| (m.rows * m.row_capacity) as f64).sum::<f64>();
    eprintln!(
        "{} shards, {} rows, overall fill {:.3}",
        manifests.len(),
        manifests.values().map(|m| m.rows).sum::<i32>(),
        fill
    );
}
