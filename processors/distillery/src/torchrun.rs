//! The torch trainer engine's launcher: `distillery run NAME` for a trainer with
//! `engine = "torch"` starts PyTorch's `torchrun` (`python -m torch.distributed.run`) with the
//! topology's `[processors.NAME.settings.torch]`, which starts the ranks of the
//! `distillery_torch` package (`processors/trainer-torch`).
//!
//! - The ranks read the topology `distillery run` resolved (replay's renames included),
//!   written to a temporary file for the life of the run, and the same bootstrap servers.
//! - torchrun runs in its own process group (the ranks it starts sit in sessions of their own).
//!   SIGINT and SIGTERM received here are forwarded to torchrun as they are, and the in-process
//!   stop of `distillery quickstart`/`replay` as SIGTERM; torchrun passes the signal to every
//!   rank, which writes a checkpoint and exits. torchrun SIGKILLs ranks that take longer than
//!   `shutdown_timeout_secs`; nothing here adds a deadline of its own.
//! - If this process dies (even by SIGKILL), the kernel sends torchrun SIGKILL
//!   (`PR_SET_PDEATHSIG`), so no orphan keeps training.
//! - The run ends with torchrun's exit status: 0 is success, anything else is an
//!   [`EngineExit`] error that `distillery run` turns into the same exit code. torchrun exits 1
//!   after a signal it forwarded even when every rank stopped cleanly, so after a stop that
//!   this launcher forwarded, 1 counts as a clean stop.

use distillery_runtime::ProcessorRun;
use distillery_trainer::config::{TorchSettings, TrainerSettings};
use std::future::Future;
use std::process::Stdio;

/// torchrun ended with a non-zero status (or by a signal, as 128 + its number).
#[derive(Debug, thiserror::Error)]
#[error("the torch trainer engine (torchrun) exited with status {code}")]
pub struct EngineExit {
    pub code: i32,
}

/// The torchrun command line for `settings`, reading `topology_file`.
pub fn command_line(
    run: &ProcessorRun,
    torch: &TorchSettings,
    topology_file: &std::path::Path,
) -> (String, Vec<String>) {
    let mut args: Vec<String> = vec![
        "-m".into(),
        "torch.distributed.run".into(),
        format!("--nproc_per_node={}", torch.nproc_per_node),
        format!("--nnodes={}", torch.nnodes),
        // After SIGTERM the ranks checkpoint; torchrun's own 30 s would cut a large upload short.
        format!("--shutdown-timeout={}", torch.shutdown_timeout_secs),
    ];
    match &torch.rdzv_endpoint {
        // A rendezvous on this machine only: torchrun picks a free port itself.
        None => args.push("--standalone".into()),
        Some(endpoint) => {
            let id = torch.rdzv_id.clone().unwrap_or_else(|| run.topology.group_id(&run.name));
            args.extend([
                "--rdzv_backend=c10d".into(),
                format!("--rdzv_endpoint={endpoint}"),
                format!("--rdzv_id={id}"),
            ]);
        }
    }
    args.extend([
        "-m".into(),
        "distillery_torch".into(),
        "--topology".into(),
        topology_file.display().to_string(),
        "--processor".into(),
        run.name.clone(),
        "--bootstrap-servers".into(),
        run.connection.bootstrap_servers.clone(),
        "--replica".into(),
        run.replica.clone(),
    ]);
    (torch.python.clone(), args)
}

/// Runs the torch engine for trainer `run.name` until it exits or `shutdown` resolves (then
/// it is asked to stop with SIGTERM and waited for).
pub async fn run(
    run: &ProcessorRun,
    settings: &TrainerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<String> {
    let torch = settings.torch.clone().unwrap_or_default();
    let mut topology_file = tempfile::Builder::new().prefix("distillery-topology-").suffix(".toml").tempfile()?;
    std::io::Write::write_all(&mut topology_file, run.topology.to_toml().map_err(anyhow::Error::msg)?.as_bytes())?;
    let (program, args) = command_line(run, &torch, topology_file.path());

    let mut command = std::process::Command::new(&program);
    command.args(&args).stdin(Stdio::null()).env("PYTHONUNBUFFERED", "1");
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start the torch engine ('{program} {}'): {e}", args.join(" ")))?;
    let pgid = child.id().unwrap_or(0) as i32;
    tracing::info!(processor = %run.name, pgid, "started the torch engine: {program} {}", args.join(" "));

    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // `distillery run`'s own shutdown future fires on the same SIGINT/SIGTERM as the listeners
    // here: one signal is forwarded once, not twice (a second one within a second is the same
    // request; a later one is the user insisting, and is forwarded too).
    let mut last_forward: Option<std::time::Instant> = None;
    let mut forward = |signal: i32| {
        if last_forward.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) {
            return;
        }
        last_forward = Some(std::time::Instant::now());
        tracing::info!(pgid, "forwarding signal {signal} to the torch engine");
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-pgid, signal) };
    };
    tokio::pin!(shutdown);
    // Whether a stop was forwarded, and whether `shutdown` has fired (polled once only).
    let mut stopping = false;
    let mut shutdown_fired = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = interrupt.recv() => {
                stopping = true;
                forward(libc::SIGINT);
            }
            _ = terminate.recv() => {
                stopping = true;
                forward(libc::SIGTERM);
            }
            _ = &mut shutdown, if !shutdown_fired => {
                shutdown_fired = true;
                stopping = true;
                forward(libc::SIGTERM);
            }
        }
    };
    drop(topology_file);
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if stopping && code == 1 {
        return Ok(format!("torch engine for '{}' stopped on request", run.name));
    }
    if code != 0 {
        return Err(EngineExit { code }.into());
    }
    Ok(format!("torch engine for '{}' exited 0", run.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_runtime::{Connection, Topology};
    use std::sync::Arc;

    fn trainer_run(torch: &str) -> (ProcessorRun, TorchSettings) {
        let topology = Topology::parse(
            &format!(
                r#"
                experiment = "exp1"
                [topics.shards]
                schema = "shard_manifest"
                [processors.trainer-a]
                type = "trainer"
                inputs = ["shards"]
                settings = {{ engine = "torch", student = "random", model_config = "tiny", style = "a", checkpoint_store = "/tmp/c", torch = {{ {torch} }} }}
                "#
            ),
            "test",
        )
        .unwrap();
        let settings = TrainerSettings::from_table(&topology.processors["trainer-a"].settings).unwrap();
        let run = ProcessorRun {
            topology: Arc::new(topology),
            name: "trainer-a".into(),
            replica: "r1".into(),
            connection: Connection::new("127.0.0.1:9092"),
        };
        (run, settings.torch.unwrap())
    }

    #[test]
    fn a_single_node_run_is_a_standalone_torchrun_of_the_package() {
        let (run, torch) = trainer_run(r#"nproc_per_node = 2, python = "/venv/bin/python""#);
        let (program, args) = command_line(&run, &torch, std::path::Path::new("/tmp/t.toml"));
        assert_eq!(program, "/venv/bin/python");
        assert_eq!(
            args.join(" "),
            "-m torch.distributed.run --nproc_per_node=2 --nnodes=1 --shutdown-timeout=900 --standalone -m distillery_torch \
             --topology /tmp/t.toml --processor trainer-a --bootstrap-servers 127.0.0.1:9092 --replica r1"
        );
    }

    #[test]
    fn a_multi_node_run_meets_at_the_c10d_rendezvous_named_after_the_trainer() {
        let (run, torch) = trainer_run(r#"nproc_per_node = 8, nnodes = 4, rdzv_endpoint = "node-0:29400""#);
        let (_, args) = command_line(&run, &torch, std::path::Path::new("/tmp/t.toml"));
        let args = args.join(" ");
        assert!(args.contains("--nproc_per_node=8 --nnodes=4 --shutdown-timeout=900 --rdzv_backend=c10d --rdzv_endpoint=node-0:29400 --rdzv_id=exp1.trainer-a"), "{args}");
        assert!(!args.contains("--standalone"));
    }

    #[test]
    fn several_nodes_without_a_rendezvous_endpoint_do_not_check() {
        let table: toml::Table = toml::from_str(
            r#"engine = "torch"
            student = "random"
            model_config = "tiny"
            style = "a"
            checkpoint_store = "/tmp/c"
            torch = { nnodes = 2 }"#,
        )
        .unwrap();
        let error = TrainerSettings::from_table(&table).unwrap_err();
        assert!(error.contains("rdzv_endpoint"), "{error}");
    }
}
