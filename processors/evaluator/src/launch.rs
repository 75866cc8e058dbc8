//! One OpenAI-compatible server process per checkpoint (`server_command`): started with the
//! checkpoint's placeholders filled in, polled until its readiness URL answers, stopped
//! afterwards (SIGTERM to its process group, SIGKILL after a grace period), also when the
//! evaluation fails. A [`RunningServer`] dropped without [`RunningServer::stop`] (a cancelled
//! evaluation) kills its process group at once.

use crate::config::{substitute_with, EvaluatorSettings};
use crate::generate::GenerateError;
use distillery_runtime::objects;
use distillery_schemas::CheckpointEvent;
use futures::StreamExt;
use object_store::ObjectStore;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How to start a checkpoint's server (from the settings).
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The command's words, placeholders not yet filled in.
    words: Vec<String>,
    ready_url: String,
    startup_timeout: Duration,
    stop_timeout: Duration,
    scratch_dir: Option<PathBuf>,
    /// Whether any template uses `{checkpoint_dir}` (a remote checkpoint is copied only then).
    needs_dir: bool,
    api_key: Option<String>,
}

/// The values of one launch's own placeholders.
pub struct LaunchValues {
    pub port: u16,
    /// The local folder of `{checkpoint_dir}` (empty when no setting uses it).
    pub checkpoint_dir: String,
    /// Keeps a downloaded copy of the checkpoint until the server stops.
    copy: Option<tempfile::TempDir>,
}

impl LaunchValues {
    /// `template` with the checkpoint's placeholders and `{port}`, `{checkpoint_dir}`.
    pub fn fill(&self, template: &str, checkpoint: &CheckpointEvent) -> String {
        let port = self.port.to_string();
        substitute_with(template, checkpoint, &[("port", &port), ("checkpoint_dir", &self.checkpoint_dir)])
    }
}

impl Launcher {
    /// None without `server_command`.
    pub fn from_settings(settings: &EvaluatorSettings) -> anyhow::Result<Option<Launcher>> {
        let Some(command) = &settings.server_command else { return Ok(None) };
        let words = shlex::split(command)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| anyhow::anyhow!("server_command '{command}' is not a command"))?;
        let endpoints = settings.server.as_ref().map(|s| s.endpoints.clone()).unwrap_or_default();
        let ready_url = settings.server_ready_url.clone().unwrap_or_else(|| "{base_url}/models".into());
        let uses_dir = |t: &str| t.contains("{checkpoint_dir}");
        let needs_dir = words.iter().any(|w| uses_dir(w))
            || endpoints.iter().any(|e| uses_dir(e))
            || uses_dir(&settings.model)
            || uses_dir(&ready_url);
        let api_key = match settings.server.as_ref().and_then(|s| s.api_key_env.as_ref()) {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| anyhow::anyhow!("environment variable {var} (api_key_env) is not set"))?,
            ),
            None => None,
        };
        Ok(Some(Launcher {
            words,
            ready_url,
            startup_timeout: Duration::from_secs(settings.server_startup_timeout_secs),
            stop_timeout: Duration::from_secs(settings.server_stop_timeout_secs),
            scratch_dir: settings.server_scratch_dir.as_ref().map(PathBuf::from),
            needs_dir,
            api_key,
        }))
    }

    /// A free port and, if needed, the checkpoint as a local folder.
    pub async fn prepare(&self, checkpoint: &CheckpointEvent) -> Result<LaunchValues, GenerateError> {
        let port = free_port().map_err(|e| GenerateError::Transient(format!("no free port for the server: {e}")))?;
        if !self.needs_dir {
            return Ok(LaunchValues { port, checkpoint_dir: String::new(), copy: None });
        }
        let uri = checkpoint.uri.as_str();
        if !objects::is_url(uri) || uri.starts_with("file://") {
            let path = uri.strip_prefix("file://").unwrap_or(uri);
            return Ok(LaunchValues { port, checkpoint_dir: path.to_string(), copy: None });
        }
        // In an object store: a local copy, as the in-process backend reads it (a checkpoint
        // that cannot be read yet may be readable later).
        let scratch = match &self.scratch_dir {
            Some(dir) => std::fs::create_dir_all(dir).and_then(|_| tempfile::tempdir_in(dir)),
            None => tempfile::tempdir(),
        }
        .map_err(|e| GenerateError::Transient(format!("cannot make a folder for a copy of {uri}: {e}")))?;
        let started = Instant::now();
        let files = copy_folder(uri, scratch.path())
            .await
            .map_err(|e| GenerateError::Transient(format!("cannot copy checkpoint {uri}: {e:#}")))?;
        tracing::info!(checkpoint = %checkpoint.id, files, folder = %scratch.path().display(), "checkpoint copied in {:.1?}", started.elapsed());
        Ok(LaunchValues { port, checkpoint_dir: scratch.path().display().to_string(), copy: Some(scratch) })
    }

    /// Starts the command and waits until it is ready (`base_url`: the first endpoint). On any
    /// failure the process is stopped before the error is returned.
    pub async fn start(
        &self,
        checkpoint: &CheckpointEvent,
        values: LaunchValues,
        base_url: &str,
    ) -> Result<RunningServer, GenerateError> {
        let args: Vec<String> = self.words.iter().map(|w| values.fill(w, checkpoint)).collect();
        let ready_url = substitute_with(
            &values.fill(&self.ready_url, checkpoint),
            checkpoint,
            &[("base_url", base_url.trim_end_matches('/'))],
        );
        let mut command = std::process::Command::new(&args[0]);
        command.args(&args[1..]).stdin(Stdio::null());
        // Its own process group: stopping it also stops what it started (vLLM's workers).
        command.process_group(0);
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| GenerateError::Failed(format!("cannot start server_command '{}': {e}", args.join(" "))))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(checkpoint = %checkpoint.id, pid, port = values.port, "started the server: {}", args.join(" "));
        let mut server = RunningServer {
            child: Some(child),
            pgid: pid as i32,
            stop_timeout: self.stop_timeout,
            checkpoint: checkpoint.id.clone(),
            _copy: values.copy,
        };
        match self.wait_ready(&mut server, &ready_url).await {
            Ok(waited) => {
                tracing::info!(checkpoint = %checkpoint.id, pid, "server ready after {waited:.1?} ({ready_url})");
                Ok(server)
            }
            Err(e) => {
                server.stop().await;
                Err(e)
            }
        }
    }

    async fn wait_ready(&self, server: &mut RunningServer, url: &str) -> Result<Duration, GenerateError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| GenerateError::Failed(format!("cannot build the HTTP client: {e}")))?;
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(status) = server.exited()? {
                return Err(GenerateError::Failed(format!(
                    "the server command exited ({status}) before {url} answered"
                )));
            }
            let mut request = http.get(url);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            if let Ok(response) = request.send().await {
                if response.status().is_success() {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() >= self.startup_timeout {
                return Err(GenerateError::Transient(format!(
                    "the server did not answer {url} within {}s (server_startup_timeout_secs)",
                    self.startup_timeout.as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// A started server process.
pub struct RunningServer {
    /// None once stopped.
    child: Option<tokio::process::Child>,
    pgid: i32,
    stop_timeout: Duration,
    checkpoint: String,
    _copy: Option<tempfile::TempDir>,
}

impl RunningServer {
    /// The process id of the command (also its process group).
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>, GenerateError> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(status)) => Ok(status),
            Some(Err(e)) => Err(GenerateError::Failed(format!("cannot watch the server process: {e}"))),
            None => Ok(None),
        }
    }

    /// SIGTERM to the process group; SIGKILL when the command has not exited within the stop
    /// timeout. Returns once the command has exited (and been reaped); whatever it left
    /// behind in its group gets SIGKILL too. Idempotent.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal_group(self.pgid, libc::SIGTERM);
        let status = match tokio::time::timeout(self.stop_timeout, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(checkpoint = %self.checkpoint, pid = self.pgid, "the server ignored SIGTERM for {:?}: SIGKILL", self.stop_timeout);
                signal_group(self.pgid, libc::SIGKILL);
                child.wait().await
            }
        };
        signal_group(self.pgid, libc::SIGKILL);
        match status {
            Ok(status) => tracing::info!(checkpoint = %self.checkpoint, pid = self.pgid, "server stopped ({status})"),
            Err(e) => tracing::warn!(checkpoint = %self.checkpoint, pid = self.pgid, "waiting for the server: {e}"),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Not stopped (the evaluation was cancelled): no time to wait, kill the group now.
        // Tokio reaps the child (kill_on_drop).
        if self.child.take().is_some() {
            signal_group(self.pgid, libc::SIGKILL);
        }
    }
}

fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// A loopback port free right now (the server binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Downloads every object under the folder `uri` into `target`, keeping the relative paths;
/// streamed, so large weight files never sit in memory. Returns the number of files.
pub async fn copy_folder(uri: &str, target: &Path) -> anyhow::Result<usize> {
    let objects::ObjectLocation { store, path: prefix } = objects::locate(uri.trim_end_matches('/'))?;
    let mut listing = store.list(Some(&prefix));
    let mut files = 0;
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let Some(parts) = meta.location.prefix_match(&prefix) else { continue };
        let relative: PathBuf = parts.map(|p| p.as_ref().to_string()).collect();
        if relative.as_os_str().is_empty() {
            continue;
        }
        let destination = target.join(&relative);
        if let Some(parent) = destination.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::File::create(&destination).await?;
        let mut stream = store.get_opts(&meta.location, Default::default()).await?.into_stream();
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        files += 1;
    }
    if files == 0 {
        anyhow::bail!("no files under {uri}");
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_is_copied_with_its_relative_paths() {
        let source = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(source.path().join("sub")).unwrap();
        std::fs::write(source.path().join("config.json"), b"{}").unwrap();
        std::fs::write(source.path().join("sub/model.safetensors"), vec![7u8; 100_000]).unwrap();
        let target = tempfile::tempdir().unwrap();
        let uri = format!("file://{}/", source.path().display());
        assert_eq!(copy_folder(&uri, target.path()).await.unwrap(), 2);
        assert_eq!(std::fs::read(target.path().join("config.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(target.path().join("sub/model.safetensors")).unwrap(), vec![7u8; 100_000]);
        let empty = tempfile::tempdir().unwrap();
        assert!(copy_folder(&empty.path().display().to_string(), target.path()).await.is_err());
    }
}
