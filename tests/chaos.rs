//! The whole pipeline under failure (`distillery chaos` at CI size). 1,000 questions go through
//! feeder -> two test-server teachers (two endpoints each, 30% retryable faults) -> rule judge
//! -> agreement -> two packers (shards in a real S3 server, moto) -> a tiny trainer, twice:
//! once undisturbed, once while a driver SIGKILLs and restarts a random processor replica
//! every few hundred milliseconds (at least 10 kills of each kind), one teacher endpoint is
//! down, the S3 server is unreachable and the broker is SIGKILLed and restarted on its SQLite
//! store. The agreed set, the multiset of packed sequences and the manifest totals must be
//! identical; every manifest must point at a complete shard; no question may sit in two
//! shards; the killed trainer must match a never-killed twin bit for bit, on the same shards.

use distillery::chaos::{self, ChaosArgs};
use distillery_tests::{distillery_bin, repo_root, S3Server};

const KILLS_PER_KIND: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn killing_anything_at_any_moment_changes_nothing_that_reaches_the_trainer() {
    // The driver finds the shipped student tokenizer under topology/data, as a user running
    // `distillery chaos` from the repository does.
    std::env::set_current_dir(repo_root()).unwrap();
    let s3 = S3Server::start("distillery");
    for (key, value) in s3.env() {
        std::env::set_var(key, value);
    }
    let work = tempfile::tempdir().unwrap();
    let args = ChaosArgs {
        questions: 1000,
        kills_per_kind: KILLS_PER_KIND,
        kill_gap_min_ms: 200,
        kill_gap_max_ms: 600,
        fault_rate: 0.3,
        teacher_latency_ms: 300,
        trainer_steps: 100,
        teacher_down_secs: 10,
        s3_down_secs: 5,
        s3_bucket: Some("distillery".into()),
        seed: 20261129,
        work_dir: work.path().to_path_buf(),
        bin: Some(distillery_bin().to_path_buf()),
        timeout_secs: 600,
    };
    let report = chaos::run(args).await.expect("both runs complete");

    for (kind, kills) in &report.kills {
        assert!(*kills >= KILLS_PER_KIND, "{kind}: only {kills} kills; slow the teachers down");
    }
    assert!(report.faults.len() >= 6, "every retryable fault kind was injected: {:?}", report.faults);
    assert!(report.s3_down.is_some() && report.broker_restart.is_some() && report.teacher_down.is_some());
    assert_eq!(report.records_lost, 0);
    assert_eq!(report.duplicates_reaching_trainer, 0);
    assert!(report.differences.is_empty(), "{:#?}", report.differences);
    assert_eq!(report.clean.agreed.len() + report.clean.rejected.len(), 1000);
    assert_eq!(report.clean.rejected.len(), (0..1000).filter(|i| i % 7 == 3).count(), "teacher B's wrong answers");
    let trainer = report.chaos.trainer.as_ref().expect("trainers compared");
    assert!(trainer.weights_identical && trainer.optimizer_identical && trainer.same_shard_sequence);
    assert!(trainer.shards > 10, "the trainer trained on many shards: {trainer:?}");
}
