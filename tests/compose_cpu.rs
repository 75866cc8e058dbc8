//! docker-compose.yml's `cpu` profile as CI can run it. CI has no Docker and cannot pull the
//! images, so the same flow runs here on the same topology (topology/compose-cpu.toml), one
//! `distillery run NAME` process per compose service, with the local broker standing in for
//! Kafka and a local S3 server (moto) for MinIO: feeder -> two replay teachers -> judge ->
//! agreement -> two packers (shards in S3) -> two tiny students (checkpoints in S3) ->
//! evaluator. (`.ci/check-compose` checks that the compose file runs exactly these processors.)

use distillery_runtime::objects::get_bytes;
use distillery_schemas::{decode, AgreedSample, CheckpointEvent, EvalResult, ShardManifest};
use distillery_tests::{free_port, http_get, repo_root, wait_until, Cluster, S3Server};
use std::collections::BTreeSet;
use std::time::Duration;

const QUESTIONS: usize = 60;

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_cpu_flow_runs_over_the_local_broker_and_s3() {
    let started = std::time::Instant::now();
    let s3 = S3Server::start("distillery");
    let env = s3.env();
    for (key, value) in &env {
        std::env::set_var(key, value);
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let text = std::fs::read_to_string(repo_root().join("topology/compose-cpu.toml")).unwrap();
    let cluster = Cluster::start(&text).await;

    // Consumers first, as compose starts them (all after topology-apply). The judge serves
    // metrics as every container does for Prometheus (DISTILLERY_METRICS_ADDR; loopback here).
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut procs: Vec<_> = cluster
        .topology
        .processors
        .iter()
        .filter(|(_, p)| !p.inputs.is_empty())
        .map(|(name, _)| {
            let mut env = env.clone();
            if name == "judge" {
                env.push(("DISTILLERY_METRICS_ADDR", &metrics_addr));
            }
            (name.clone(), cluster.spawn_with(name, "0", &[], &env))
        })
        .collect();
    let feeder = cluster.run_source_with_env("feeder", &env);
    assert!(feeder.contains(&format!("published: {QUESTIONS}")), "{feeder}");

    let count = |topic: &str| cluster.read(topic).len();
    wait_until("both teachers sampled and judged everything", Duration::from_secs(120), || {
        count("judged") >= 2 * QUESTIONS
    });
    wait_until("every question decided", Duration::from_secs(60), || count("agreed") + count("rejected") >= QUESTIONS);
    let metrics = http_get(metrics_port, "/metrics").unwrap();
    assert!(metrics.contains("distillery_records_in_total"), "{metrics}");
    let agreed: BTreeSet<String> =
        cluster.read("agreed").iter().map(|r| decode::<AgreedSample>(&r.payload).unwrap().question_id).collect();
    assert!(!agreed.is_empty(), "some questions both teachers solved");
    assert!(count("rejected") > 0, "the terse teacher's wrong answers are rejected");
    assert_eq!(agreed.len() + count("rejected"), QUESTIONS);
    eprintln!("decided after {:.0}s", started.elapsed().as_secs_f64());

    // Each packer's shards are in S3, whole, before their manifests.
    for style in ["gpt-oss", "deepseek-r1"] {
        let topic = format!("shards.{style}");
        wait_until(&format!("{topic} manifests"), Duration::from_secs(120), || count(&topic) > 0);
        for record in cluster.read(&topic) {
            let manifest: ShardManifest = decode(&record.payload).unwrap();
            assert!(
                manifest.uri.starts_with(&format!("s3://distillery/compose-cpu/shards/{style}/")),
                "{}",
                manifest.uri
            );
            assert!(!get_bytes(&manifest.uri).await.unwrap().is_empty());
        }
    }

    eprintln!("shards after {:.0}s", started.elapsed().as_secs_f64());
    // Both students train a few steps and write a final checkpoint to S3; the trainers exit.
    let finals = || -> BTreeSet<String> {
        cluster
            .read("checkpoints")
            .iter()
            .map(|r| decode::<CheckpointEvent>(&r.payload).unwrap())
            .filter(|c| c.is_final)
            .map(|c| c.style)
            .collect()
    };
    wait_until("a final checkpoint of each student", Duration::from_secs(600), || finals().len() == 2);
    for record in cluster.read("checkpoints") {
        let checkpoint: CheckpointEvent = decode(&record.payload).unwrap();
        assert!(checkpoint.uri.starts_with("s3://distillery/compose-cpu/checkpoints"), "{}", checkpoint.uri);
    }
    assert!(!cluster.read("train-metrics").is_empty());
    eprintln!("checkpoints after {:.0}s", started.elapsed().as_secs_f64());

    // The evaluator scores the final checkpoints on the GSM8K head.
    wait_until("eval results of both final checkpoints", Duration::from_secs(600), || {
        let results: BTreeSet<String> = cluster
            .read("eval-results")
            .iter()
            .map(|r| decode::<EvalResult>(&r.payload).unwrap())
            .filter(|r| r.benchmark == "gsm8k")
            .map(|r| r.style)
            .collect();
        results.len() == 2
    });
    assert_eq!(count("dead-letters"), 0, "no dead letters");
    eprintln!("evaluated after {:.0}s", started.elapsed().as_secs_f64());
    for (name, proc) in &mut procs {
        if proc.is_running() {
            assert!(proc.terminate().success(), "{name}: {}", proc.log());
        }
    }
}
