//! The torch trainer engine (`processors/trainer-torch`, Python) inside `cargo nextest run
//! --workspace`: its own pytest suite, one test here per pytest file, and the Avro records it
//! writes and reads, byte for byte against the Rust codec in both directions.

use distillery_schemas::codec::encode_with_schema;
use distillery_schemas::*;
use distillery_tests::{distillery_bin, repo_root, venv_python};
use std::io::Write;
use std::process::{Command, Stdio};

/// `python ARGS` with this checkout's `distillery_torch` first on the path (not whatever the
/// virtualenv has installed), from the repository root.
fn python(args: &[&str]) -> Command {
    let mut command = Command::new(venv_python());
    command
        .args(args)
        .current_dir(repo_root())
        .env("PYTHONPATH", repo_root().join("processors/trainer-torch/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The suite runs the candle trainer for its parity test: this build's binary.
        .env("DISTILLERY_BIN", distillery_bin());
    command
}

/// Runs one pytest file of the engine's suite; its output is shown when it fails.
fn pytest(file: &str) {
    let output =
        python(&["-m", "pytest", "-q", "-p", "no:cacheprovider", &format!("processors/trainer-torch/tests/{file}")])
            .output()
            .expect("run pytest in the project's virtualenv (run .ci/install-tools)");
    let log = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "pytest {file} failed:\n{log}");
    // A suite that collected nothing (or skipped its tests) proves nothing.
    assert!(log.contains(" passed"), "pytest {file} ran no test:\n{log}");
    assert!(!log.contains(" skipped"), "pytest {file} skipped tests:\n{log}");
}

macro_rules! pytest_files {
    ($($name:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $name() {
                pytest($file);
            }
        )*

        #[test]
        fn every_pytest_file_of_the_engine_runs_here() {
            let listed: std::collections::BTreeSet<&str> = [$($file),*].into_iter().collect();
            let present: std::collections::BTreeSet<String> =
                std::fs::read_dir(repo_root().join("processors/trainer-torch/tests"))
                    .unwrap()
                    .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("test_") && name.ends_with(".py"))
                    .collect();
            let present: std::collections::BTreeSet<&str> = present.iter().map(String::as_str).collect();
            assert_eq!(listed, present, "list every pytest file in tests/torch_engine.rs");
        }
    };
}

pytest_files! {
    pytest_avro_codec => "test_avro.py",
    pytest_settings => "test_settings.py",
    pytest_step_plans => "test_plan.py",
    pytest_types => "test_types.py",
    pytest_isolation_of_packed_sequences => "test_isolation.py",
    pytest_world_sizes_one_and_two_agree => "test_world_sizes.py",
    pytest_kill_nine_and_resume_is_bit_identical => "test_kill_resume.py",
    pytest_feed_dedup_and_bad_shards => "test_feed.py",
    pytest_trainer_contract_broker_outage_and_lost_position => "test_contract.py",
    pytest_nemotron_h_packed => "test_nemotron_h.py",
    pytest_bench => "test_bench.py",
    pytest_gpu_check_dry_run => "test_gpu_check.py",
    pytest_a_two_rank_checkpoint_resumes_on_one_rank => "test_reshard.py",
}

/// `python -m distillery_torch.avro ARGS` on `input`.
fn codec(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = python(&[&["-m", "distillery_torch.avro"], args].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Python codec");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "distillery_torch.avro {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// Python's reading of `payload` as a record of `kind` (resolved into the current schema).
fn python_decode(payload: &[u8], kind: RecordKind) -> serde_json::Value {
    let decoded: serde_json::Value = serde_json::from_slice(&codec(&["decode", kind.name()], payload)).unwrap();
    assert_eq!(decoded["kind"], kind.name(), "the header names the kind");
    decoded["record"].clone()
}

/// Rust writes, Python reads and writes the same record again: the bytes are identical, and
/// Rust reads Python's bytes back into the same record.
fn same_bytes_both_ways<R: Record + PartialEq + std::fmt::Debug>(record: R) {
    let rust_bytes = encode(&record).unwrap();
    let record_json = python_decode(&rust_bytes, R::KIND);
    let python_bytes = codec(&["encode", R::KIND.name()], record_json.to_string().as_bytes());
    assert_eq!(python_bytes, rust_bytes, "{}: Python's encoding differs from Rust's", R::KIND.name());
    assert_eq!(decode::<R>(&python_bytes).unwrap(), record);
    // And from Rust's own JSON of the record, not only Python's.
    let from_rust_json = codec(&["encode", R::KIND.name()], serde_json::to_string(&record).unwrap().as_bytes());
    assert_eq!(from_rust_json, rust_bytes, "{}: Python's encoding of Rust's JSON differs", R::KIND.name());
}

#[test]
fn python_and_rust_write_byte_identical_records_and_read_each_others() {
    same_bytes_both_ways(ShardManifest {
        id: "shard-9f".into(),
        style: "gpt-oss-120b".into(),
        shard_index: 3,
        uri: "s3://b/shards/gpt-oss/shard-9f.safetensors".into(),
        manifest_uri: "s3://b/shards/gpt-oss/shard-9f.json".into(),
        format: "distillery-shard-v1".into(),
        bytes: 1 << 33,
        sha256: "ab".repeat(32),
        rows: 64,
        sequences: 900,
        tokens: 3_000_000,
        completion_tokens: 2_000_000,
        row_capacity: 60_000,
        fill_ratio: 0.997,
        tokenizer_sha256: "t".into(),
        template_sha256: "c".into(),
        question_ids: vec!["q1".into(), "q2 ünïcode".into()],
        created_at_ms: 1_764_000_000_000,
    });
    same_bytes_both_ways(CheckpointEvent {
        id: "trainer-a@10".into(),
        run: "trainer-a".into(),
        style: "gpt-oss-120b".into(),
        step: 10,
        uri: "s3://b/checkpoints/trainer-a/step-00000010".into(),
        consumed: vec![ConsumedOffset { topic: "x.shards.gpt-oss".into(), partition: 0, next_offset: 11 }],
        shards_consumed: 10,
        tokens_seen: 100,
        is_final: true,
        created_at_ms: 6,
    });
    same_bytes_both_ways(TrainMetrics {
        id: "trainer-a@1".into(),
        run: "trainer-a".into(),
        style: "s".into(),
        step: 1,
        loss: 1.5,
        lr: 5e-7,
        grad_norm: f64::MIN_POSITIVE,
        tokens: 100,
        completion_tokens: 50,
        tokens_per_second: 1e4,
        created_at_ms: 7,
    });
    same_bytes_both_ways(DeadLetter {
        id: "d".into(),
        processor: "trainer-a".into(),
        error_class: ErrorClass::User,
        error: "sha256 mismatch".into(),
        source_topic: "x.shards.gpt-oss".into(),
        source_partition: 0,
        source_offset: 99,
        key: None,
        original: vec![0, 159, 255, 0xC3, 0x01],
        created_at_ms: 9,
    });
}

#[test]
fn python_reads_a_record_written_with_an_older_schema_version() {
    #[derive(serde::Serialize)]
    struct QuestionV1 {
        id: String,
        dataset: String,
        source_uri: String,
        source_row: i64,
        problem: String,
        expected_answer: String,
    }
    let old = QuestionV1 {
        id: "q1".into(),
        dataset: "math500".into(),
        source_uri: "f.jsonl".into(),
        source_row: 3,
        problem: "1+1".into(),
        expected_answer: "2".into(),
    };
    let v1 = std::fs::read_to_string(repo_root().join("schemas/history/question.v1.avsc")).unwrap();
    let bytes = encode_with_schema(RecordKind::Question, &v1, &old).unwrap();
    let json = python_decode(&bytes, RecordKind::Question);
    assert_eq!(json["id"], "q1");
    assert_eq!(json["expected_answer"], "2");
    // The field the current schema added comes with its default.
    assert_eq!(json["metadata"], serde_json::json!({}));
}
