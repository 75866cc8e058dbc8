//! The feeder reads its datasets from an object-store URL: JSONL and Parquet files uploaded
//! to a real S3-compatible server are published exactly as from local paths.

use distillery_runtime::objects::put_bytes;
use distillery_tests::{feeder_and_copy, ids_with_counts, repo_root, Cluster, S3Server};

#[tokio::test(flavor = "multi_thread")]
async fn the_feeder_reads_jsonl_and_parquet_from_s3() {
    let s3 = S3Server::start("datasets");
    let env = s3.env();
    for (key, value) in &env {
        std::env::set_var(key, value);
    }
    for name in ["nemotron-format.parquet", "plain-fields.jsonl"] {
        let bytes = std::fs::read(repo_root().join("tests/fixtures").join(name)).unwrap();
        put_bytes(&format!("s3://datasets/fixtures/{name}"), bytes).await.unwrap();
    }
    let cluster = Cluster::start(&feeder_and_copy(
        "s3input",
        2,
        r#"[
          { uri = "s3://datasets/fixtures/nemotron-format.parquet", format = "nemotron", dataset = "nemotron-format" },
          { uri = "s3://datasets/fixtures/plain-fields.jsonl", format = "fields", dataset = "plain", problem_field = "q", answer_field = "a", id_field = "key" },
        ]"#,
        "",
    ))
    .await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = cluster.run_source_with_env("feeder", &env);
    assert!(log.contains("rows: 153, published: 150, skipped: 0, dead_lettered: 3"), "{log}");
    let ids = ids_with_counts(&cluster.read("questions"));
    assert_eq!(ids.len(), 150);
    assert!(ids.values().all(|&n| n == 1));

    // A missing object is a clear error, not an empty run.
    let missing = Cluster::start(&feeder_and_copy(
        "s3missing",
        1,
        r#"[{ uri = "s3://datasets/nope.jsonl", format = "gsm8k" }]"#,
        "",
    ))
    .await;
    let mut proc = missing.spawn_with("feeder", "0", &[], &env);
    assert!(!proc.child.wait().unwrap().success());
    assert!(proc.log().contains("nope.jsonl"), "{}", proc.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_conditional_puts_never_overwrite_and_large_objects_upload_in_parts() {
    use distillery_runtime::objects::{get_bytes, put_multipart, put_new, PutNew};
    let s3 = S3Server::start("shards");
    for (key, value) in s3.env() {
        std::env::set_var(key, value);
    }
    let key = "s3://shards/style/shard-000000.safetensors";
    assert_eq!(put_new(key, b"first".to_vec()).await.unwrap(), PutNew::Created);
    assert_eq!(put_new(key, b"second".to_vec()).await.unwrap(), PutNew::AlreadyExisted);
    assert_eq!(get_bytes(key).await.unwrap(), b"first", "the existing object was not overwritten");

    // 12 MiB in 5 MiB parts.
    let big: Vec<u8> = (0..12 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    put_multipart("s3://shards/big.bin", big.clone(), 5 * 1024 * 1024).await.unwrap();
    assert_eq!(get_bytes("s3://shards/big.bin").await.unwrap(), big);
}
