//! Harness for the end-to-end tests: a real local broker (Nisshi) per test, topologies
//! written to a temporary folder and applied, and processors run as real `distillery run`
//! processes that can be killed with SIGKILL or stopped with SIGTERM.

pub mod records;

use distillery_runtime::broker::{BrokerStore, LocalBroker};
use distillery_runtime::reader::{group_lag, read_to_end, ReadRecord};
use distillery_runtime::{admin, Connection, Topology};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root (tests read fixtures and topologies from it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_path_buf()
}

/// The `distillery` binary: `$DISTILLERY_BIN`, else built once (in the test's own profile)
/// with the cargo that runs the tests.
pub fn distillery_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("DISTILLERY_BIN") {
            return PathBuf::from(bin);
        }
        // The test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(repo_root()).args(["build", "--quiet", "-p", "distillery", "--bin", "distillery"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        build.env("CARGO_TARGET_DIR", profile_dir.parent().expect("target dir"));
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the distillery binary failed");
        profile_dir.join("distillery")
    })
}

/// The topology most tests use: a feeder publishing `questions` from `feeder_files` (a TOML
/// array of file tables) and a passthrough processor `copy` writing `copies`, whose entry gets
/// the extra TOML lines `copy_extra` (settings, runtime, replicas).
pub fn feeder_and_copy(experiment: &str, partitions: u32, feeder_files: &str, copy_extra: &str) -> String {
    format!(
        r#"
experiment = "{experiment}"
[topics.questions]
schema = "question"
partitions = {partitions}
[topics.copies]
schema = "question"
partitions = {partitions}

[processors.feeder]
type = "feeder"
outputs = {{ questions = "questions" }}
settings = {{ files = {feeder_files} }}

[processors.copy]
type = "passthrough"
inputs = ["questions"]
outputs = {{ out = "copies" }}
{copy_extra}
"#
    )
}

/// A broker with a topology applied, in a temporary folder.
pub struct Cluster {
    pub broker: LocalBroker,
    pub dir: tempfile::TempDir,
    pub topology_path: PathBuf,
    pub topology: Topology,
}

impl Cluster {
    /// Starts a broker and applies `topology_toml` (in which `{dir}` is replaced by the
    /// test's temporary folder and `{repo}` by the repository root).
    pub async fn start(topology_toml: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = LocalBroker::start(BrokerStore::Memory, Some(&dir.path().join("broker.log")))
            .expect("start the local broker");
        let text = topology_toml
            .replace("{dir}", &dir.path().display().to_string())
            .replace("{repo}", &repo_root().display().to_string());
        let topology_path = dir.path().join("topology.toml");
        std::fs::write(&topology_path, &text).unwrap();
        let topology = Topology::load(&topology_path).expect("topology parses");
        let problems = topology.check(&distillery::registry::processor_types());
        assert!(problems.is_empty(), "topology problems: {problems:?}");
        admin::apply_topology(&topology, &broker.connection()).await.expect("apply topology");
        Cluster { broker, dir, topology_path, topology }
    }

    pub fn connection(&self) -> Connection {
        self.broker.connection()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `distillery run NAME` as a child process; its log goes to `NAME-REPLICA-N.log`.
    pub fn spawn(&self, name: &str, replica: &str) -> Proc {
        self.spawn_with(name, replica, &[], &[])
    }

    /// Like [`Cluster::spawn`], with extra flags for `distillery run` and extra environment.
    pub fn spawn_with(&self, name: &str, replica: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = self.path(&format!("{name}-{replica}-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(distillery_bin())
            .current_dir(repo_root())
            .args(["run", name, "--topology"])
            .arg(&self.topology_path)
            .args(["--bootstrap-servers", &self.broker.bootstrap_servers(), "--replica", replica])
            .args(extra)
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            // After the defaults, so a test can raise the log level.
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start distillery");
        Proc { child, log_path }
    }

    /// Runs a source (the feeder) to completion and returns its output.
    pub fn run_source(&self, name: &str) -> String {
        self.run_source_with_env(name, &[])
    }

    pub fn run_source_with_env(&self, name: &str, env: &[(&str, &str)]) -> String {
        let mut proc = self.spawn_with(name, "0", &[], env);
        let status = proc.child.wait().unwrap();
        let log = proc.log();
        assert!(status.success(), "{name} failed: {log}");
        log
    }

    /// Every record of a topic (short name) up to its current end.
    pub fn read(&self, topic: &str) -> Vec<ReadRecord> {
        read_to_end(&self.connection(), &self.topology.topic_name(topic), Duration::from_secs(60)).expect("read topic")
    }

    /// Records a processor's group has not committed on its inputs.
    pub fn lag(&self, processor: &str) -> i64 {
        let instance = &self.topology.processors[processor];
        let topics: Vec<String> = instance.inputs.iter().map(|t| self.topology.topic_name(t)).collect();
        group_lag(&self.connection(), &self.topology.group_id(processor), &topics).expect("group lag")
    }
}

/// Waits until `done` holds, or panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `distillery run` child process.
pub struct Proc {
    pub child: Child,
    pub log_path: PathBuf,
}

impl Proc {
    /// SIGKILL: no chance to commit or flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                self.kill9();
                panic!("process did not stop within 30 s of SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The partitions the replica holds, from the last "partitions held" line of its log
    /// (logged after every assignment and revocation).
    pub fn last_assignment(&self) -> Option<BTreeSet<String>> {
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains("partitions held: "))?;
        let (_, list) = line.split_once("partitions held: ")?;
        let list = list.split(" processor=").next().unwrap_or(list).trim();
        Some(list.split(", ").filter(|p| !p.is_empty()).map(str::to_string).collect())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts of records by id: the de-duplicated set is its keys.
pub fn ids_with_counts(records: &[ReadRecord]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        *counts.entry(record.id().expect("every record has an id").to_string()).or_insert(0) += 1;
    }
    counts
}

/// A JSONL file of `n` distinct questions in the `fields` format (`q`, `a`, `key`).
pub fn write_questions(path: &Path, n: usize, text_bytes: usize) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let filler = "x".repeat(text_bytes.saturating_sub(30));
        writeln!(file, "{}", serde_json::json!({"key": format!("q{i:05}"), "q": format!("What is {i} + 1? {filler}"), "a": (i + 1).to_string()})).unwrap();
    }
}

/// A free loopback port (for a metrics endpoint).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET a plain-HTTP URL path on 127.0.0.1:port and return the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

/// A real S3-compatible server (moto's, installed by `.ci/install-tools`) on a free loopback
/// port, stopped when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let venv = std::env::var("DISTILLERY_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distillery-venv"));
        let port = free_port();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (run .ci/install-tools)");
        let server = S3Server { child, port };
        wait_until("the S3 server", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        // CreateBucket: moto accepts unsigned requests.
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "create bucket: {response}");
        server
    }

    /// The environment `object_store` reads to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python of the project's virtualenv (made by `.ci/install-tools`).
pub fn venv_python() -> PathBuf {
    std::env::var("DISTILLERY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distillery-venv"))
        .join("bin/python")
}

/// A question record, for tests that write straight into a topic.
pub fn question(id: &str, problem: &str) -> distillery_schemas::Question {
    distillery_schemas::Question {
        id: id.into(),
        dataset: "test".into(),
        source_uri: "test".into(),
        source_row: 0,
        problem: problem.into(),
        expected_answer: "1".into(),
        metadata: Default::default(),
    }
}

/// [`question`], encoded as it travels on a topic.
pub fn encoded_question(id: &str, problem: &str) -> Vec<u8> {
    distillery_schemas::encode(&question(id, problem)).expect("a question encodes")
}
