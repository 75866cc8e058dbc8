//! The README's main command runs end to end on the embedded default: the local broker, the
//! shipped data and student tokenizer, every stage built so far, and nothing left running.

use distillery_tests::{distillery_bin, repo_root};

#[test]
fn the_quickstart_runs_every_stage_and_reports_each_topic() {
    let work = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(distillery_bin())
        .current_dir(repo_root())
        .args(["quickstart", "--work-dir"])
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
    assert_eq!(count("questions"), 60);
    assert_eq!(count("samples"), 60);
    assert_eq!(count("judged"), 60);
    assert_eq!(count("agreed") + count("rejected"), 60);
    assert!(count("shards.reference") >= 1);
    assert_eq!(count("dead-letters"), 0);
    assert!(stdout.contains("done in"));
}
