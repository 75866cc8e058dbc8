//! The local Kafka-API broker for tests and the embedded default: Nisshi (crates.io `nisshi`,
//! formerly Tansu), a real broker speaking the Kafka protocol, started as a child process on a
//! free loopback port and stopped when dropped.

use crate::kafka::Connection;
use rdkafka::consumer::Consumer;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the broker keeps its log.
#[derive(Debug, Clone)]
pub enum BrokerStore {
    /// Lost when the broker stops.
    Memory,
    /// A SQLite file that survives a broker restart.
    Sqlite(PathBuf),
}

pub struct LocalBroker {
    child: Child,
    port: u16,
    store: BrokerStore,
    log_path: Option<PathBuf>,
}

/// The broker binary: `$DISTILLERY_NISSHI`, else `nisshi` on PATH.
pub fn nisshi_binary() -> PathBuf {
    std::env::var_os("DISTILLERY_NISSHI").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("nisshi"))
}

pub const INSTALL_HINT: &str =
    "cargo install nisshi@0.8.1 --locked --ignore-rust-version --no-default-features --features dynostore,libsql";

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalBroker {
    /// Starts a broker on a free port and waits until it answers metadata requests.
    pub fn start(store: BrokerStore, log_path: Option<&Path>) -> anyhow::Result<LocalBroker> {
        Self::start_on(free_port()?, store, log_path)
    }

    /// Starts a broker on a given port (a restart of the same broker keeps its address).
    pub fn start_on(port: u16, store: BrokerStore, log_path: Option<&Path>) -> anyhow::Result<LocalBroker> {
        let child = spawn(port, &store, log_path)?;
        let mut broker = LocalBroker { child, port, store, log_path: log_path.map(Path::to_path_buf) };
        broker.wait_ready(Duration::from_secs(30))?;
        Ok(broker)
    }

    fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the local broker exited during start-up ({status}); see {:?}", self.log_path);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let reader = self.connection().reader()?;
                if reader.fetch_metadata(None, Duration::from_secs(2)).is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > deadline {
                anyhow::bail!("the local broker did not answer on 127.0.0.1:{} within {deadline:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn connection(&self) -> Connection {
        Connection::new(self.bootstrap_servers())
    }

    /// Kills the broker (SIGKILL: no clean shutdown) and starts it again on the same port and
    /// store. With [`BrokerStore::Sqlite`] the topics and committed offsets survive.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.child = spawn(self.port, &self.store, self.log_path.as_deref())?;
        self.wait_ready(Duration::from_secs(30))
    }

    /// Stops the broker now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(port: u16, store: &BrokerStore, log_path: Option<&Path>) -> anyhow::Result<Child> {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(nisshi_binary());
    command
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        // Kafka waits 3 s for more members before a new group's first assignment; one second
        // still lets replicas started together share the first assignment.
        .args(["--group-initial-rebalance-delay", "1s"])
        .stdin(Stdio::null());
    match store {
        BrokerStore::Memory => {
            command.args(["--storage-engine", "memory://nisshi/"]);
        }
        BrokerStore::Sqlite(file) => {
            // The sqlite URL is relative to the broker's working directory.
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let name = file.file_name().ok_or_else(|| anyhow::anyhow!("{} has no file name", file.display()))?;
            command.current_dir(dir).arg("--storage-engine").arg(format!("sqlite://{}", name.to_string_lossy()));
        }
    }
    match log_path {
        Some(path) => {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            command.stdout(log.try_clone()?).stderr(log);
        }
        None => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    command.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot start the local broker `{}`: {e}; install it with: {INSTALL_HINT}",
            nisshi_binary().display()
        )
    })
}
