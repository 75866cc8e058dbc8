//! Two replicas of one processor in one consumer group split the input partitions between
//! them and together process every record exactly once.

use distillery_tests::{feeder_and_copy, ids_with_counts, wait_until, write_questions, Cluster};
use std::collections::BTreeSet;
use std::time::Duration;

const RECORDS: usize = 400;

fn topology() -> String {
    feeder_and_copy(
        "replicas",
        4,
        r#"[{ uri = "{dir}/questions.jsonl", format = "fields", dataset = "r", problem_field = "q", answer_field = "a", id_field = "key" }]"#,
        "replicas = 2",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_split_the_partitions_and_process_every_record_once() {
    let cluster = Cluster::start(&topology()).await;
    write_questions(&cluster.path("questions.jsonl"), RECORDS, 100);
    let a = cluster.spawn("copy", "a");
    let b = cluster.spawn("copy", "b");
    // Wait for the group to settle with both members holding partitions.
    wait_until("both replicas assigned", Duration::from_secs(60), || {
        let (pa, pb) = (a.last_assignment(), b.last_assignment());
        matches!((&pa, &pb), (Some(x), Some(y)) if !x.is_empty() && !y.is_empty() && x.len() + y.len() == 4)
    });
    let (pa, pb) = (a.last_assignment().unwrap(), b.last_assignment().unwrap());
    assert!(pa.is_disjoint(&pb), "{pa:?} and {pb:?} overlap");
    let all: BTreeSet<String> = pa.union(&pb).cloned().collect();
    assert_eq!(all, (0..4).map(|p| format!("replicas.questions[{p}]")).collect());

    cluster.run_source("feeder");
    wait_until("every record copied", Duration::from_secs(60), || cluster.read("copies").len() >= RECORDS);
    wait_until("offsets committed", Duration::from_secs(30), || cluster.lag("copy") == 0);
    let copies = cluster.read("copies");
    assert_eq!(copies.len(), RECORDS, "no record processed twice");
    assert_eq!(ids_with_counts(&copies).len(), RECORDS, "no record missing");
    let by_a = copies.iter().filter(|r| r.header("distillery-producer") == Some("copy/a")).count();
    let by_b = copies.iter().filter(|r| r.header("distillery-producer") == Some("copy/b")).count();
    assert_eq!(by_a + by_b, RECORDS);
    assert!(by_a > 0 && by_b > 0, "both replicas worked: a={by_a} b={by_b}");
    // Each replica copied exactly the records of its own partitions.
    let questions = cluster.read("questions");
    for copy in &copies {
        let source = questions.iter().find(|q| q.id() == copy.id()).unwrap();
        let owner = format!("replicas.questions[{}]", source.partition);
        let producer = copy.header("distillery-producer").unwrap();
        assert_eq!(if pa.contains(&owner) { "copy/a" } else { "copy/b" }, producer);
    }
}
