//! Feeder -> pass-through over the real local broker: every row of a Nemotron-format Parquet
//! fixture and a plain JSONL fixture is published once, copied once (each record is on each
//! topic exactly once), and bad rows become dead letters with their reasons. A second feeder
//! run publishes nothing.

use distillery_runtime::admin::{apply_topology, TopicOutcome};
use distillery_schemas::{decode, DeadLetter, Question};
use distillery_tests::{feeder_and_copy, ids_with_counts, wait_until, Cluster};
use std::time::Duration;

fn topology() -> String {
    feeder_and_copy(
        "pipeline",
        4,
        r#"[
          { uri = "{repo}/tests/fixtures/nemotron-format.parquet", format = "nemotron", dataset = "nemotron-format" },
          { uri = "{repo}/tests/fixtures/plain-fields.jsonl", format = "fields", dataset = "plain", problem_field = "q", answer_field = "a", id_field = "key" },
        ]"#,
        "",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn feeder_and_passthrough_deliver_every_row_exactly_once() {
    let cluster = Cluster::start(&topology()).await;
    let mut copy = cluster.spawn("copy", "0");
    let feeder_log = cluster.run_source("feeder");
    assert!(feeder_log.contains("rows: 153, published: 150, skipped: 0, dead_lettered: 3"), "{feeder_log}");

    // The feeder's output: 100 Parquet rows + 50 JSONL rows, each id once.
    let questions = cluster.read("questions");
    let counts = ids_with_counts(&questions);
    assert_eq!(questions.len(), 150);
    assert_eq!(counts.len(), 150);
    assert_eq!(counts.keys().filter(|id| id.starts_with("nemotron-format:")).count(), 100);
    assert_eq!(counts.keys().filter(|id| id.starts_with("plain:row-")).count(), 50);
    let first: Question = decode(&questions[0].payload).unwrap();
    assert!(!first.problem.is_empty() && !first.expected_answer.is_empty());
    for record in &questions {
        let q: Question = decode(&record.payload).unwrap();
        assert_eq!(record.key.as_deref(), Some(q.id.as_str()), "keyed by question id");
    }

    // The copy holds each id exactly once after de-duplication, with identical content.
    wait_until("all copies", Duration::from_secs(60), || ids_with_counts(&cluster.read("copies")).len() == 150);
    wait_until("copy's offsets committed", Duration::from_secs(30), || cluster.lag("copy") == 0);
    let copies = cluster.read("copies");
    assert_eq!(ids_with_counts(&copies).keys().collect::<Vec<_>>(), counts.keys().collect::<Vec<_>>());
    // Exactly once, not merely every id: nothing was killed, so no copy was produced twice.
    assert_eq!(copies.len(), 150, "a copy record on the topic twice");
    for record in &copies {
        let copied: Question = decode(&record.payload).unwrap();
        let original = questions.iter().find(|q| q.id() == record.id()).unwrap();
        assert_eq!(copied, decode::<Question>(&original.payload).unwrap());
    }

    // Bad rows: dead letters naming the file, the row and the reason, with the original row.
    let letters: Vec<DeadLetter> = cluster.read("dead-letters").iter().map(|r| decode(&r.payload).unwrap()).collect();
    let mut reasons: Vec<String> = letters
        .iter()
        .map(|l| format!("{}#{} {}", l.source_topic.rsplit('/').next().unwrap(), l.source_offset, l.error))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "nemotron-format.parquet#101 row 101: row has no problem text (no user message)",
            "nemotron-format.parquet#50 row 50: row has no expected answer",
            "plain-fields.jsonl#25 row 25: row has no expected answer",
        ]
    );
    let jsonl_letter = letters.iter().find(|l| l.source_topic.ends_with(".jsonl")).unwrap();
    assert!(String::from_utf8_lossy(&jsonl_letter.original).contains("row-missing"));

    // A re-run publishes nothing twice; re-applying the topology changes nothing.
    let again = cluster.run_source("feeder");
    assert!(again.contains("rows: 153, published: 0, skipped: 153, dead_lettered: 0"), "{again}");
    assert_eq!(cluster.read("questions").len(), 150);
    assert_eq!(cluster.read("dead-letters").len(), 3);
    let reapplied = apply_topology(&cluster.topology, &cluster.connection()).await.unwrap();
    assert!(reapplied.iter().all(|t| t.outcome == TopicOutcome::AlreadyExisted));

    assert!(copy.terminate().success(), "SIGTERM is a clean exit: {}", copy.log());
    assert!(copy.log().contains("stopped"), "{}", copy.log());
}
