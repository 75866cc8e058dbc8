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
    init_logging_with_default("info,rdkafka=warn")
}

/// Like [`init_logging`] with another default filter (a command with live progress bars keeps
/// only warnings unless `RUST_LOG` asks for more).
pub fn init_logging_with_default(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Where `--metrics-addr` binds: a bare port means 127.0.0.1 (the endpoint is unauthenticated
/// and lists topics, consumer groups and processor names), `HOST:PORT` binds where it says,
/// e.g. `0.0.0.0:9898` inside a container whose scraper runs elsewhere.
pub fn parse_metrics_addr(spec: &str) -> Result<SocketAddr, String> {
    let spec = spec.trim();
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    spec.parse()
        .map_err(|_| format!("'{spec}' is neither a port (bound to 127.0.0.1) nor an address like 127.0.0.1:9898"))
}

/// Serves `/metrics` for Prometheus on `addr`. Bind to 127.0.0.1 unless the scraper runs
/// elsewhere (in docker-compose, 0.0.0.0 inside the container).
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        tracing::info!("metrics on http://{addr}/metrics");
    } else {
        tracing::warn!("metrics on http://{addr}/metrics: reachable from other machines (a bare port binds 127.0.0.1)");
    }
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0])?
        .install()?;
    Ok(())
}

/// Records this process's metrics in memory instead of serving them, for a command that runs
/// every processor in one process and shows their counters itself (the quickstart).
pub fn install_in_process_recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    Ok(metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?)
}

/// One sample of the Prometheus text format: `name{label="value",...} number`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments and unparsable lines skipped). Our
/// label values never contain quotes or commas, so a plain split is enough.
pub fn parse_exposition(text: &str) -> Vec<MetricSample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key.to_string(), value.trim_matches('"').to_string()))
                })
                .collect();
            Some(MetricSample { name: name.to_string(), labels, value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_samples_keep_their_labels() {
        let text = "# TYPE distillery_records_in_total counter\n\
                    distillery_records_in_total{processor=\"judge\",topic=\"q.samples\"} 120\n\
                    distillery_trainer_loss{run=\"x/trainer-a\"} 6.25\nplain 3\n";
        let samples = parse_exposition(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "distillery_records_in_total");
        assert_eq!(samples[0].labels["processor"], "judge");
        assert_eq!(samples[0].labels["topic"], "q.samples");
        assert_eq!(samples[0].value, 120.0);
        assert_eq!(samples[1].value, 6.25);
        assert!(samples[2].labels.is_empty());
    }

    #[test]
    fn a_bare_port_binds_localhost_and_other_addresses_only_when_written_out() {
        assert_eq!(parse_metrics_addr("9898").unwrap(), "127.0.0.1:9898".parse::<SocketAddr>().unwrap());
        assert!(parse_metrics_addr("9898").unwrap().ip().is_loopback());
        assert_eq!(parse_metrics_addr("0.0.0.0:9898").unwrap(), "0.0.0.0:9898".parse::<SocketAddr>().unwrap());
        assert_eq!(parse_metrics_addr("[::1]:9898").unwrap(), "[::1]:9898".parse::<SocketAddr>().unwrap());
        let err = parse_metrics_addr("metrics.example:9898").unwrap_err();
        assert!(err.contains("neither a port"), "{err}");
        assert!(parse_metrics_addr("70000").is_err());
    }
}
