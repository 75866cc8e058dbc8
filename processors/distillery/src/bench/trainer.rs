//! `distillery bench trainer`: training throughput (tokens/s of forward + backward + AdamW step
//! over packed rows, completion-masked cross-entropy) and model FLOP utilisation of the
//! trainer's candle decoder, beside the same model in PyTorch eager
//! (`scripts/bench_trainer_torch.py`) on the same rows in the same run.
//!
//! Also the GPU checks of `scripts/gpu-check.sh`:
//! - `distillery bench trainer-ops-check`: every custom op of `distillery_model::reference` (and a
//!   whole small model) on the device against the CPU in f32, forward and gradients, in f32 and
//!   bf16 with tolerances for each. On `--device cpu` it compares the CPU against itself in f32
//!   (must be exact) and the CPU's bf16 against its f32 (a self-check of the harness).
//! - `distillery bench trainer-learn-check`: the trainer test's synthetic packed dataset on the
//!   tiny model, 60 AdamW steps on the device; the loss must fall by more than half.

use distillery_trainer::candle_core::{self, DType, Device, Tensor, Var};
use distillery_trainer::distillery_model::reference::{self as ops, RotaryTables};
use distillery_trainer::distillery_model::{learnable_rows, ModelConfig, PackedRow, Student};
use distillery_trainer::optim::{AdamW, AdamWSettings};
use distillery_trainer::train::{batch_gradients, open_device};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

const TORCH_SCRIPT: &str = include_str!("../../../../scripts/bench_trainer_torch.py");

/// H200 (and H100 SXM) dense bf16 tensor-core peak, TFLOP/s.
const H200_BF16_DENSE_TFLOPS: f64 = 989.0;

/// Learning rate of the benchmark's steps (it changes nothing about their speed).
const BENCH_LR: f64 = 1e-4;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainerBenchArgs {
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a binary built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Comma-separated configs out of tiny, gpt2-small, llama-0.5b. Default: tiny,gpt2-small
    /// on CPU; gpt2-small,llama-0.5b on CUDA.
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<String>,
    /// Packed rows per optimizer step (accumulated one row at a time, as the trainer does).
    /// Default: 2 on CPU, 8 on CUDA.
    #[arg(long)]
    pub rows: Option<usize>,
    /// Tokens per packed row. Default: 256 on CPU, 4096 on CUDA.
    #[arg(long)]
    pub row_tokens: Option<usize>,
    /// Sequences packed into each row (lengths drawn between 0.5x and 1.5x the mean).
    #[arg(long, default_value_t = 4)]
    pub sequences_per_row: usize,
    /// Timed optimizer steps. Default: 3 on CPU, 10 on CUDA.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Untimed steps first (allocation, kernel compilation, caches). Default: 1 on CPU, 3 on CUDA.
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// `auto` (bf16 compute with f32 master weights on CUDA, f32 on CPU), `f32` or `bf16`.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Peak FLOP/s for MFU, in TFLOP/s. Default on CUDA: 989 (H100/H200 dense bf16); on CPU: the
    /// rate of a large f32 candle matmul timed in this run (an achievable peak, not a datasheet
    /// one).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// The Python with torch for the baseline (default ~/.cache/distillery-venv/bin/python, or
    /// $DISTILLERY_VENV/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// The baseline's attention: `per-sequence` (SDPA, causal, once per packed sequence, as the
    /// trainer does) or `block-mask` (SDPA once per row with a block-diagonal causal mask).
    #[arg(long, default_value = "per-sequence")]
    pub torch_attention: String,
    /// Start PyTorch from distillery's initial weights (written to a temporary safetensors
    /// file) instead of its own draw, so the first-step losses must agree: a check that both
    /// sides run the same model.
    #[arg(long)]
    pub same_weights: bool,
    /// Recompute each layer in backward (the trainer's default, for memory) instead of keeping
    /// the whole graph as PyTorch eager does: costs about one more forward per step.
    #[arg(long)]
    pub recompute_layers: bool,
    /// CPU threads for both sides (candle through RAYON_NUM_THREADS, torch through
    /// torch.set_num_threads). Default: each library's own (the physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the rows and of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct OpsCheckArgs {
    /// The device checked against the CPU (f32 reference).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Comma-separated compute dtypes to check: f32, bf16.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["f32".to_string(), "bf16".to_string()])]
    pub dtypes: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LearnCheckArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32` or `bf16`.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    /// The last step's loss must be below this fraction of the first's.
    #[arg(long, default_value_t = 0.5)]
    pub max_loss_ratio: f64,
}

fn compute_dtype(name: &str, device: &Device) -> anyhow::Result<DType> {
    Ok(match (name, device.is_cuda()) {
        ("bf16", _) | ("auto", true) => DType::BF16,
        ("f32", _) | ("auto", false) => DType::F32,
        (other, _) => anyhow::bail!("dtype '{other}' is not auto, f32 or bf16"),
    })
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// A named model shape, and how it relates to the model it is named after.
pub fn named_config(name: &str) -> anyhow::Result<(ModelConfig, &'static str)> {
    let base = ModelConfig::tiny(16);
    Ok(match name {
        "tiny" => (base, "ModelConfig::tiny(16), the trainer tests' model"),
        "gpt2-small" => (
            ModelConfig {
                vocab_size: 50257,
                hidden_size: 768,
                // SwiGLU's three matrices of 2048 hold as many weights as GPT-2's two of 3072.
                intermediate_size: 2048,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                num_key_value_heads: Some(12),
                tie_word_embeddings: true,
                max_position_embeddings: 1024,
                ..base
            },
            "GPT-2 small's size (12 x 768, 12 heads, vocab 50257, tied) in Llama-style blocks: RMSNorm, rotary, SwiGLU 2048",
        ),
        "llama-0.5b" => (
            ModelConfig {
                vocab_size: 151936,
                hidden_size: 896,
                intermediate_size: 4864,
                num_hidden_layers: 24,
                num_attention_heads: 14,
                num_key_value_heads: Some(2),
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: true,
                max_position_embeddings: 32768,
                ..base
            },
            "Qwen2.5-0.5B's shape (24 x 896, 14 heads, 2 kv heads, SwiGLU 4864, vocab 151936, tied), Llama blocks without q/k/v biases",
        ),
        other => anyhow::bail!("unknown config '{other}' (tiny, gpt2-small, llama-0.5b)"),
    })
}

/// Weights that matmuls touch for every token: every layer's projections (embedding lookup and
/// norms excluded; the lm_head is counted separately, on the completion targets only).
fn body_matmul_parameters(c: &ModelConfig) -> f64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let (q, kv) = ((c.num_attention_heads * c.head_dim()) as f64, (c.kv_heads() * c.head_dim()) as f64);
    c.num_hidden_layers as f64 * (h * q + 2.0 * h * kv + q * h + 3.0 * h * i)
}

/// Model FLOPs of one optimizer step (forward + backward = 3x forward): 6 * body weights * tokens
/// + 6 * lm_head weights * completion targets (the trainer computes logits only there) + the
/// attention matmuls, 12 * layers * heads * head_dim * sum of squared sequence lengths (full
/// score matrices, not halved for causality: both sides compute them whole).
fn flops_per_step(c: &ModelConfig, rows: &[PackedRow]) -> f64 {
    let tokens: usize = rows.iter().map(|r| r.input_ids.len()).sum();
    let targets: usize = rows.iter().map(|r| r.completion_tokens()).sum();
    let squares: f64 = rows.iter().flat_map(|r| r.sequence_lengths.iter()).map(|&s| (s * s) as f64).sum();
    let attention_width = (c.num_attention_heads * c.head_dim()) as f64;
    6.0 * body_matmul_parameters(c) * tokens as f64
        + 6.0 * (c.vocab_size * c.hidden_size) as f64 * targets as f64
        + 12.0 * c.num_hidden_layers as f64 * attention_width * squares
}

/// Deterministic packed rows: `sequences` sequences of varied length per row, the first ~12% of
/// each a prompt (loss mask 0), the rest completion; uniform random token ids.
fn bench_rows(rows: usize, row_tokens: usize, sequences: usize, vocab: usize, seed: u64) -> Vec<PackedRow> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7261_696e);
    let sequences = sequences.clamp(1, (row_tokens / 4).max(1));
    (0..rows)
        .map(|_| {
            let weights: Vec<f64> = (0..sequences).map(|_| rng.gen_range(0.5..1.5)).collect();
            let total: f64 = weights.iter().sum();
            let mut lengths: Vec<usize> =
                weights.iter().map(|w| ((w / total * row_tokens as f64) as usize).max(2)).collect();
            let used: usize = lengths[..sequences - 1].iter().sum();
            lengths[sequences - 1] = row_tokens.saturating_sub(used).max(2);
            let mut input_ids = Vec::with_capacity(row_tokens);
            let mut loss_mask = Vec::with_capacity(row_tokens);
            for &len in &lengths {
                let prompt = (len * 12 / 100).max(1);
                for i in 0..len {
                    input_ids.push(rng.gen_range(0..vocab as u32));
                    loss_mask.push(u8::from(i >= prompt));
                }
            }
            PackedRow { input_ids, loss_mask, sequence_lengths: lengths }
        })
        .collect()
}

/// One optimizer step as the trainer takes it (`batch_gradients`, then AdamW with clipping).
/// Returns the batch loss and the seconds of the forward + backward part and of the optimizer
/// part.
fn train_step(
    student: &Student,
    optimizer: &mut AdamW,
    rows: &[PackedRow],
    lr: f64,
) -> anyhow::Result<(f64, f64, f64)> {
    let device = student.device();
    device.synchronize()?;
    let started = Instant::now();
    let (loss_total, grads) = batch_gradients(student, rows.iter())?;
    device.synchronize()?;
    let forward_backward = started.elapsed().as_secs_f64();
    let started = Instant::now();
    optimizer.step(student.parameters(), grads, lr)?;
    device.synchronize()?;
    Ok((loss_total, forward_backward, started.elapsed().as_secs_f64()))
}

struct Measured {
    tokens_per_second: f64,
    /// Medians of the timed steps: forward + backward, optimizer.
    median_forward_backward: f64,
    median_optimizer: f64,
    first_loss: f64,
    last_loss: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn measure_distillery(
    config: &ModelConfig,
    rows: &[PackedRow],
    device: &Device,
    dtype: DType,
    steps: usize,
    warmup: usize,
    seed: u64,
    save_weights: Option<&std::path::Path>,
    recompute_layers: bool,
) -> anyhow::Result<Measured> {
    let student = Student::random(config.clone(), seed, DType::F32, device)?
        .with_compute_dtype(dtype)
        .with_layer_recompute(recompute_layers);
    if let Some(path) = save_weights {
        std::fs::write(path, distillery_trainer::checkpoint::safetensors_bytes(&student.tensors())?)?;
    }
    let mut optimizer = AdamW::new(AdamWSettings::default());
    let tokens: usize = rows.iter().map(|r| r.input_ids.len()).sum();
    let (mut seconds, mut forward_backward, mut optimizer_seconds, mut losses) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for step in 0..warmup + steps {
        let (loss, fb, opt) = train_step(&student, &mut optimizer, rows, BENCH_LR)?;
        anyhow::ensure!(loss.is_finite(), "non-finite loss {loss} at step {step}");
        losses.push(loss);
        if step >= warmup {
            seconds.push(fb + opt);
            forward_backward.push(fb);
            optimizer_seconds.push(opt);
        }
    }
    Ok(Measured {
        tokens_per_second: (tokens * seconds.len()) as f64 / seconds.iter().sum::<f64>(),
        median_forward_backward: median(&forward_backward),
        median_optimizer: median(&optimizer_seconds),
        first_loss: losses[0],
        last_loss: *losses.last().expect("at least one step"),
    })
}

/// The rate of a large f32 matmul in candle on the CPU: the best of a few timed runs.
fn cpu_matmul_peak() -> anyhow::Result<(f64, String)> {
    let n = 2048;
    let device = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(5);
    let values: Vec<f32> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let a = Tensor::from_vec(values.clone(), (n, n), &device)?;
    let b = Tensor::from_vec(values, (n, n), &device)?.t()?.contiguous()?;
    a.matmul(&b)?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let started = Instant::now();
        let c = a.matmul(&b)?;
        best = best.min(started.elapsed().as_secs_f64());
        drop(c);
    }
    let flops = 2.0 * (n as f64).powi(3) / best;
    Ok((flops, format!("estimated by timing a {n}x{n} f32 candle matmul in this run (best of 4)")))
}

enum Baseline {
    Measured {
        tokens_per_second: f64,
        median_forward_backward: f64,
        median_optimizer: f64,
        first_loss: f64,
        last_loss: f64,
        parameters: u64,
        note: String,
        /// torch's own large-matmul rate in the compute dtype, FLOP/s.
        matmul_flops: f64,
    },
    Missing(String),
    Failed(String),
}

#[allow(clippy::too_many_arguments)]
fn run_torch(
    python: &PathBuf,
    config: &ModelConfig,
    rows: &[PackedRow],
    device: &str,
    dtype: DType,
    steps: usize,
    warmup: usize,
    attention: &str,
    threads: Option<usize>,
    seed: u64,
    weights: Option<&std::path::Path>,
) -> Baseline {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => return Baseline::Failed(format!("no temporary folder: {e}")),
    };
    let rows_json: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let (positions, targets) = row.targets();
            serde_json::json!({
                "input_ids": row.input_ids,
                "sequence_lengths": row.sequence_lengths,
                "positions": positions,
                "targets": targets,
            })
        })
        .collect();
    let defaults = AdamWSettings::default();
    let spec = serde_json::json!({
        "device": device,
        "dtype": dtype_name(dtype),
        "config": serde_json::from_str::<serde_json::Value>(&config.to_json()).expect("a config is JSON"),
        "rows": rows_json,
        "steps": steps,
        "warmup_steps": warmup,
        "seed": seed,
        "lr": BENCH_LR,
        "betas": [defaults.beta1, defaults.beta2],
        "eps": defaults.eps,
        "weight_decay": defaults.weight_decay,
        "max_grad_norm": defaults.max_grad_norm,
        "attention": attention,
        "threads": threads,
        "weights": weights.map(|p| p.display().to_string()),
    });
    let (script, spec_path) = (dir.path().join("bench_trainer_torch.py"), dir.path().join("spec.json"));
    if let Err(e) = std::fs::write(&script, TORCH_SCRIPT).and_then(|_| std::fs::write(&spec_path, spec.to_string())) {
        return Baseline::Failed(format!("cannot write the baseline's files: {e}"));
    }
    let output = match std::process::Command::new(python).arg(&script).arg(&spec_path).output() {
        Ok(output) => output,
        Err(e) => return Baseline::Missing(format!("cannot run {} ({e})", python.display())),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value = match serde_json::from_str(last) {
        Ok(value) => value,
        Err(_) => {
            let tail: String =
                stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Baseline::Failed(format!(
                "the script exited with {} and printed no result:\n{tail}",
                output.status
            ));
        }
    };
    if value["ok"].as_bool() == Some(true) {
        let numbers = |key: &str| -> Vec<f64> {
            value[key].as_array().into_iter().flatten().filter_map(|v| v.as_f64()).collect()
        };
        let losses = numbers("losses");
        Baseline::Measured {
            tokens_per_second: value["tokens_per_second"].as_f64().unwrap_or(f64::NAN),
            median_forward_backward: median(&numbers("forward_backward_seconds")),
            median_optimizer: median(&numbers("optimizer_seconds")),
            first_loss: losses.first().copied().unwrap_or(f64::NAN),
            last_loss: losses.last().copied().unwrap_or(f64::NAN),
            parameters: value["parameters"].as_u64().unwrap_or(0),
            matmul_flops: value["matmul_tflops"].as_f64().unwrap_or(0.0) * 1e12,
            note: format!(
                "torch {}, {} threads, {}{}, attention {}, peak memory {:.2} GiB; torch's own {} matmul runs at {:.3} TFLOP/s",
                value["torch"].as_str().unwrap_or("?"),
                value["threads"],
                value["device"].as_str().unwrap_or("?"),
                if value["autocast_bf16"].as_bool() == Some(true) { " bf16 autocast" } else { " f32" },
                value["attention"].as_str().unwrap_or("?"),
                value["peak_memory_gb"].as_f64().unwrap_or(f64::NAN),
                value["matmul"].as_str().unwrap_or("?"),
                value["matmul_tflops"].as_f64().unwrap_or(f64::NAN),
            ),
        }
    } else if value["missing"].as_str() == Some("torch") {
        Baseline::Missing(format!(
            "torch is not importable by {} ({})",
            python.display(),
            value["error"].as_str().unwrap_or("?")
        ))
    } else {
        Baseline::Failed(value["error"].as_str().unwrap_or("unknown error").to_string())
    }
}

/// Seconds with three significant digits.
fn short_seconds(seconds: f64) -> String {
    if seconds >= 100.0 {
        format!("{seconds:.0}")
    } else if seconds >= 10.0 {
        format!("{seconds:.1}")
    } else if seconds >= 1.0 {
        format!("{seconds:.2}")
    } else if seconds >= 0.1 {
        format!("{seconds:.3}")
    } else {
        format!("{seconds:.4}")
    }
}

fn install_hint(python: &std::path::Path, device: &Device) -> String {
    let python = python.display();
    if device.is_cuda() {
        format!("install a CUDA build of PyTorch for it (`{python} -m pip install torch`), or pass --python with one")
    } else {
        format!(
            "install it with `{python} -m pip install torch --index-url https://download.pytorch.org/whl/cpu` (or `{python} -m pip install torch` from PyPI: a larger CUDA build that also runs on the CPU), or pass --python with one"
        )
    }
}

pub fn run(args: TrainerBenchArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        anyhow::ensure!(threads > 0, "--threads must be > 0");
        // Before candle's first op: its matmuls and rayon's pool read it.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let device = open_device(&args.device)?;
    let cuda = device.is_cuda();
    let dtype = compute_dtype(&args.dtype, &device)?;
    let configs = if args.configs.is_empty() {
        if cuda {
            vec!["gpt2-small".to_string(), "llama-0.5b".to_string()]
        } else {
            vec!["tiny".to_string(), "gpt2-small".to_string()]
        }
    } else {
        args.configs.clone()
    };
    let configs: Vec<(String, ModelConfig, &str)> = configs
        .iter()
        .map(|name| named_config(name.trim()).map(|(c, note)| (name.trim().to_string(), c, note)))
        .collect::<anyhow::Result<_>>()?;
    let rows = args.rows.unwrap_or(if cuda { 8 } else { 2 });
    let row_tokens = args.row_tokens.unwrap_or(if cuda { 4096 } else { 256 });
    let steps = args.steps.unwrap_or(if cuda { 10 } else { 3 }).max(1);
    let warmup = args.warmup_steps.unwrap_or(if cuda { 3 } else { 1 });
    anyhow::ensure!(rows > 0 && row_tokens >= 8, "--rows must be > 0 and --row-tokens >= 8");
    anyhow::ensure!(
        ["per-sequence", "block-mask"].contains(&args.torch_attention.as_str()),
        "--torch-attention is per-sequence or block-mask"
    );
    let python = args.python.clone().unwrap_or_else(super::venv_python);

    let (peak, peak_note) = match args.peak_tflops {
        Some(t) => (t * 1e12, "given with --peak-tflops".to_string()),
        None if cuda => (
            H200_BF16_DENSE_TFLOPS * 1e12,
            "H100/H200 SXM dense bf16 tensor-core peak (use --peak-tflops for another GPU or f32)".to_string(),
        ),
        None => cpu_matmul_peak()?,
    };

    println!(
        "distillery bench trainer: device {}, {} compute (f32 master weights and AdamW moments), {rows} rows x {row_tokens} tokens per step, ~{} sequences per row, ~88% completion tokens, {steps} timed steps after {warmup} warm-up, layer recomputation {}",
        args.device,
        dtype_name(dtype),
        args.sequences_per_row,
        if args.recompute_layers { "on" } else { "off (as PyTorch eager)" }
    );
    println!("peak {:.3} TFLOP/s: {peak_note}", peak / 1e12);
    println!(
        "MFU = model FLOPs / s / peak; model FLOPs per step = 6 x body weights x tokens + 6 x lm_head weights x completion targets + 12 x layers x heads x head_dim x sum(seq_len^2) (attention, full)"
    );
    if !cuda {
        println!(
            "candle CPU threads: {}; CPU numbers are noisy on a small or shared machine ({} logical cores here, load from other processes counts): compare ratios from the same run only",
            candle_core::utils::get_num_threads(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
    }

    struct Line {
        name: String,
        params: usize,
        tokens: usize,
        ours: Measured,
        flops: f64,
        baseline: Baseline,
    }
    let mut lines = Vec::new();
    let mut mismatches: Vec<String> = Vec::new();
    for (name, config, note) in &configs {
        println!("- {name}: {note}; {:.1}M parameters", config.parameters() as f64 / 1e6);
        let packed = bench_rows(rows, row_tokens, args.sequences_per_row, config.vocab_size, args.seed);
        let tokens: usize = packed.iter().map(|r| r.input_ids.len()).sum();
        let weights_dir = tempfile::tempdir()?;
        let weights = args.same_weights.then(|| weights_dir.path().join("init.safetensors"));
        let ours = measure_distillery(
            config,
            &packed,
            &device,
            dtype,
            steps,
            warmup,
            args.seed,
            weights.as_deref(),
            args.recompute_layers,
        )?;
        let baseline = if args.no_baseline {
            Baseline::Missing("skipped with --no-baseline".into())
        } else {
            run_torch(
                &python,
                config,
                &packed,
                &args.device,
                dtype,
                steps,
                warmup,
                &args.torch_attention,
                args.threads,
                args.seed,
                weights.as_deref(),
            )
        };
        if let Baseline::Measured { parameters, note, first_loss, .. } = &baseline {
            println!("  pytorch: {note}");
            if args.same_weights {
                let gap = (first_loss - ours.first_loss).abs() / ours.first_loss.abs().max(1e-12);
                // A mean over many tokens: bf16 rounding mostly averages out.
                let tolerance = if dtype == DType::BF16 { 1e-2 } else { 1e-4 };
                let verdict = if gap <= tolerance { "ok" } else { "MISMATCH" };
                println!(
                    "  same weights on both sides: first-step loss {:.6} (distillery) vs {first_loss:.6} (pytorch), relative gap {gap:.1e} (tolerance {tolerance:.0e}): {verdict}",
                    ours.first_loss
                );
                if gap > tolerance {
                    mismatches.push(name.clone());
                }
            }
            anyhow::ensure!(
                *parameters as usize == config.parameters(),
                "the PyTorch model has {parameters} parameters, ours {}: not the same model",
                config.parameters()
            );
        }
        lines.push(Line {
            name: name.clone(),
            params: config.parameters(),
            tokens,
            flops: flops_per_step(config, &packed),
            ours,
            baseline,
        });
    }

    println!();
    println!(
        "{:<11} {:>8} {:>8} | {:>10} {:>7} {:>15} {:>15} | {:>10} {:>7} {:>15} {:>15} | {:>10}",
        "config",
        "params",
        "tok/step",
        "distillery",
        "MFU",
        "s/step",
        "loss",
        "pytorch",
        "MFU",
        "s/step",
        "loss",
        "distillery"
    );
    println!(
        "{:<11} {:>8} {:>8} | {:>10} {:>7} {:>15} {:>15} | {:>10} {:>7} {:>15} {:>15} | {:>10}",
        "", "", "", "tok/s", "", "fwd+bwd+adamw", "first>last", "tok/s", "", "fwd+bwd+adamw", "first>last", "/pytorch"
    );
    let mut missing = Vec::new();
    for line in &lines {
        let flops_per_token = line.flops / line.tokens as f64;
        let mfu = |tokens_per_second: f64| 100.0 * tokens_per_second * flops_per_token / peak;
        let split = |fb: f64, opt: f64| format!("{}+{}", short_seconds(fb), short_seconds(opt));
        let (torch_rate, torch_mfu, torch_split, torch_loss, ratio) = match &line.baseline {
            Baseline::Measured {
                tokens_per_second,
                median_forward_backward,
                median_optimizer,
                first_loss,
                last_loss,
                ..
            } => (
                format!("{tokens_per_second:.0}"),
                format!("{:.2}%", mfu(*tokens_per_second)),
                split(*median_forward_backward, *median_optimizer),
                format!("{first_loss:.3}>{last_loss:.3}"),
                format!("{:.2}", line.ours.tokens_per_second / tokens_per_second),
            ),
            Baseline::Missing(why) | Baseline::Failed(why) => {
                missing.push((line.name.clone(), matches!(line.baseline, Baseline::Missing(_)), why.clone()));
                ("-".into(), "-".into(), "-".into(), "-".into(), "-".into())
            }
        };
        println!(
            "{:<11} {:>7.1}M {:>8} | {:>10.0} {:>6.2}% {:>15} {:>15} | {:>10} {:>7} {:>15} {:>15} | {:>10}",
            line.name,
            line.params as f64 / 1e6,
            line.tokens,
            line.ours.tokens_per_second,
            mfu(line.ours.tokens_per_second),
            split(line.ours.median_forward_backward, line.ours.median_optimizer),
            format!("{:.3}>{:.3}", line.ours.first_loss, line.ours.last_loss),
            torch_rate,
            torch_mfu,
            torch_split,
            torch_loss,
            ratio
        );
    }
    println!(
        "(s/step: medians of the timed steps, forward + backward over the rows, then the AdamW step with clipping)"
    );
    let torch_matmul = lines
        .iter()
        .filter_map(|l| match l.baseline {
            Baseline::Measured { matmul_flops, .. } => Some(matmul_flops),
            _ => None,
        })
        .fold(0f64, f64::max);
    if args.peak_tflops.is_none() && !cuda && torch_matmul > peak {
        let rescaled: Vec<String> = lines
            .iter()
            .map(|l| {
                let per_token = l.flops / l.tokens as f64;
                let torch = match &l.baseline {
                    Baseline::Measured { tokens_per_second, .. } => {
                        format!("{:.2}%", 100.0 * tokens_per_second * per_token / torch_matmul)
                    }
                    _ => "-".into(),
                };
                format!("{} {:.2}% / {torch}", l.name, 100.0 * l.ours.tokens_per_second * per_token / torch_matmul)
            })
            .collect();
        println!(
            "note: torch's own f32 matmul ran at {:.3} TFLOP/s, above candle's {:.3}, so PyTorch's MFU against candle's peak can pass 100%; against torch's matmul, MFU distillery / pytorch: {}",
            torch_matmul / 1e12,
            peak / 1e12,
            rescaled.join(", ")
        );
    }
    if !missing.is_empty() {
        println!();
        for (name, is_missing, why) in &missing {
            if *is_missing {
                println!("BASELINE MISSING for {name}: {why}");
            } else {
                println!("BASELINE FAILED for {name}: {why}");
            }
        }
        if missing.iter().any(|(_, is_missing, _)| *is_missing) && !args.no_baseline {
            println!("the PyTorch numbers need torch in {}: {}", python.display(), install_hint(&python, &device));
        }
    }
    anyhow::ensure!(
        mismatches.is_empty(),
        "with the same weights, distillery's and PyTorch's first-step losses differ for {}",
        mismatches.join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// trainer-ops-check

/// Seeded normal values on the host (the same on every device).
fn randn(rng: &mut StdRng, shape: &[usize], scale: f32) -> anyhow::Result<Tensor> {
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
            scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// An input of an op: float inputs marked `grad` are differentiated.
struct Input {
    tensor: Tensor,
    grad: bool,
}

fn float_input(tensor: Tensor) -> Input {
    Input { tensor, grad: true }
}

fn constant(tensor: Tensor) -> Input {
    Input { tensor, grad: false }
}

/// The op's output (f32, on the CPU) and the gradients of `sum(output * probe)` with respect
/// to every differentiable input (f32, on the CPU).
fn evaluate(
    inputs: &[Input],
    device: &Device,
    dtype: DType,
    probe_seed: u64,
    f: &dyn Fn(&[Tensor], DType) -> candle_core::Result<Tensor>,
) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
    let mut vars = Vec::new();
    let mut tensors = Vec::new();
    for input in inputs {
        let on_device = input.tensor.to_device(device)?;
        let on_device = if input.tensor.dtype().is_float() { on_device.to_dtype(dtype)? } else { on_device };
        if input.grad {
            let var = Var::from_tensor(&on_device)?;
            tensors.push(var.as_tensor().clone());
            vars.push(var);
        } else {
            tensors.push(on_device);
        }
    }
    let output = f(&tensors, dtype)?;
    let mut rng = StdRng::seed_from_u64(probe_seed);
    let probe = randn(&mut rng, output.dims(), 1.0)?.to_device(device)?;
    let objective = (output.to_dtype(DType::F32)? * probe)?.sum_all()?;
    let grads = objective.backward()?;
    let mut gradients = Vec::new();
    for var in &vars {
        let grad = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no gradient reached an input: the graph is cut"))?;
        gradients.push(grad.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    Ok((output.to_dtype(DType::F32)?.to_device(&Device::Cpu)?, gradients))
}

/// max |a - b| / max |b| (b the reference), treating equal infinities as equal.
fn relative_error(actual: &Tensor, reference: &Tensor) -> anyhow::Result<f64> {
    let a: Vec<f32> = actual.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = reference.flatten_all()?.to_vec1()?;
    anyhow::ensure!(a.len() == b.len(), "shapes differ: {:?} vs {:?}", actual.dims(), reference.dims());
    let scale = b.iter().filter(|v| v.is_finite()).fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b) {
        let d = if x == y {
            0.0
        } else if x.is_finite() && y.is_finite() {
            (x - y).abs() as f64 / scale
        } else {
            f64::INFINITY
        };
        worst = worst.max(d);
    }
    Ok(worst)
}

struct CheckLine {
    op: String,
    dtype: &'static str,
    forward: f64,
    gradient: f64,
    tolerance: f64,
}

impl CheckLine {
    fn passed(&self) -> bool {
        self.forward <= self.tolerance && self.gradient <= self.tolerance
    }
}

/// `[len, n * head_dim]` -> `[n, len, head_dim]` (as the model splits heads).
fn split_heads(t: &Tensor, n: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let len = t.dim(0)?;
    t.reshape((len, n, head_dim))?.transpose(0, 1)?.contiguous()
}

/// The model's attention over a packed row: each sequence on its own, rotary positions from 0,
/// a causal mask, grouped-query heads.
fn packed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lengths: &[usize],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> candle_core::Result<Tensor> {
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let rotary = RotaryTables::new(head_dim, 10_000.0, longest, q.dtype(), q.device())?;
    let mut outputs = Vec::new();
    let mut start = 0;
    for &len in lengths {
        let (cos, sin) = rotary.slice(0, len)?;
        let qs = ops::rope(&split_heads(&q.narrow(0, start, len)?, heads, head_dim)?, &cos, &sin)?;
        let ks = ops::rope(&split_heads(&k.narrow(0, start, len)?, kv_heads, head_dim)?, &cos, &sin)?;
        let vs = split_heads(&v.narrow(0, start, len)?, kv_heads, head_dim)?;
        let mask = ops::causal_mask(len, 0, q.dtype(), q.device())?;
        let out = ops::attention(&qs, &ks, &vs, Some(&mask))?;
        let (n, l, d) = out.dims3()?;
        outputs.push(out.transpose(0, 1)?.reshape((l, n * d))?);
        start += len;
    }
    Tensor::cat(&outputs, 0)
}

type OpFn = Box<dyn Fn(&[Tensor], DType) -> candle_core::Result<Tensor>>;

pub fn ops_check(args: OpsCheckArgs) -> anyhow::Result<()> {
    let device = open_device(&args.device)?;
    let reference = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (heads, kv_heads, head_dim) = (4usize, 2usize, 16usize);
    let lengths = vec![7usize, 12, 3, 9];
    let total: usize = lengths.iter().sum();

    // (name, inputs, op, f32 tolerance, bf16 tolerance)
    let mut cases: Vec<(&str, Vec<Input>, OpFn, f64, f64)> = Vec::new();
    cases.push((
        "rms_norm",
        vec![float_input(randn(&mut rng, &[6, 64], 3.0)?), float_input((randn(&mut rng, &[64], 0.1)? + 1.0)?)],
        Box::new(|t, _| ops::rms_norm(&t[0], &t[1], 1e-5)),
        1e-5,
        3e-2,
    ));
    cases.push((
        "softmax_last_dim",
        vec![float_input(randn(&mut rng, &[4, 6, 33], 2.0)?)],
        Box::new(|t, _| ops::softmax_last_dim(&t[0])),
        1e-5,
        3e-2,
    ));
    cases.push((
        "log_softmax_last_dim (f32, as the loss runs it)",
        vec![float_input(randn(&mut rng, &[5, 1000], 2.0)?)],
        Box::new(|t, _| ops::log_softmax_last_dim(&t[0].to_dtype(DType::F32)?)),
        1e-5,
        3e-2,
    ));
    cases.push((
        "swiglu",
        vec![float_input(randn(&mut rng, &[5, 40], 2.0)?), float_input(randn(&mut rng, &[5, 40], 1.0)?)],
        Box::new(|t, _| ops::swiglu(&t[0], &t[1])),
        1e-5,
        3e-2,
    ));
    {
        let tables = RotaryTables::new(head_dim, 10_000.0, 10, DType::F32, &reference)?;
        cases.push((
            "rope",
            vec![
                float_input(randn(&mut rng, &[heads, 10, head_dim], 1.0)?),
                constant(tables.cos),
                constant(tables.sin),
            ],
            Box::new(|t, _| ops::rope(&t[0], &t[1], &t[2])),
            1e-5,
            3e-2,
        ));
    }
    {
        let lengths = lengths.clone();
        cases.push((
            "attention over packed sequences (rope, causal, GQA)",
            vec![
                float_input(randn(&mut rng, &[total, heads * head_dim], 1.0)?),
                float_input(randn(&mut rng, &[total, kv_heads * head_dim], 1.0)?),
                float_input(randn(&mut rng, &[total, kv_heads * head_dim], 1.0)?),
            ],
            Box::new(move |t, _| packed_attention(&t[0], &t[1], &t[2], &lengths, heads, kv_heads, head_dim)),
            1e-4,
            5e-2,
        ));
    }
    {
        let vocab = 300u32;
        let targets: Vec<u32> = (0..9).map(|_| rng.gen_range(0..vocab)).collect();
        cases.push((
            "cross_entropy_sum (f32 logits, as the model casts them)",
            vec![float_input(randn(&mut rng, &[9, vocab as usize], 2.0)?), constant(Tensor::new(targets, &reference)?)],
            Box::new(|t, _| ops::cross_entropy_sum(&t[0].to_dtype(DType::F32)?, &t[1])),
            1e-5,
            3e-2,
        ));
    }

    let mut lines = Vec::new();
    for name in &args.dtypes {
        let dtype = match name.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            other => anyhow::bail!("--dtypes: '{other}' is not f32 or bf16"),
        };
        for (index, (op, inputs, f, f32_tolerance, bf16_tolerance)) in cases.iter().enumerate() {
            // The reference sees the inputs the device sees: rounded to bf16 when it runs bf16.
            let rounded: Vec<Input> = inputs
                .iter()
                .map(|i| {
                    let tensor = if i.tensor.dtype().is_float() {
                        i.tensor.to_dtype(dtype)?.to_dtype(DType::F32)?
                    } else {
                        i.tensor.clone()
                    };
                    Ok(Input { tensor, grad: i.grad })
                })
                .collect::<anyhow::Result<_>>()?;
            let probe_seed = 1000 + index as u64;
            let (want, want_grads) = evaluate(&rounded, &reference, DType::F32, probe_seed, f.as_ref())?;
            let (got, got_grads) = evaluate(&rounded, &device, dtype, probe_seed, f.as_ref())
                .map_err(|e| anyhow::anyhow!("{op} on {} in {name}: {e}", args.device))?;
            let mut gradient = 0f64;
            for (g, w) in got_grads.iter().zip(&want_grads) {
                gradient = gradient.max(relative_error(g, w)?);
            }
            lines.push(CheckLine {
                op: op.to_string(),
                dtype: dtype_name(dtype),
                forward: relative_error(&got, &want)?,
                gradient,
                tolerance: if dtype == DType::BF16 { *bf16_tolerance } else { *f32_tolerance },
            });
        }
        lines.push(model_check(&device, dtype, args.seed)?);
    }

    println!(
        "distillery bench trainer-ops-check: {} against the CPU in f32 (inputs rounded to the checked dtype first); error = max |got - want| / max |want|",
        args.device
    );
    println!("{:<56} {:>5} {:>11} {:>11} {:>10} {:>6}", "op", "dtype", "forward", "gradients", "tolerance", "");
    for line in &lines {
        println!(
            "{:<56} {:>5} {:>11.2e} {:>11.2e} {:>10.0e} {:>6}",
            line.op,
            line.dtype,
            line.forward,
            line.gradient,
            line.tolerance,
            if line.passed() { "ok" } else { "FAIL" }
        );
    }
    let failed = lines.iter().filter(|l| !l.passed()).count();
    println!("{} checks, {} passed, {failed} failed", lines.len(), lines.len() - failed);
    anyhow::ensure!(failed == 0, "{failed} op checks failed on {}", args.device);
    Ok(())
}

/// A whole small model (two layers, GQA, untied head) on a packed row of three sequences: the
/// loss and every weight's gradient on the device against the CPU in f32.
fn model_check(device: &Device, dtype: DType, seed: u64) -> anyhow::Result<CheckLine> {
    let config = ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        tie_word_embeddings: false,
        ..ModelConfig::tiny(97)
    };
    let lengths = [7usize, 12, 5];
    let mut rng = StdRng::seed_from_u64(seed + 77);
    let n: usize = lengths.iter().sum();
    let row = PackedRow {
        input_ids: (0..n).map(|_| rng.gen_range(0..97)).collect(),
        loss_mask: (0..n).map(|i| u8::from(i % 7 != 0)).collect(),
        sequence_lengths: lengths.to_vec(),
    };
    let run = |device: &Device, dtype: DType| -> anyhow::Result<(Tensor, Vec<Tensor>)> {
        let student = Student::random(config.clone(), seed, DType::F32, device)?.with_compute_dtype(dtype);
        let (loss, _) = student.loss_sum(&row)?;
        let grads = loss.backward()?;
        let mut out = Vec::new();
        for (name, var) in student.parameters() {
            let grad = grads.get(var.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient reached '{name}'"))?;
            out.push(grad.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
        }
        Ok((loss.to_dtype(DType::F32)?.to_device(&Device::Cpu)?, out))
    };
    let (want, want_grads) = run(&Device::Cpu, DType::F32)?;
    let (got, got_grads) = run(device, dtype)?;
    let mut gradient = 0f64;
    for (g, w) in got_grads.iter().zip(&want_grads) {
        gradient = gradient.max(relative_error(g, w)?);
    }
    Ok(CheckLine {
        op: "model: loss_sum and all weight gradients, packed row".to_string(),
        dtype: dtype_name(dtype),
        forward: relative_error(&got, &want)?,
        gradient,
        tolerance: if dtype == DType::BF16 { 1e-1 } else { 1e-4 },
    })
}

// ---------------------------------------------------------------------------------------------
// trainer-learn-check

pub fn learn_check(args: LearnCheckArgs) -> anyhow::Result<()> {
    let device = open_device(&args.device)?;
    let dtype = compute_dtype(&args.dtype, &device)?;
    let student = Student::random(ModelConfig::tiny(16), 11, DType::F32, &device)?.with_compute_dtype(dtype);
    let rows = learnable_rows();
    let mut optimizer = AdamW::new(AdamWSettings { max_grad_norm: 1.0, ..AdamWSettings::default() });
    let mut losses = Vec::new();
    let started = Instant::now();
    for _ in 0..args.steps.max(1) {
        losses.push(train_step(&student, &mut optimizer, &rows, 1e-2)?.0);
    }
    let (first, last) = (losses[0], *losses.last().expect("one step at least"));
    let shown: Vec<String> = losses
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0 || *i + 1 == losses.len())
        .map(|(i, l)| format!("{}:{l:.3}", i + 1))
        .collect();
    println!(
        "distillery bench trainer-learn-check: tiny model, synthetic packed dataset, {} steps on {} in {} ({:.1}s)",
        losses.len(),
        args.device,
        dtype_name(dtype),
        started.elapsed().as_secs_f64()
    );
    println!("loss by step: {}", shown.join(" "));
    let ok = first > 2.0 && last.is_finite() && last < first * args.max_loss_ratio;
    println!(
        "loss {first:.3} -> {last:.3} (ratio {:.3}, must be < {}; the first near ln 16 = 2.77): {}",
        last / first,
        args.max_loss_ratio,
        if ok { "ok" } else { "FAIL" }
    );
    anyhow::ensure!(ok, "the loss did not fall enough: {first} -> {last}");
    Ok(())
}
