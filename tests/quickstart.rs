//! The README's main command runs end to end on the embedded default: the local broker, the
//! shipped data and student tokenizer, every stage from feeder to report, and nothing left
//! running.

use distillery_tests::{distillery_bin, repo_root};

#[test]
fn the_quickstart_runs_every_stage_and_reports_each_topic() {
    let work = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(distillery_bin())
        .current_dir(repo_root())
        // The tiny students: the SmolLM2 default trains a real 135M model (release build, minutes).
        .args(["quickstart", "--student", "tiny", "--work-dir"])
        .arg(work.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let count = |topic: &str| -> usize {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("quickstart.{topic} ")))
            .unwrap_or_else(|| panic!("no {topic} in:\n{stdout}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    // Two teachers answer the 60 questions; the concise style gets every sixth answer wrong,
    // so the judge and the agreement filter keep 50 and reject 10.
    assert_eq!(count("questions"), 60);
    assert_eq!(count("samples"), 120);
    assert_eq!(count("judged"), 120);
    assert_eq!((count("agreed"), count("rejected")), (50, 10));
    assert!(count("shards.reference") >= 1 && count("shards.concise") >= 1);
    // Two students train and checkpoint; the evaluator scores each final checkpoint once.
    assert!(count("train-metrics") >= 2);
    assert!(count("checkpoints") >= 2);
    assert_eq!(count("eval-results"), 2);
    assert_eq!(count("dead-letters"), 0);
    let report = std::fs::read_to_string(work.path().join("report/report.md")).unwrap();
    assert!(report.contains("Table 1") && report.contains("trainer-reference") && report.contains("trainer-concise"));
    // Shards and checkpoints live under --work-dir, not the repository's work/quickstart.
    for folder in ["shards/reference", "shards/concise", "checkpoints"] {
        let entries = std::fs::read_dir(work.path().join(folder)).map(|d| d.count()).unwrap_or(0);
        assert!(entries > 0, "nothing in {folder} under the work folder");
    }
    let png = std::fs::read(work.path().join("report/loss_vs_step.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(stdout.contains("done in") && stdout.contains("report: "));
    // Live progress (plain lines when not on a terminal): each stage's own counters.
    let progress = |name: &str| -> &str {
        stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")) && !l.contains("Summary"))
            .unwrap_or_else(|| panic!("no progress line of {name} in:\n{stdout}"))
    };
    assert!(progress("feeder").ends_with("published 60"), "{}", progress("feeder"));
    assert!(progress("judge").ends_with("in 120 · out 120"), "{}", progress("judge"));
    assert!(progress("agreement").ends_with("in 120 · out 60"), "{}", progress("agreement"));
    assert!(progress("packer-reference").contains("in 50 · shards "), "{}", progress("packer-reference"));
    assert!(progress("trainer-reference").contains("· loss "), "{}", progress("trainer-reference"));
    assert!(progress("evaluator").ends_with("eval results 2"), "{}", progress("evaluator"));
}
