//! Dead letters: malformed Avro, a record the processor rejects, and a dataset row without an
//! answer each land in the dead-letter topic with their reason and original bytes, and the
//! processor keeps running (records after them are still processed, a 300 KB one included).
//! Its Prometheus endpoint counts all of it.

use distillery_runtime::bench::produce_all;
use distillery_runtime::publisher::{HEADER_ERROR, HEADER_ERROR_CLASS, HEADER_SOURCE_OFFSET, HEADER_SOURCE_TOPIC};
use distillery_schemas::{decode, encode, DeadLetter, ErrorClass};
use distillery_tests::{feeder_and_copy, free_port, http_get, question, wait_until, Cluster};
use std::time::Duration;

fn topology() -> String {
    feeder_and_copy(
        "dlq",
        1,
        r#"[{ uri = "{dir}/rows.jsonl", format = "aime", dataset = "dlq" }]"#,
        r#"settings = { reject_problems_containing = "REJECT-ME" }"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_records_become_dead_letters_and_processing_goes_on() {
    let cluster = Cluster::start(&topology()).await;
    std::fs::write(
        cluster.path("rows.jsonl"),
        "{\"id\": \"1\", \"problem\": \"What is 1+1?\", \"answer\": \"2\"}\n{\"id\": \"2\", \"problem\": \"No answer here\"}\n",
    )
    .unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut copy = cluster.spawn_with("copy", "0", &["--metrics-addr", &metrics_addr], &[]);
    let feeder_log = cluster.run_source("feeder");
    assert!(feeder_log.contains("published: 1") && feeder_log.contains("dead_lettered: 1"), "{feeder_log}");

    // Straight into the input topic: garbage bytes, a rejected question, then a good one.
    let garbage = b"\x00\x01definitely not avro".to_vec();
    let rejected = encode(&question("dlq:rejected", "Please REJECT-ME")).unwrap();
    // Reasoning traces reach 130 KB; records well past that must flow too.
    let large_problem = format!("Still processed? {}", "a long trace ".repeat(25_000));
    let good = encode(&question("dlq:after", &large_problem)).unwrap();
    assert!(good.len() > 300_000);
    produce_all(
        &cluster.connection(),
        &cluster.topology.topic_name("questions"),
        &[garbage.clone(), rejected.clone(), good],
    )
    .await
    .unwrap();

    wait_until("both good questions copied", Duration::from_secs(60), || cluster.read("copies").len() == 2);
    wait_until("three dead letters", Duration::from_secs(30), || cluster.read("dead-letters").len() == 3);
    assert!(copy.is_running(), "the processor survived its bad input");
    let copied: Vec<String> = cluster.read("copies").iter().map(|r| r.id().unwrap().to_string()).collect();
    assert!(copied.contains(&"dlq:after".to_string()) && copied.contains(&"dlq:1".to_string()), "{copied:?}");

    let records = cluster.read("dead-letters");
    let letters: Vec<DeadLetter> = records.iter().map(|r| decode(&r.payload).unwrap()).collect();
    let by_processor = |p: &str| letters.iter().filter(|l| l.processor == p).collect::<Vec<_>>();

    let feeder = by_processor("feeder");
    assert_eq!(feeder.len(), 1);
    assert_eq!(feeder[0].error, "row 1: row has no expected answer");
    assert_eq!(feeder[0].error_class, ErrorClass::User);
    assert!(feeder[0].source_topic.ends_with("rows.jsonl") && feeder[0].source_offset == 1);

    let copy_letters = by_processor("copy");
    assert_eq!(copy_letters.len(), 2);
    let undecodable = copy_letters.iter().find(|l| l.original == garbage).expect("the garbage is kept byte for byte");
    assert!(undecodable.error.starts_with("cannot decode the record as question:"), "{}", undecodable.error);
    assert_eq!(undecodable.source_topic, "dlq.questions");
    let refused = copy_letters.iter().find(|l| l.original == rejected).unwrap();
    assert_eq!(refused.error, "problem contains the rejected marker \"REJECT-ME\"");
    assert_eq!(refused.key.as_deref(), Some("k1"));
    assert_eq!(refused.source_offset, undecodable.source_offset + 1);

    // The same facts are in the headers, for triage without decoding.
    let header_record = records.iter().find(|r| r.payload == encode(*refused).unwrap()).unwrap();
    assert_eq!(header_record.header(HEADER_ERROR), Some(refused.error.as_str()));
    assert_eq!(header_record.header(HEADER_ERROR_CLASS), Some("USER"));
    assert_eq!(header_record.header(HEADER_SOURCE_TOPIC), Some("dlq.questions"));
    assert_eq!(header_record.header(HEADER_SOURCE_OFFSET), Some(refused.source_offset.to_string().as_str()));

    wait_until("offsets committed past the bad records", Duration::from_secs(30), || cluster.lag("copy") == 0);

    // Metrics: records in/out, dead letters by class, latency, in flight, and consumer lag
    // (from librdkafka's statistics, every 5 s).
    let mut metrics = String::new();
    wait_until("the consumer-lag gauge", Duration::from_secs(20), || {
        metrics = http_get(metrics_port, "/metrics").unwrap_or_default();
        metrics.contains("distillery_consumer_lag{")
    });
    let value = |prefix: &str| -> f64 {
        let line =
            metrics.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("distillery_records_in_total{processor=\"copy\",topic=\"dlq.questions\"}"), 4.0);
    assert_eq!(value("distillery_records_out_total{processor=\"copy\",topic=\"dlq.copies\"}"), 2.0);
    assert_eq!(value("distillery_records_dead_lettered_total{processor=\"copy\",class=\"USER\"}"), 2.0);
    assert_eq!(value("distillery_in_flight{processor=\"copy\"}"), 0.0);
    assert!(metrics.contains("distillery_process_seconds_bucket{processor=\"copy\""), "{metrics}");
    assert!(copy.terminate().success());
}
