//! Crash safety: the pass-through processor is killed with SIGKILL at random moments while
//! 2,000 records flow, and restarted each time. Afterwards no id is missing, and the only
//! duplicates are replays of the same record (same id, same content) that de-duplication
//! removes.

use distillery_schemas::{decode, Question};
use distillery_tests::{feeder_and_copy, ids_with_counts, wait_until, write_questions, Cluster};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const RECORDS: usize = 2000;
const KILLS: usize = 6;

fn topology() -> String {
    feeder_and_copy(
        "crash",
        4,
        r#"[{ uri = "{dir}/questions.jsonl", format = "fields", dataset = "crash", problem_field = "q", answer_field = "a", id_field = "key" }]"#,
        // Slow records keep work in flight, so kills land mid-record, mid-produce and mid-commit.
        "settings = { work_ms = 40 }\nruntime = { max_in_flight = 8, commit_interval_ms = 200, session_timeout_ms = 1000 }",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_nothing() {
    let cluster = Cluster::start(&topology()).await;
    write_questions(&cluster.path("questions.jsonl"), RECORDS, 200);
    let feeder_log = cluster.run_source("feeder");
    assert!(feeder_log.contains(&format!("published: {RECORDS}")), "{feeder_log}");

    let mut rng = rand::rngs::StdRng::seed_from_u64(20261128);
    let mut copy = cluster.spawn("copy", "0");
    let mut kills = 0;
    let started = Instant::now();
    let mut copied_before = 0;
    while kills < KILLS {
        // Kill only while records flow: after the restarted replica made progress, at a
        // random moment.
        wait_until("progress after a restart", Duration::from_secs(60), || {
            cluster.read("copies").len() > copied_before
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1200)));
        copied_before = cluster.read("copies").len();
        let copied = ids_with_counts(&cluster.read("copies")).len();
        assert!(
            copied < RECORDS,
            "finished after {kills} kills: slow the processor down so the test kills it {KILLS} times"
        );
        copy.kill9();
        kills += 1;
        eprintln!("kill {kills}: {copied} of {RECORDS} copied after {:.1}s", started.elapsed().as_secs_f64());
        copy = cluster.spawn("copy", "0");
    }
    wait_until("every record copied", Duration::from_secs(180), || {
        ids_with_counts(&cluster.read("copies")).len() == RECORDS
    });
    wait_until("offsets committed", Duration::from_secs(60), || cluster.lag("copy") == 0);
    assert!(copy.terminate().success());

    let questions = cluster.read("questions");
    let copies = cluster.read("copies");
    let counts = ids_with_counts(&copies);
    assert_eq!(counts.len(), RECORDS, "no id is missing");
    assert_eq!(counts.keys().collect::<Vec<_>>(), ids_with_counts(&questions).keys().collect::<Vec<_>>());
    // Every duplicate is a replay: same id, same content as the original question.
    for record in &copies {
        let copied: Question = decode(&record.payload).unwrap();
        assert_eq!(Some(copied.id.as_str()), record.id());
        let original = questions.iter().find(|q| q.id() == record.id()).unwrap();
        assert_eq!(copied, decode::<Question>(&original.payload).unwrap());
    }
    let duplicates = copies.len() - RECORDS;
    eprintln!("{kills} kills, {} records written, {duplicates} replayed duplicates removed by id", copies.len());
    assert!(cluster.read("dead-letters").is_empty());
}
