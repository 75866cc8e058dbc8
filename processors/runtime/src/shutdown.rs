//! Graceful shutdown: a future that resolves on SIGINT or SIGTERM, passed to the run loops
//! (mini-redis's `server::run(listener, shutdown)` habit), so tests can pass their own.

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM (docker stop, kubectl).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}

static ABANDONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called by the runner when the shutdown deadline passes with records still in flight: long
/// blocking work (an in-process generation) checks [`in_flight_abandoned`] and stops, since
/// an aborted task only stops at its next await point.
pub fn abandon_in_flight() {
    ABANDONED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether in-flight work was abandoned (see [`abandon_in_flight`]).
pub fn in_flight_abandoned() -> bool {
    ABANDONED.load(std::sync::atomic::Ordering::SeqCst)
}
