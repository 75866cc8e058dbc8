//! Live progress of a one-process topology run (the quickstart): one line per processor
//! instance with what its own counters say (records in and out, dead letters; shards for
//! packers; step and loss for trainers; results for evaluators). The counters are the
//! processors' Prometheus metrics, recorded in memory, so the lines show exactly what a
//! Prometheus scrape of a production deployment would.
//!
//! On a terminal the lines are indicatif spinners redrawn a few times a second; otherwise
//! (CI logs, `| tee`) the same lines are printed every 15 seconds.

use distillery_runtime::telemetry::{self, MetricSample};
use distillery_runtime::Topology;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics_exporter_prometheus::PrometheusHandle;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct LiveProgress {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveProgress {
    /// Starts drawing; `metrics` is the handle of this process's in-memory recorder.
    pub fn start(topology: Arc<Topology>, metrics: PrometheusHandle) -> LiveProgress {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let on_terminal = std::io::stderr().is_terminal();
            let bars = MultiProgress::with_draw_target(if on_terminal {
                ProgressDrawTarget::stderr_with_hz(4)
            } else {
                ProgressDrawTarget::hidden()
            });
            let style = ProgressStyle::with_template("{spinner:.green} {prefix:<24} {wide_msg}")
                .expect("a valid template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓");
            let lines: Vec<(String, String, ProgressBar)> = topology
                .processors
                .iter()
                .map(|(name, instance)| {
                    let bar = bars.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(name.clone()));
                    (name.clone(), instance.kind.clone(), bar)
                })
                .collect();
            let mut last_print = Instant::now();
            loop {
                let samples = telemetry::parse_exposition(&metrics.render());
                for (name, kind, bar) in &lines {
                    bar.set_message(describe(&topology, name, kind, &samples));
                    bar.tick();
                }
                let finishing = *stopped.borrow();
                if !on_terminal && (finishing || last_print.elapsed() >= Duration::from_secs(15)) {
                    last_print = Instant::now();
                    for (name, _, bar) in &lines {
                        println!("  {name:<24} {}", bar.message());
                    }
                }
                if finishing {
                    break;
                }
                tokio::select! {
                    _ = stopped.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            for (_, _, bar) in &lines {
                bar.finish();
            }
        });
        LiveProgress { stop, task }
    }

    /// Draws the last state and stops.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One processor's line.
fn describe(topology: &Topology, name: &str, kind: &str, samples: &[MetricSample]) -> String {
    // Counters, as whole numbers.
    let count = |metric: &str, label: &str, value: &str, topic: Option<&str>| -> u64 {
        samples
            .iter()
            .filter(|s| s.name == metric && s.labels.get(label).is_some_and(|v| v == value))
            .filter(|s| topic.is_none_or(|t| s.labels.get("topic").is_some_and(|v| v == t)))
            .map(|s| s.value as u64)
            .sum()
    };
    let sum = |metric: &str, label: &str, value: &str| count(metric, label, value, None);
    let records_in = sum(telemetry::RECORDS_IN, "processor", name);
    let records_out = sum(telemetry::RECORDS_OUT, "processor", name);
    let dead = sum(telemetry::RECORDS_DEAD_LETTERED, "processor", name);
    let dead_letters = if dead > 0 { format!(" · dead letters {dead}") } else { String::new() };
    match kind {
        "feeder" => format!("published {records_out}{dead_letters}"),
        "packer" => {
            let style = topology.processors[name].settings.get("style").and_then(|v| v.as_str()).unwrap_or_default();
            let shards = sum("distillery_packer_shards_total", "style", style);
            format!("in {records_in} · shards {shards}{dead_letters}")
        }
        "trainer" => {
            let run = format!("{}/{name}", topology.experiment);
            let steps = sum("distillery_trainer_steps_total", "run", &run);
            let loss =
                samples.iter().find(|s| s.name == "distillery_trainer_loss" && s.labels.get("run") == Some(&run));
            let checkpoints_topic =
                topology.processors[name].outputs.get("checkpoints").map(|t| topology.topic_name(t));
            let checkpoints = count(telemetry::RECORDS_OUT, "processor", name, checkpoints_topic.as_deref());
            match loss {
                Some(loss) => format!("step {steps} · loss {:.3} · checkpoints {checkpoints}", loss.value),
                None => "waiting for shards".into(),
            }
        }
        "evaluator" => format!("checkpoints {records_in} · eval results {records_out}{dead_letters}"),
        _ => format!("in {records_in} · out {records_out}{dead_letters}"),
    }
}
