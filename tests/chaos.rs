//! The whole pipeline under failure (`distillery chaos` at CI size). 1,000 questions go through
//! feeder -> two test-server teachers (two endpoints each, 30% retryable faults) -> rule judge
//! -> agreement -> two packers (shards in a real S3 server, moto) -> a tiny trainer, every
//! stage but the trainer as 2 replicas, twice: once undisturbed, once while a driver SIGKILLs
//! and restarts a random processor replica every few hundred milliseconds (at least 10 kills
//! of each kind), replicas join and leave their groups, one teacher endpoint is down, the
//! broker is SIGKILLed and restarted on its SQLite store, and the S3 server is unreachable as
//! the stream ends (packer kills land during shipments and flushes). One question expires in
//! both runs and a late verdict for it follows. The agreed set, the multiset of packed sequences,
//! the manifest totals and the dead letters must be identical; every manifest must point at a
//! complete shard; no question may sit in two shards or be both agreed and rejected; the
//! killed trainer must match a never-killed twin bit for bit, on the same shards, none twice.

use distillery::chaos::{self, ChaosArgs, ChaosReport};
use distillery_tests::{distillery_bin, repo_root, S3Server};

const KILLS_PER_KIND: usize = 10;
const REBALANCES_PER_KIND: usize = 4;

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
        replicas: 2,
        kills_per_kind: KILLS_PER_KIND,
        kill_gap_min_ms: 200,
        kill_gap_max_ms: 600,
        rebalances_per_kind: REBALANCES_PER_KIND,
        rebalance_gap_ms: 2000,
        fault_rate: 0.3,
        teacher_latency_ms: 300,
        trainer_steps: 60,
        teacher_down_secs: 10,
        s3_down_secs: 10,
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
    for (kind, joins) in &report.joins {
        let moves = joins + report.leaves[kind];
        assert!(moves >= REBALANCES_PER_KIND, "{kind}: only {moves} replicas joined or left");
    }
    assert!(report.kills_during_shipment >= 1, "no packer kill landed during a shipment");
    assert!(report.kills_during_flush >= 1, "no packer kill landed during a flush");
    assert!(report.faults.len() >= 6, "every retryable fault kind was injected: {:?}", report.faults);
    assert!(report.s3_down.is_some() && report.broker_restart.is_some() && report.teacher_down.is_some());
    assert_eq!(report.records_lost, 0);
    assert_eq!(report.duplicates_reaching_trainer, 0);
    assert_eq!(report.agreed_and_rejected, 0);
    assert!(report.expiry_held, "the expired question was agreed after its late verdict");
    assert!(report.differences.is_empty(), "{:#?}", report.differences);
    // The 1,000 questions and the one the driver makes expire.
    assert_eq!(report.clean.agreed.len() + report.clean.rejected.len(), 1001);
    let wrong = (0..1000).filter(|i| i % 7 == 3).count();
    assert_eq!(report.clean.rejected.len(), wrong + 1, "teacher B's wrong answers and the expired question");
    assert!(report.clean.dead_letters.is_empty(), "{:?}", report.clean.dead_letters);
    // Replays after kills and rebalances cost few extra teacher calls: only the records in
    // flight on a killed replica or on a partition that moved are asked for again.
    let calls = ChaosReport::calls_per_sample(&report.chaos);
    assert!(calls < 1.2, "{calls:.3} teacher calls per sample");
    let trainer = report.chaos.trainer.as_ref().expect("trainers compared");
    assert!(trainer.weights_identical && trainer.optimizer_identical && trainer.same_shard_sequence);
    assert!(trainer.shards > 10, "the trainer trained on many shards: {trainer:?}");
}
