//! The agreement filter over a real broker: verdicts of two teachers for 1,000 questions,
//! interleaved in random order, arrive while the processor is killed twice (SIGKILL) and
//! restarted. Exactly the questions with MATCH from both teachers are agreed, each once after
//! de-duplication; every other question is rejected; the restarted processor rebuilt its
//! pending joins from its input.

use distillery_runtime::bench::produce_keyed;
use distillery_schemas::{AgreedSample, Verdict};
use distillery_tests::records::judged_sample;
use distillery_tests::{ids_with_counts, wait_until, Cluster};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::Duration;

const QUESTIONS: usize = 1000;

const TOPOLOGY: &str = r#"
experiment = "agreement"
[topics.judged]
schema = "judged_sample"
partitions = 4
external = true
[topics.agreed]
schema = "agreed_sample"
partitions = 4
[topics.rejected]
schema = "agreed_sample"
partitions = 4

[processors.agreement]
type = "agreement"
inputs = ["judged"]
outputs = { agreed = "agreed", rejected = "rejected" }
settings = { required_teachers = ["teacher-a", "teacher-b"] }
runtime = { max_in_flight = 16, commit_interval_ms = 100, session_timeout_ms = 1000 }
"#;

fn judged(question: usize, teacher: &str, verdict: Verdict) -> (String, Vec<u8>) {
    judged_sample(&format!("q{question:04}"), teacher, verdict, distillery_schemas::now_ms())
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_the_questions_both_teachers_solved_are_agreed_once_despite_two_kills() {
    let cluster = Cluster::start(TOPOLOGY).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut verdicts = Vec::new();
    let mut both = BTreeSet::new();
    for q in 0..QUESTIONS {
        let a = if rng.gen_bool(0.8) { Verdict::Match } else { Verdict::Mismatch };
        let b = if rng.gen_bool(0.8) { Verdict::Match } else { Verdict::Mismatch };
        if a == Verdict::Match && b == Verdict::Match {
            both.insert(format!("q{q:04}"));
        }
        verdicts.push(judged(q, "teacher-a", a));
        verdicts.push(judged(q, "teacher-b", b));
    }
    verdicts.shuffle(&mut rng);
    let topic = cluster.topology.topic_name("judged");
    let chunks: Vec<_> = verdicts.chunks(verdicts.len() / 4).collect();

    let mut agreement = cluster.spawn("agreement", "0");
    for (i, chunk) in chunks.iter().enumerate() {
        produce_keyed(&cluster.connection(), &topic, chunk).await.unwrap();
        if i == 1 || i == 2 {
            // Mid-stream: after the chunk started flowing, kill and restart.
            wait_until("some progress", Duration::from_secs(60), || {
                cluster.lag("agreement") < (chunk.len() as i64) * (i as i64 + 1)
            });
            agreement.kill9();
            agreement = cluster.spawn("agreement", "0");
        }
    }
    wait_until("every verdict processed", Duration::from_secs(120), || cluster.lag("agreement") == 0);
    let log = agreement.log();
    assert!(agreement.terminate().success());
    let restored: u64 = log
        .lines()
        .filter_map(|l| l.split("state restored from ").nth(1))
        .filter_map(|rest| rest.split(" ").next()?.parse::<u64>().ok())
        .sum();
    assert!(restored > 0, "the restarted processor rebuilt its joins from its input: {log}");

    let agreed_records = cluster.read("agreed");
    let agreed: Vec<AgreedSample> =
        agreed_records.iter().map(|r| distillery_schemas::decode(&r.payload).unwrap()).collect();
    let agreed_ids: BTreeSet<String> = agreed.iter().map(|a| a.question_id.clone()).collect();
    assert_eq!(agreed_ids, both, "exactly the questions with MATCH from both teachers");
    assert_eq!(ids_with_counts(&agreed_records).len(), both.len(), "each agreed once after de-duplication");
    assert!(agreed.iter().all(|a| a.accepted && a.traces.len() == 2));
    let rejected: BTreeSet<String> = cluster
        .read("rejected")
        .iter()
        .map(|r| distillery_schemas::decode::<AgreedSample>(&r.payload).unwrap().question_id)
        .collect();
    assert_eq!(rejected.len() + both.len(), QUESTIONS, "every other question was rejected");
    assert!(rejected.is_disjoint(&both));
    eprintln!(
        "{} agreed, {} rejected, {} agreed records written ({} replays); {restored} verdicts restored after the last restart",
        both.len(),
        rejected.len(),
        agreed_records.len(),
        agreed_records.len() - both.len()
    );
}
