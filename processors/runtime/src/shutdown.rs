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
