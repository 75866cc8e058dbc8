//! The paper's report from an experiment's records: Table 1 (per student run and teacher
//! style: pass@8 and average generated tokens on AIME25, GSM8K and MATH-500), the token ratio
//! between styles, and Figure 1 (training loss against step, `loss_vs_step.png`).
//!
//! Rendering is a pure function of the records ([`render_markdown`], [`crate::plot`]), so it
//! is tested without a broker; [`read_topics`] fetches the records (a read of the topics from
//! the beginning). A partial run renders too: what has no record yet reads "missing" (never
//! 0), and the report lists what is missing.

use distillery_runtime::reader::read_to_end;
use distillery_runtime::{Connection, Topology};
use distillery_schemas::{decode, EvalResult, Record, RecordKind, TrainMetrics};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The columns of Table 1: (canonical benchmark name, heading).
pub const TABLE_BENCHMARKS: [(&str, &str); 3] = [("aime25", "AIME25"), ("gsm8k", "GSM8K"), ("math500", "MATH-500")];
/// Table 1 reports pass@K with the paper's K.
pub const PASS_K: usize = 8;
pub const PLOT_FILE: &str = "loss_vs_step.png";
pub const REPORT_FILE: &str = "report.md";

/// Everything the report is made of.
#[derive(Debug, Clone, Default)]
pub struct ReportData {
    pub experiment: String,
    pub evals: Vec<EvalResult>,
    pub metrics: Vec<TrainMetrics>,
    /// Problems met while reading (a topic that does not exist, undecodable records).
    pub notes: Vec<String>,
}

/// `MATH-500`, `math_500`, `Math500` -> `math500`.
pub fn canonical_benchmark(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Replays leave copies with the same id: keep the newest of each.
fn latest_by_id<R: Record>(records: &[R], created: impl Fn(&R) -> i64) -> Vec<R> {
    let mut by_id: BTreeMap<&str, &R> = BTreeMap::new();
    for r in records {
        match by_id.get(r.id()) {
            Some(kept) if created(kept) > created(r) => {}
            _ => {
                by_id.insert(r.id(), r);
            }
        }
    }
    by_id.into_values().cloned().collect()
}

/// One row of Table 1: a student run with its teacher style.
struct Row<'a> {
    run: &'a str,
    style: &'a str,
    /// The latest step with any eval result.
    step: Option<i64>,
    /// Canonical benchmark -> the result shown (at `step`, else the latest earlier one).
    cells: BTreeMap<String, &'a EvalResult>,
}

fn rows<'a>(evals: &'a [EvalResult], metrics: &'a [TrainMetrics]) -> Vec<Row<'a>> {
    let mut keys: BTreeSet<(&str, &str)> = evals.iter().map(|e| (e.run.as_str(), e.style.as_str())).collect();
    keys.extend(metrics.iter().map(|m| (m.run.as_str(), m.style.as_str())));
    keys.into_iter()
        .map(|(run, style)| {
            let mine: Vec<&EvalResult> = evals.iter().filter(|e| e.run == run && e.style == style).collect();
            let step = mine.iter().map(|e| e.step).max();
            let mut cells: BTreeMap<String, &EvalResult> = BTreeMap::new();
            for e in mine {
                let slot = cells.entry(canonical_benchmark(&e.benchmark)).or_insert(e);
                if e.step > slot.step {
                    *slot = e;
                }
            }
            Row { run, style, step, cells }
        })
        .collect()
}

fn percent(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

/// 12345.6 -> "12,346".
fn tokens(v: f64) -> String {
    // Half away from zero (`{:.0}` alone rounds half to even).
    let digits = format!("{:.0}", v.max(0.0).round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pass_at(e: &EvalResult, k: usize) -> Option<f64> {
    (e.samples_per_problem as usize >= k).then(|| e.pass_at_k.get(k - 1).copied()).flatten()
}

/// The report as Markdown; it links the plot as `loss_vs_step.png` beside it.
pub fn render_markdown(data: &ReportData) -> String {
    let evals = latest_by_id(&data.evals, |e| e.created_at_ms);
    let metrics = latest_by_id(&data.metrics, |m| m.created_at_ms);
    let rows = rows(&evals, &metrics);
    let mut missing: Vec<String> = Vec::new();
    let mut md = String::new();
    let _ = writeln!(md, "# Report: experiment `{}`\n", data.experiment);
    let _ = writeln!(
        md,
        "From {} eval-result record(s) and {} train-metrics record(s) (after dropping replayed copies).\n",
        evals.len(),
        metrics.len()
    );
    if evals.is_empty() {
        missing.push("no eval results yet: every cell of Table 1 is missing".into());
    }
    if metrics.is_empty() {
        missing.push("no training metrics yet: Figure 1 has no lines".into());
    }

    // --- Table 1 -------------------------------------------------------------------------
    let _ = writeln!(md, "## Table 1: accuracy and generated tokens\n");
    let _ = writeln!(
        md,
        "pass@{PASS_K} in percent and average generated tokens per sample (reasoning included), per student run \
         and teacher style, at the run's latest evaluated step. A value from an earlier step says so.\n"
    );
    let mut header = String::from("| Student (run) | Teacher style | Step |");
    let mut rule = String::from("|---|---|---:|");
    for (_, heading) in TABLE_BENCHMARKS {
        let _ = write!(header, " {heading} pass@{PASS_K} (%) | {heading} avg tokens |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    if rows.is_empty() {
        let _ =
            writeln!(md, "| missing | missing | missing |{}", " missing | missing |".repeat(TABLE_BENCHMARKS.len()));
    }
    for row in &rows {
        let step = row.step.map_or("missing".to_string(), |s| s.to_string());
        let _ = write!(md, "| {} | {} | {step} |", row.run, row.style);
        for (bench, heading) in TABLE_BENCHMARKS {
            match row.cells.get(bench) {
                None => {
                    md.push_str(" missing | missing |");
                    missing.push(format!("{} ({}): no {heading} result", row.run, row.style));
                }
                Some(e) => {
                    let earlier = if Some(e.step) != row.step {
                        missing.push(format!(
                            "{} ({}): {heading} not yet evaluated at step {step}; shown from step {}",
                            row.run, row.style, e.step
                        ));
                        format!(" (step {})", e.step)
                    } else {
                        String::new()
                    };
                    let pass = match pass_at(e, PASS_K) {
                        Some(v) => format!("{}{earlier}", percent(v)),
                        None => {
                            missing.push(format!(
                                "{} ({}): {heading} has {} sample(s) per problem; pass@{PASS_K} needs {PASS_K}",
                                row.run, row.style, e.samples_per_problem
                            ));
                            // What the run did measure, beside the gap.
                            let n = e.samples_per_problem.max(0) as usize;
                            match pass_at(e, n) {
                                Some(v) if n > 0 => format!("missing (n={n}; pass@{n} {})", percent(v)),
                                _ => format!("missing (n={n})"),
                            }
                        }
                    };
                    let _ = write!(md, " {pass} | {}{earlier} |", tokens(e.avg_generated_tokens));
                }
            }
        }
        md.push('\n');
    }

    // --- token ratio ---------------------------------------------------------------------
    let _ = writeln!(md, "\n## Token ratio between styles\n");
    // style -> canonical benchmark -> avg tokens of its rows' shown results (mean over runs).
    let mut by_style: BTreeMap<&str, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for row in &rows {
        let entry = by_style.entry(row.style).or_default();
        for (bench, e) in &row.cells {
            entry.entry(bench.clone()).or_default().push(e.avg_generated_tokens);
        }
    }
    let styles: Vec<&str> = by_style.iter().filter(|(_, b)| !b.is_empty()).map(|(s, _)| *s).collect();
    let mut benches: Vec<String> = TABLE_BENCHMARKS.iter().map(|(b, _)| b.to_string()).collect();
    for b in by_style.values().flat_map(|b| b.keys()) {
        if !benches.contains(b) {
            benches.push(b.clone());
        }
    }
    let heading =
        |b: &str| TABLE_BENCHMARKS.iter().find(|(c, _)| *c == b).map_or(b.to_string(), |(_, h)| h.to_string());
    let mean_tokens = |style: &str, bench: &str| {
        by_style.get(style).and_then(|b| b.get(bench)).map(|v| v.iter().sum::<f64>() / v.len() as f64)
    };
    if styles.len() < 2 {
        let found = if styles.is_empty() { "none".to_string() } else { styles.join(", ") };
        let _ = writeln!(md, "missing: needs eval results of two teacher styles (found: {found}).");
        missing.push(format!("token ratio: needs eval results of two teacher styles (found: {found})"));
    } else {
        let pairs: Vec<(&str, &str)> =
            styles.iter().enumerate().flat_map(|(i, a)| styles[i + 1..].iter().map(move |b| (*a, *b))).collect();
        let _ = writeln!(md, "Average generated tokens of one style divided by another's, per benchmark.\n");
        let mut header = String::from("| Benchmark |");
        let mut rule = String::from("|---|");
        for (a, b) in &pairs {
            let _ = write!(header, " {a} / {b} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
        for bench in &benches {
            let _ = write!(md, "| {} |", heading(bench));
            for (i, (a, b)) in pairs.iter().enumerate() {
                match (mean_tokens(a, bench), mean_tokens(b, bench)) {
                    (Some(x), Some(y)) if y > 0.0 => {
                        ratios[i].push(x / y);
                        let _ = write!(md, " {:.2}x |", x / y);
                    }
                    _ => md.push_str(" missing |"),
                }
            }
            md.push('\n');
        }
        md.push_str("| mean of the benchmarks above |");
        for r in &ratios {
            if r.is_empty() {
                md.push_str(" missing |");
            } else {
                let _ = write!(md, " {:.2}x |", r.iter().sum::<f64>() / r.len() as f64);
            }
        }
        md.push('\n');
    }

    // --- Figure 1 ------------------------------------------------------------------------
    let _ = writeln!(md, "\n## Figure 1: training loss vs step\n");
    let _ = writeln!(md, "![Figure 1: training loss against step for each teacher style]({PLOT_FILE})\n");
    let series = crate::plot::loss_series(&metrics);
    if !series.is_empty() {
        let _ = writeln!(md, "| Line | Steps recorded | Last step | Last loss |\n|---|---:|---:|---:|");
        for (label, points) in &series {
            let (step, loss) = points.last().copied().unwrap_or((0, f64::NAN));
            let _ = writeln!(md, "| {label} | {} | {step} | {loss:.4} |", points.len());
        }
    }
    let trained: BTreeSet<&str> = metrics.iter().map(|m| m.run.as_str()).collect();
    for run in evals.iter().map(|e| e.run.as_str()).collect::<BTreeSet<_>>() {
        if !trained.contains(run) {
            missing.push(format!("{run}: no training metrics (not in Figure 1)"));
        }
    }

    // --- every result --------------------------------------------------------------------
    if !evals.is_empty() {
        let _ = writeln!(md, "\n## Every eval result\n");
        let _ = writeln!(
            md,
            "| Run | Style | Step | Benchmark | Problems | n | pass@1 (%) | pass@n (%) | maj@n (%) | Avg tokens | Truncated (%) |\n\
             |---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut sorted: Vec<&EvalResult> = evals.iter().collect();
        sorted.sort_by(|a, b| (&a.run, &a.style, a.step, &a.benchmark).cmp(&(&b.run, &b.style, b.step, &b.benchmark)));
        let at = |v: &[f64], i: Option<usize>| i.and_then(|i| v.get(i)).map_or("missing".into(), |x| percent(*x));
        for e in sorted {
            let last = (e.samples_per_problem as usize).checked_sub(1);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                e.run,
                e.style,
                e.step,
                e.benchmark,
                e.problems,
                e.samples_per_problem,
                at(&e.pass_at_k, Some(0)),
                at(&e.pass_at_k, last),
                at(&e.majority_at_k, last),
                tokens(e.avg_generated_tokens),
                percent(e.truncated_share)
            );
        }
    }

    // --- what is missing -----------------------------------------------------------------
    let _ = writeln!(md, "\n## What is missing\n");
    missing.extend(data.notes.iter().cloned());
    if missing.is_empty() {
        let _ = writeln!(md, "Nothing: every row has all three benchmarks at its latest step.");
    }
    for m in &missing {
        let _ = writeln!(md, "- {m}");
    }
    md
}

/// Writes `report.md` and `loss_vs_step.png` into `dir` (created if needed); returns the
/// report's path.
pub fn write_report(data: &ReportData, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let metrics = latest_by_id(&data.metrics, |m| m.created_at_ms);
    std::fs::write(dir.join(PLOT_FILE), crate::plot::loss_plot_png(&metrics)?)?;
    let path = dir.join(REPORT_FILE);
    std::fs::write(&path, render_markdown(data))?;
    Ok(path)
}

/// Reads the experiment's eval-result and train-metrics topics from the beginning. The topics
/// are those of the topology whose schema is `eval_result` / `train_metrics` (the design's
/// `eval-results` / `train-metrics` when it declares none), named as the topology names them
/// with `experiment` as its experiment (`{experiment}.{topic}`).
/// A topic that does not exist yet is a note in the report, not an error.
pub async fn read_topics(connection: &Connection, topology: &Topology, experiment: &str) -> anyhow::Result<ReportData> {
    let mut topology = topology.clone();
    topology.experiment = experiment.to_string();
    let topics_of = |kind: RecordKind, default: &str| {
        let declared: Vec<String> =
            topology.topics.iter().filter(|(_, t)| t.schema == kind.name()).map(|(name, _)| name.clone()).collect();
        let short = if declared.is_empty() { vec![default.to_string()] } else { declared };
        short.into_iter().map(|s| topology.topic_name(&s)).collect::<Vec<_>>()
    };
    let mut data = ReportData { experiment: experiment.to_string(), ..ReportData::default() };
    for topic in topics_of(RecordKind::EvalResult, "eval-results") {
        data.evals.extend(read_records::<EvalResult>(connection, &topic, &mut data.notes).await?);
    }
    for topic in topics_of(RecordKind::TrainMetrics, "train-metrics") {
        data.metrics.extend(read_records::<TrainMetrics>(connection, &topic, &mut data.notes).await?);
    }
    Ok(data)
}

async fn read_records<R: Record>(
    connection: &Connection,
    topic: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<R>> {
    let (connection, name) = (connection.clone(), topic.to_string());
    let read = tokio::task::spawn_blocking(move || read_to_end(&connection, &name, Duration::from_secs(600))).await?;
    let records = match read {
        Ok(records) => records,
        Err(e) if e.to_string().contains("does not exist") => {
            notes.push(format!("topic {topic} does not exist yet"));
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut decoded = Vec::with_capacity(records.len());
    let mut bad = 0;
    for record in &records {
        match decode::<R>(&record.payload) {
            Ok(r) => decoded.push(r),
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        notes.push(format!("{topic}: {bad} record(s) could not be decoded as {} and were left out", R::KIND.name()));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{png_size, PLOT_SIZE};

    fn eval(run: &str, style: &str, step: i64, bench: &str, pass8: f64, tokens: f64) -> EvalResult {
        let mut pass = vec![0.1; 8];
        pass[7] = pass8;
        EvalResult {
            id: format!("{run}@{step}/{bench}"),
            checkpoint_id: format!("{run}@{step}"),
            run: run.into(),
            style: style.into(),
            step,
            benchmark: bench.into(),
            problems: 30,
            samples_per_problem: 8,
            pass_at_k: pass,
            majority_at_k: vec![0.2; 8],
            avg_generated_tokens: tokens,
            truncated_share: 0.0,
            temperature: 0.6,
            top_p: 0.95,
            max_tokens: 32768,
            created_at_ms: 1,
        }
    }

    fn metric(run: &str, style: &str, step: i64, loss: f64) -> TrainMetrics {
        TrainMetrics {
            id: format!("{run}@{step}"),
            run: run.into(),
            style: style.into(),
            step,
            loss,
            lr: 1e-5,
            grad_norm: 1.0,
            tokens: 1,
            completion_tokens: 1,
            tokens_per_second: 1.0,
            created_at_ms: 0,
        }
    }

    fn table_row<'a>(md: &'a str, run: &str) -> Vec<&'a str> {
        let line = md.lines().find(|l| l.starts_with(&format!("| {run} |"))).unwrap();
        line.trim_matches('|').split('|').map(str::trim).collect()
    }

    fn full_run() -> ReportData {
        let mut evals = Vec::new();
        for (bench, g, d) in [("aime25", 4000.0, 16000.0), ("gsm8k", 300.0, 1200.0), ("math500", 2000.0, 8000.0)] {
            evals.push(eval("nano-gpt-oss", "gpt-oss-120b", 3000, bench, 0.9, g));
            evals.push(eval("nano-r1", "deepseek-r1", 3000, bench, 0.875, d));
            // An earlier checkpoint, and a replayed copy of a result: neither shows in Table 1.
            evals.push(eval("nano-r1", "deepseek-r1", 1000, bench, 0.5, 1.0));
        }
        evals.push(eval("nano-r1", "deepseek-r1", 3000, "gsm8k", 0.875, 1200.0));
        let mut metrics = Vec::new();
        for step in 1..=30 {
            metrics.push(metric("nano-gpt-oss", "gpt-oss-120b", step * 100, 1.0 / step as f64));
            metrics.push(metric("nano-r1", "deepseek-r1", step * 100, 1.2 / step as f64));
        }
        ReportData { experiment: "paper".into(), evals, metrics, notes: vec![] }
    }

    #[test]
    fn table_one_has_pass_at_8_and_tokens_per_style_and_the_token_ratio() {
        let md = render_markdown(&full_run());
        assert!(md.contains(
            "| Student (run) | Teacher style | Step | AIME25 pass@8 (%) | AIME25 avg tokens | GSM8K pass@8 (%) | GSM8K avg tokens | MATH-500 pass@8 (%) | MATH-500 avg tokens |"
        ));
        assert_eq!(
            table_row(&md, "nano-gpt-oss"),
            ["nano-gpt-oss", "gpt-oss-120b", "3000", "90.0", "4,000", "90.0", "300", "90.0", "2,000"]
        );
        assert_eq!(
            table_row(&md, "nano-r1"),
            ["nano-r1", "deepseek-r1", "3000", "87.5", "16,000", "87.5", "1,200", "87.5", "8,000"]
        );
        assert!(md.contains("| Benchmark | deepseek-r1 / gpt-oss-120b |"), "{md}");
        assert!(md.contains("| AIME25 | 4.00x |") && md.contains("| mean of the benchmarks above | 4.00x |"), "{md}");
        assert!(md.contains("![Figure 1: training loss against step for each teacher style](loss_vs_step.png)"));
        assert!(md.contains("Nothing: every row has all three benchmarks"), "{md}");
        assert!(!md.contains("missing |"), "{md}");
    }

    #[test]
    fn a_partial_run_shows_missing_never_zero_and_says_what_is_missing() {
        let data = ReportData {
            experiment: "partial".into(),
            evals: vec![
                eval("nano-gpt-oss", "gpt-oss-120b", 500, "gsm8k", 0.25, 250.0),
                eval("nano-gpt-oss", "gpt-oss-120b", 1000, "MATH-500", 0.5, 1500.0),
            ],
            metrics: vec![metric("nano-r1", "deepseek-r1", 10, 1.0)],
            notes: vec!["topic partial.eval-results does not exist yet".into()],
        };
        let md = render_markdown(&data);
        assert_eq!(
            table_row(&md, "nano-gpt-oss"),
            [
                "nano-gpt-oss",
                "gpt-oss-120b",
                "1000",
                "missing",
                "missing",
                "25.0 (step 500)",
                "250 (step 500)",
                "50.0",
                "1,500"
            ]
        );
        // A style that trains but has no results yet: a row of missing cells.
        assert_eq!(
            table_row(&md, "nano-r1"),
            ["nano-r1", "deepseek-r1", "missing", "missing", "missing", "missing", "missing", "missing", "missing"]
        );
        let missing = md.split("## What is missing").nth(1).unwrap();
        for expected in [
            "nano-gpt-oss (gpt-oss-120b): no AIME25 result",
            "nano-gpt-oss (gpt-oss-120b): GSM8K not yet evaluated at step 1000; shown from step 500",
            "nano-r1 (deepseek-r1): no MATH-500 result",
            "token ratio: needs eval results of two teacher styles (found: gpt-oss-120b)",
            "nano-gpt-oss: no training metrics (not in Figure 1)",
            "topic partial.eval-results does not exist yet",
        ] {
            assert!(missing.contains(expected), "{expected} in {missing}");
        }
        assert!(!table_row(&md, "nano-r1").contains(&"0.0"));
    }

    #[test]
    fn fewer_than_eight_samples_leave_pass_at_8_missing() {
        let mut e = eval("r", "s", 1, "aime25", 0.5, 10.0);
        e.samples_per_problem = 4;
        e.pass_at_k.truncate(4);
        let md = render_markdown(&ReportData { experiment: "x".into(), evals: vec![e], ..Default::default() });
        assert!(table_row(&md, "r")[3].starts_with("missing (n=4; pass@4 "), "{}", table_row(&md, "r")[3]);
        assert!(md.contains("AIME25 has 4 sample(s) per problem; pass@8 needs 8"));
    }

    #[test]
    fn nothing_at_all_still_renders_a_report_and_a_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_report(&ReportData { experiment: "empty".into(), ..Default::default() }, dir.path()).unwrap();
        let md = std::fs::read_to_string(path).unwrap();
        assert!(md.contains("no eval results yet") && md.contains("no training metrics yet"));
        assert_eq!(png_size(&std::fs::read(dir.path().join(PLOT_FILE)).unwrap()), Some(PLOT_SIZE));
    }

    #[test]
    fn the_report_and_plot_are_written_from_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_report(&full_run(), &dir.path().join("out")).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("# Report: experiment `paper`"));
        let png = std::fs::read(dir.path().join("out").join(PLOT_FILE)).unwrap();
        assert_eq!(png_size(&png), Some(PLOT_SIZE));
    }

    #[test]
    fn benchmark_names_are_matched_loosely_and_thousands_are_separated() {
        assert_eq!(canonical_benchmark("MATH-500"), "math500");
        assert_eq!(canonical_benchmark("AIME_25"), "aime25");
        assert_eq!(tokens(1234567.4), "1,234,567");
        assert_eq!(tokens(999.6), "1,000");
        assert_eq!(tokens(12.0), "12");
        assert_eq!(tokens(52.5), "53");
    }
}
