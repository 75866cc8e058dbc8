//! The torch trainer engine end to end: feeder -> two replay teachers -> judge -> agreement ->
//! two packers (shards in S3) -> trainer-gpt-oss on the torch engine (PyTorch FSDP2, two
//! ranks under torchrun, started by `distillery run`) beside trainer-deepseek-r1 on the candle
//! engine -> the evaluator (in process) on both students' checkpoints -> `distillery report`,
//! whose Table 1 shows the torch student. Every processor is its own `distillery run` process
//! over the local broker and a local S3 server (moto), as in `tests/compose_cpu.rs`.

use distillery_schemas::{decode, CheckpointEvent, EvalResult, TrainMetrics};
use distillery_tests::{distillery_bin, repo_root, venv_python, wait_until, Cluster, S3Server};
use std::collections::BTreeSet;
use std::time::Duration;

/// The torch student's run name, `{experiment}/{processor}` as for every trainer.
const TORCH_RUN: &str = "torch-e2e/trainer-gpt-oss";

/// A tiny random-init Llama for the student tokenizer shipped in topology/data/student (GPT-2's
/// 50,257 tokens plus 3 added ones): the candle engine's `tiny` preset as a Hugging Face config.
const TINY_LLAMA: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 50260,
  "hidden_size": 64,
  "intermediate_size": 128,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "max_position_embeddings": 8192,
  "hidden_act": "silu",
  "torch_dtype": "float32"
}"#;

/// compose-cpu.toml with trainer-gpt-oss moved to the torch engine on two ranks.
fn topology(config_json: &std::path::Path) -> String {
    let text = std::fs::read_to_string(repo_root().join("topology/compose-cpu.toml")).unwrap();
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    table["experiment"] = "torch-e2e".into();
    let settings = table["processors"]["trainer-gpt-oss"]["settings"].as_table().unwrap().clone();
    let mut settings = settings;
    settings.insert("engine".into(), "torch".into());
    // Two rows a step, so each of the two ranks trains one.
    settings.insert("global_batch_rows".into(), 2.into());
    settings.insert("model_config".into(), config_json.display().to_string().into());
    settings.insert("checkpoint_store".into(), "s3://distillery/torch-e2e/checkpoints".into());
    let torch: toml::Table = toml::from_str(&format!(
        r#"python = "{}"
        nproc_per_node = 2
        shutdown_timeout_secs = 60"#,
        venv_python().display()
    ))
    .unwrap();
    settings.insert("torch".into(), torch.into());
    table["processors"].as_table_mut().unwrap()["trainer-gpt-oss"].as_table_mut().unwrap()["settings"] =
        settings.into();
    for style in ["gpt-oss", "deepseek-r1"] {
        table["processors"].as_table_mut().unwrap()[&format!("packer-{style}")].as_table_mut().unwrap()["settings"]
            .as_table_mut()
            .unwrap()
            .insert("store".into(), format!("s3://distillery/torch-e2e/shards/{style}").into());
    }
    table["processors"].as_table_mut().unwrap()["trainer-deepseek-r1"].as_table_mut().unwrap()["settings"]
        .as_table_mut()
        .unwrap()
        .insert("checkpoint_store".into(), "s3://distillery/torch-e2e/checkpoints".into());
    toml::to_string(&table).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torch_student_trains_on_two_ranks_in_the_stream_and_is_evaluated_and_reported() {
    let started = std::time::Instant::now();
    let s3 = S3Server::start("distillery");
    let env = s3.env();
    for (key, value) in &env {
        std::env::set_var(key, value);
    }
    // The ranks import this checkout's engine (not whatever the virtualenv has installed).
    let engine_src = repo_root().join("processors/trainer-torch/src").display().to_string();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("PYTHONPATH", &engine_src));

    let config_dir = tempfile::tempdir().unwrap();
    let config_json = config_dir.path().join("config.json");
    std::fs::write(&config_json, TINY_LLAMA).unwrap();
    let cluster = Cluster::start(&topology(&config_json)).await;

    let mut procs: Vec<_> = cluster
        .topology
        .processors
        .iter()
        .filter(|(_, p)| !p.inputs.is_empty())
        .map(|(name, _)| (name.clone(), cluster.spawn_with(name, "0", &[], &env)))
        .collect();
    let feeder = cluster.run_source_with_env("feeder", &env);
    assert!(feeder.contains("published: 60"), "{feeder}");

    // Both students train and write a final checkpoint (the trainers stop when shards stop
    // coming), the torch one from two ranks.
    let checkpoints = || -> Vec<CheckpointEvent> {
        cluster.read("checkpoints").iter().map(|r| decode::<CheckpointEvent>(&r.payload).unwrap()).collect()
    };
    wait_until("a final checkpoint of each student", Duration::from_secs(900), || {
        checkpoints().iter().filter(|c| c.is_final).map(|c| c.run.clone()).collect::<BTreeSet<_>>().len() == 2
    });
    eprintln!("final checkpoints after {:.0}s", started.elapsed().as_secs_f64());
    let torch_log = procs.iter().find(|(name, _)| name == "trainer-gpt-oss").unwrap().1.log();
    assert!(torch_log.contains("-m torch.distributed.run --nproc_per_node=2"), "{torch_log}");
    assert!(torch_log.contains("on 2 rank(s)"), "the engine trained on two ranks: {torch_log}");
    let torch_checkpoints: Vec<_> = checkpoints().into_iter().filter(|c| c.run == TORCH_RUN).collect();
    assert!(!torch_checkpoints.is_empty());
    for checkpoint in &torch_checkpoints {
        assert!(checkpoint.uri.starts_with("s3://distillery/torch-e2e/checkpoints"), "{}", checkpoint.uri);
        assert_eq!(checkpoint.style, "gpt-oss-120b");
        // The Hugging Face export: a config, an index and the safetensors it lists.
        let index = distillery_runtime::objects::get_bytes(&format!("{}/model.safetensors.index.json", checkpoint.uri))
            .await
            .unwrap_or_else(|e| panic!("{}: no safetensors index: {e}", checkpoint.uri));
        let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
        let files: BTreeSet<&str> =
            index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
        for file in files {
            assert!(!distillery_runtime::objects::get_bytes(&format!("{}/{file}", checkpoint.uri))
                .await
                .unwrap()
                .is_empty());
        }
        assert!(!distillery_runtime::objects::get_bytes(&format!("{}/config.json", checkpoint.uri))
            .await
            .unwrap()
            .is_empty());
    }
    // Every step of the torch student has its metrics record, with a finite loss.
    let torch_metrics: Vec<TrainMetrics> = cluster
        .read("train-metrics")
        .iter()
        .map(|r| decode::<TrainMetrics>(&r.payload).unwrap())
        .filter(|m| m.run == TORCH_RUN)
        .collect();
    let last_step = torch_checkpoints.iter().map(|c| c.step).max().unwrap();
    let steps: BTreeSet<i64> = torch_metrics.iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=last_step).collect(), "one metrics record per step");
    assert!(torch_metrics.iter().all(|m| m.loss.is_finite() && m.loss > 0.0));

    // The evaluator scores both students' final checkpoints.
    let evaluated = || -> BTreeSet<String> {
        cluster.read("eval-results").iter().map(|r| decode::<EvalResult>(&r.payload).unwrap().run).collect()
    };
    wait_until("eval results of both students", Duration::from_secs(600), || evaluated().len() == 2);
    assert_eq!(cluster.read("dead-letters").len(), 0, "no dead letters");
    eprintln!("evaluated after {:.0}s", started.elapsed().as_secs_f64());

    // The report's Table 1 has the torch student's row beside the candle student's.
    let out = cluster.path("report");
    let report = std::process::Command::new(distillery_bin())
        .current_dir(repo_root())
        .args(["report", "--topology"])
        .arg(&cluster.topology_path)
        .args(["--bootstrap-servers", &cluster.broker.bootstrap_servers(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    let row = |run: &str, style: &str| markdown.lines().any(|l| l.starts_with(&format!("| {run} | {style} |")));
    assert!(row(TORCH_RUN, "gpt-oss-120b"), "{markdown}");
    assert!(row("torch-e2e/trainer-deepseek-r1", "deepseek-r1"), "{markdown}");

    for (name, proc) in &mut procs {
        if proc.is_running() {
            assert!(proc.terminate().success(), "{name}: {}", proc.log());
        }
    }
}

/// Processes whose command line contains every one of `needles` (the torch engine's ranks and
/// torchrun carry the trainer's name and this test's broker address).
fn processes_with(needles: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            needles.iter().all(|n| cmdline.contains(n)).then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn distillery_run_forwards_sigterm_to_the_ranks_and_a_sigkill_takes_them_down() {
    let config_dir = tempfile::tempdir().unwrap();
    let config_json = config_dir.path().join("config.json");
    std::fs::write(&config_json, TINY_LLAMA).unwrap();
    let cluster = Cluster::start(&format!(
        r#"
experiment = "torch-launch"
[topics."shards.x"]
schema = "shard_manifest"
partitions = 1
external = true
[topics.checkpoints]
schema = "checkpoint_event"
partitions = 1
[topics.train-metrics]
schema = "train_metrics"
partitions = 1

[processors.trainer-x]
type = "trainer"
inputs = ["shards.x"]
outputs = {{ checkpoints = "checkpoints", metrics = "train-metrics" }}
[processors.trainer-x.settings]
engine = "torch"
student = "random"
model_config = "{config}"
style = "x"
steps = 10
global_batch_rows = 2
checkpoint_store = "{{dir}}/checkpoints"
torch = {{ python = "{python}", nproc_per_node = 2, shutdown_timeout_secs = 60 }}
"#,
        config = config_json.display(),
        python = venv_python().display(),
    ))
    .await;
    let engine_src = repo_root().join("processors/trainer-torch/src").display().to_string();
    let env = [("PYTHONPATH", engine_src.as_str())];
    let bootstrap = cluster.broker.bootstrap_servers();
    let ranks = || processes_with(&["distillery_torch", "--processor trainer-x", &bootstrap]);

    // SIGTERM to `distillery run`: forwarded, the ranks stop (no shard has come: nothing to
    // checkpoint), and the run exits 0 although torchrun itself exits 1 after a signal.
    let mut trainer = cluster.spawn_with("trainer-x", "0", &[], &env);
    wait_until("both ranks up", Duration::from_secs(180), || trainer.log().contains("on 2 rank(s)"));
    assert!(!ranks().is_empty());
    let status = trainer.terminate();
    let log = trainer.log();
    assert!(status.success(), "{log}");
    assert!(log.contains("forwarding signal 15 to the torch engine"), "{log}");
    assert_eq!(log.matches("forwarding signal").count(), 1, "one SIGTERM is forwarded once: {log}");
    wait_until("no rank left after SIGTERM", Duration::from_secs(30), || ranks().is_empty());

    // SIGKILL of `distillery run`: torchrun gets SIGKILL from the kernel (parent-death signal)
    // and its ranks follow it the same way: nothing keeps training on its own.
    let mut trainer = cluster.spawn_with("trainer-x", "1", &[], &env);
    wait_until("both ranks up again", Duration::from_secs(180), || trainer.log().contains("on 2 rank(s)"));
    assert!(ranks().len() >= 3, "torchrun and two ranks: {:?}", ranks());
    trainer.kill9();
    wait_until("no rank left after SIGKILL", Duration::from_secs(30), || ranks().is_empty());
}
