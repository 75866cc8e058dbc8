//! Logs (`tracing`) and metrics (`metrics`, scraped by Prometheus). Metric names live here so
//! dashboards have one list to read.

use std::net::SocketAddr;

/// Input records received, by processor and topic.
pub const RECORDS_IN: &str = "distillery_records_in_total";
/// Output records acknowledged by the broker, by processor and topic.
pub const RECORDS_OUT: &str = "distillery_records_out_total";
/// Records sent to the dead-letter topic, by processor and error class.
pub const RECORDS_DEAD_LETTERED: &str = "distillery_records_dead_lettered_total";
/// Input records dropped because their id was already processed (an upstream replay).
pub const RECORDS_DUPLICATE: &str = "distillery_records_duplicate_total";
/// Retries of records whose processing failed with a retryable error.
pub const PROCESS_RETRIES: &str = "distillery_process_retries_total";
/// Seconds from receiving a record to having all its outputs acknowledged.
pub const PROCESS_SECONDS: &str = "distillery_process_seconds";
/// Records being processed now.
pub const IN_FLIGHT: &str = "distillery_in_flight";
/// Records behind the end of each assigned partition, from librdkafka statistics.
pub const CONSUMER_LAG: &str = "distillery_consumer_lag";
/// Offsets committed.
pub const COMMITS: &str = "distillery_commits_total";

/// Starts logging to stderr; `RUST_LOG` picks the level (default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Serves `/metrics` for Prometheus on `addr`. Bind to 127.0.0.1 unless the scraper runs
/// elsewhere (in docker-compose, 0.0.0.0 inside the container).
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0])?
        .install()?;
    Ok(())
}
