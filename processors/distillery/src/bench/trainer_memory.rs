//! `distillery bench trainer-memory`: peak memory and step time of the trainer's training step
//! on a real student (SmolLM2-135M-Instruct from its GGUF by default) for one packed row per
//! step, by row length, beside the composite reference ops (`OpsPath::Reference`, the trainer's
//! path before the fused ops) measured in the same run.
//!
//! Each case runs in a child process of this binary (`--case`), so the peak resident set
//! (`VmHWM`) is that case's alone: weights, gradients, AdamW moments and the step's activations.

use distillery_trainer::candle_core::{DType, Device};
use distillery_trainer::distillery_model::gguf::load_gguf;
use distillery_trainer::distillery_model::model::OpsPath;
use distillery_trainer::distillery_model::{PackedRow, Student};
use distillery_trainer::optim::{AdamW, AdamWSettings};
use distillery_trainer::train::batch_gradients;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainerMemoryArgs {
    /// The student's GGUF (default: the SmolLM2-135M-Instruct file `.ci/install-tools` fetches).
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// Row lengths to measure, one row per step.
    #[arg(long, value_delimiter = ',', default_value = "1024,16384")]
    pub row_tokens: Vec<usize>,
    /// Sequences packed into each row.
    #[arg(long, default_value_t = 4)]
    pub sequences_per_row: usize,
    /// Optimizer steps per case (the first allocates the AdamW moments; the time is the last's).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Run the reference baseline and the fused ops without recomputation only on rows up to
    /// this length: both keep every layer's activations (the composite ops also every layer's
    /// attention matrices), tens of GB at 16,384 tokens.
    #[arg(long, default_value_t = 1024)]
    pub baseline_max_tokens: usize,
    /// Internal: run one case (`fused-recompute:TOKENS`, `fused:TOKENS`, `reference:TOKENS`)
    /// and print its measurement.
    #[arg(long, hide = true)]
    pub case: Option<String>,
}

/// What one child measured.
struct CaseResult {
    peak_bytes: u64,
    step_seconds: f64,
    loss: f64,
}

fn default_gguf() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/distillery-assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The process's peak resident set so far, from /proc (Linux).
fn peak_resident_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no VmHWM"))?;
    let kib: u64 = line.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok(kib * 1024)
}

/// One row of `tokens` tokens: `sequences` sequences of random ids, the first eighth of each a
/// prompt.
fn memory_row(tokens: usize, sequences: usize, vocab: usize) -> PackedRow {
    let mut rng = StdRng::seed_from_u64(17);
    let sequences = sequences.clamp(1, tokens);
    let mut lengths = vec![tokens / sequences; sequences];
    lengths[sequences - 1] += tokens % sequences;
    let input_ids = (0..tokens).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let loss_mask = lengths.iter().flat_map(|&len| (0..len).map(move |i| u8::from(i >= len / 8))).collect();
    PackedRow { input_ids, loss_mask, sequence_lengths: lengths }
}

fn run_case(gguf: &std::path::Path, case: &str, sequences: usize, steps: usize) -> anyhow::Result<CaseResult> {
    let (path, tokens) = case.split_once(':').ok_or_else(|| anyhow::anyhow!("bad case {case}"))?;
    let tokens: usize = tokens.parse()?;
    let (config, weights) = load_gguf(gguf, &Device::Cpu)?;
    let row = memory_row(tokens, sequences, config.vocab_size);
    let student = Student::from_tensors(config, weights, DType::F32, &Device::Cpu)?;
    let student = match path {
        "fused-recompute" => student.with_layer_recompute(true),
        "fused" => student.with_layer_recompute(false),
        "reference" => student.with_ops(OpsPath::Reference),
        other => anyhow::bail!("unknown path {other}"),
    };
    let mut optimizer = AdamW::new(AdamWSettings::default());
    let (mut step_seconds, mut loss) = (0.0, 0.0);
    for _ in 0..steps.max(1) {
        let started = Instant::now();
        let (batch_loss, grads) = batch_gradients(&student, std::iter::once(&row))?;
        optimizer.step(student.parameters(), grads, 1e-5)?;
        step_seconds = started.elapsed().as_secs_f64();
        loss = batch_loss;
    }
    Ok(CaseResult { peak_bytes: peak_resident_bytes()?, step_seconds, loss })
}

fn spawn_case(gguf: &std::path::Path, case: &str, args: &TrainerMemoryArgs) -> anyhow::Result<CaseResult> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "trainer-memory", "--case", case, "--gguf"])
        .arg(gguf)
        .args(["--steps", &args.steps.to_string(), "--sequences-per-row", &args.sequences_per_row.to_string()])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "case {case} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default()
    );
    let fields: std::collections::HashMap<&str, &str> =
        stdout.split_whitespace().filter_map(|word| word.split_once('=')).collect();
    let field = |name: &str| -> anyhow::Result<f64> {
        Ok(fields.get(name).ok_or_else(|| anyhow::anyhow!("case {case} printed no {name}: {stdout}"))?.parse()?)
    };
    Ok(CaseResult {
        peak_bytes: field("peak_bytes")? as u64,
        step_seconds: field("step_seconds")?,
        loss: field("loss")?,
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub fn run(args: TrainerMemoryArgs) -> anyhow::Result<()> {
    let gguf = args.gguf.clone().unwrap_or_else(default_gguf);
    anyhow::ensure!(gguf.is_file(), "{} is missing: run `bash .ci/install-tools` or pass --gguf", gguf.display());
    anyhow::ensure!(args.row_tokens.iter().all(|&t| t >= 2), "--row-tokens must be at least 2");
    anyhow::ensure!(args.sequences_per_row > 0, "--sequences-per-row must be > 0");
    if let Some(case) = &args.case {
        let result = run_case(&gguf, case, args.sequences_per_row, args.steps)?;
        println!("peak_bytes={} step_seconds={} loss={}", result.peak_bytes, result.step_seconds, result.loss);
        return Ok(());
    }
    println!(
        "distillery bench trainer-memory: {} on the CPU, f32 weights, gradients and AdamW moments, one row of {} sequences per step, {} steps per case; peak = the case's own process's VmHWM",
        gguf.file_name().unwrap_or_default().to_string_lossy(),
        args.sequences_per_row,
        args.steps
    );
    println!("baseline: the composite reference ops (the trainer before the fused ops), in the same run");
    println!(
        "{:<16} {:>8} {:>12} {:>12} {:>10} {:>14}",
        "path", "tokens", "peak GiB", "step s", "loss", "peak vs base"
    );
    for &tokens in &args.row_tokens {
        let baseline = if tokens <= args.baseline_max_tokens {
            Some(spawn_case(&gguf, &format!("reference:{tokens}"), &args)?)
        } else {
            None
        };
        if let Some(base) = &baseline {
            println!(
                "{:<16} {:>8} {:>12.2} {:>12.1} {:>10.4} {:>14}",
                "reference",
                tokens,
                gib(base.peak_bytes),
                base.step_seconds,
                base.loss,
                "1.00x"
            );
        } else {
            println!("{:<16} {:>8} {:>12} (not run: above --baseline-max-tokens)", "reference", tokens, "-");
        }
        for path in ["fused", "fused-recompute"] {
            if path == "fused" && tokens > args.baseline_max_tokens {
                println!("{:<16} {:>8} {:>12} (not run: above --baseline-max-tokens)", path, tokens, "-");
                continue;
            }
            let result = spawn_case(&gguf, &format!("{path}:{tokens}"), &args)?;
            let ratio = baseline
                .as_ref()
                .map(|b| format!("{:.2}x", result.peak_bytes as f64 / b.peak_bytes as f64))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<16} {:>8} {:>12.2} {:>12.1} {:>10.4} {:>14}",
                path,
                tokens,
                gib(result.peak_bytes),
                result.step_seconds,
                result.loss,
                ratio
            );
        }
    }
    println!("fused: the fused ops with the whole graph kept; fused-recompute: the trainer's default, each layer recomputed in backward");
    Ok(())
}
