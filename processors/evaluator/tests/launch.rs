//! `server_command`: the evaluator starts one server process per checkpoint, waits until it
//! answers, evaluates against it, and stops it afterwards, also when the evaluation fails.
//! The server is the local test server's binary (`llm-test-server`), started through `sh -c`
//! so the test learns its process id (`exec` keeps the id).

use distillery_evaluator::{Evaluator, EvaluatorSettings};
use distillery_llm_test_server::{LlmServer, ServerConfig};
use distillery_schemas::{CheckpointEvent, ErrorClass};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `llm-test-server` binary: `$LLM_TEST_SERVER_BIN`, else built once with the cargo that
/// runs the tests, into the tests' own target folder and profile.
fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("LLM_TEST_SERVER_BIN") {
            return PathBuf::from(bin);
        }
        // The test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "-p",
            "distillery-llm-test-server",
            "--bin",
            "llm-test-server",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        build.env("CARGO_TARGET_DIR", profile_dir.parent().expect("target dir"));
        assert!(build.status().expect("run cargo build").success(), "cargo build of llm-test-server failed");
        profile_dir.join("llm-test-server")
    })
}

fn settings(extra: &str) -> EvaluatorSettings {
    let text = format!(
        r#"
        benchmarks = [{{ name = "arithmetic", uri = "{}/tests/fixtures/arithmetic.jsonl", format = "fields", problem_field = "question", answer_field = "answer" }}]
        samples_per_problem = 2
        {extra}
        "#,
        env!("CARGO_MANIFEST_DIR")
    );
    EvaluatorSettings::from_table(&toml::from_str(&text).unwrap()).unwrap()
}

fn checkpoint(step: i64) -> CheckpointEvent {
    CheckpointEvent {
        id: format!("tiny@{step}"),
        run: "tiny".into(),
        style: "s".into(),
        step,
        uri: format!("file:///checkpoints/tiny/step-{step}"),
        consumed: vec![],
        shards_consumed: 0,
        tokens_seen: 0,
        is_final: false,
        created_at_ms: 0,
    }
}

fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim().parse().unwrap()
}

/// Gone entirely: exited and reaped (a zombie would still have /proc/PID).
fn is_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_checkpoint_gets_its_own_server_which_is_stopped_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // {step}, {checkpoint_dir} and {port} filled in per checkpoint; the default endpoint is
    // http://127.0.0.1:{port}/v1 and the default readiness URL its /models.
    let command = format!(
        "sh -c 'echo $$ > {d}/{{step}}.pid; echo {{checkpoint_dir}} {{port}} > {d}/{{step}}.args; exec {} --listen 127.0.0.1:{{port}}'",
        server_bin().display()
    );
    let evaluator = Evaluator::new(
        "evaluator",
        settings(&format!("server_command = \"{}\"\nmodel = \"student-{{step}}\"", command.replace('"', "\\\""))),
    )
    .await
    .unwrap();

    let mut pids = Vec::new();
    for step in [100, 200] {
        let results = evaluator.evaluate(&checkpoint(step)).await.unwrap();
        // The binary answers "What is 2 + 3?" right and everything else with 42.
        let r = &results[0];
        assert_eq!((r.problems, r.samples_per_problem), (4, 2));
        assert_eq!(r.pass_at_k, [0.25, 0.25]);
        let pid = read_pid(&dir.path().join(format!("{step}.pid")));
        assert!(is_gone(pid), "the server of step {step} (pid {pid}) still runs after its evaluation");
        let args = std::fs::read_to_string(dir.path().join(format!("{step}.args"))).unwrap();
        let (folder, port) = args.trim().split_once(' ').unwrap();
        // A local checkpoint is served from where it is.
        assert_eq!(folder, format!("/checkpoints/tiny/step-{step}"));
        assert!(port.parse::<u16>().unwrap() > 0);
        pids.push(pid);
    }
    assert_ne!(pids[0], pids[1], "one server process per checkpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_evaluation_still_stops_the_server_even_one_that_ignores_sigterm() {
    // "Ready" by another server's /models; generation goes to a server that is down, so the
    // evaluation fails after the client's retries (300 ms apart: time for the shell to set
    // its trap). The command ignores SIGTERM: after server_stop_timeout_secs its process
    // group gets SIGKILL.
    let ready = LlmServer::start(ServerConfig::default()).await.unwrap();
    let down = LlmServer::start(ServerConfig::default()).await.unwrap();
    down.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("server.pid");
    let command =
        format!("sh -c 'trap \\\"\\\" TERM; echo $$ > {}; while true; do sleep 0.05; done'", pid_file.display());
    let evaluator = Evaluator::new(
        "evaluator",
        settings(&format!(
            r#"
            server_command = "{command}"
            server_ready_url = "{}/models"
            server_stop_timeout_secs = 1
            server = {{ endpoints = ["{}"], retry_attempts = 2, retry_min_delay_ms = 300, retry_max_delay_ms = 300 }}
            "#,
            ready.base_url(),
            down.base_url()
        )),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = evaluator.evaluate(&checkpoint(300)).await.unwrap_err();
    assert_eq!((err.class, err.retryable), (ErrorClass::External, false));
    assert!(err.message.contains("tiny@300") && err.message.contains("arithmetic"), "{}", err.message);
    assert!(started.elapsed() >= Duration::from_secs(1), "SIGKILL only after the stop timeout");
    let pid = read_pid(&pid_file);
    assert!(is_gone(pid), "the server (pid {pid}) still runs after a failed evaluation");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_exits_or_never_gets_ready_fails_the_checkpoint_and_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();

    // Exits before it is ready: a failure (dead letter), naming the exit.
    let exits = format!("sh -c 'echo $$ > {d}/exits.pid; exit 3'");
    let evaluator = Evaluator::new("evaluator", settings(&format!("server_command = \"{exits}\""))).await.unwrap();
    let err = evaluator.evaluate(&checkpoint(1)).await.unwrap_err();
    assert_eq!((err.class, err.retryable), (ErrorClass::External, false));
    assert!(err.message.contains("exited") && err.message.contains("exit status: 3"), "{}", err.message);
    assert!(is_gone(read_pid(&dir.path().join("exits.pid"))));

    // Never answers: stopped after the startup timeout, and retried later (transient).
    let sleeps = format!("sh -c 'echo $$ > {d}/sleeps.pid; exec sleep 60'");
    let evaluator = Evaluator::new(
        "evaluator",
        settings(&format!("server_command = \"{sleeps}\"\nserver_startup_timeout_secs = 1")),
    )
    .await
    .unwrap();
    let err = evaluator.evaluate(&checkpoint(2)).await.unwrap_err();
    assert_eq!((err.class, err.retryable), (ErrorClass::External, true));
    assert!(err.message.contains("server_startup_timeout_secs"), "{}", err.message);
    assert!(is_gone(read_pid(&dir.path().join("sleeps.pid"))));
}
