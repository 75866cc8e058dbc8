//! `distillery bench ...`: speed measured against a named baseline in the same run, printed as
//! ratios.

mod judge;
mod packer;
mod runtime;
mod sampler;
mod trainer;
mod trainer_memory;

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Records/s and MB/s of large records through the pass-through processor (consume,
    /// decode, process, encode, produce, commit) beside a bare rdkafka copy loop and the raw
    /// produce-then-consume rate on the same broker: the ratio is the runtime's overhead.
    Runtime {
        /// Timed records (after a warm-up of 200 that are not timed). Runs shorter than a few
        /// seconds are dominated by noise on a small machine.
        #[arg(long, default_value_t = 8000)]
        records: usize,
        /// Size of each record's problem text, in KiB.
        #[arg(long, default_value_t = 60)]
        record_kib: usize,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Use this broker instead of starting the local one.
        #[arg(long, env = "DISTILLERY_BOOTSTRAP_SERVERS")]
        bootstrap_servers: Option<String>,
    },
    /// Chat-completion requests/s of the samplers' client against the local OpenAI-compatible
    /// server (zero latency), beside the `openai` Python client (asyncio) against the same
    /// server in the same run.
    Sampler {
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests the Python client sends (it is slower; its rate is per request).
        #[arg(long, default_value_t = 4000)]
        python_requests: usize,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Tokens/s of template + tokenize + mask + online FFD on synthetic traces (lengths like
    /// the paper's), beside HF tokenizers + jinja2 + TRL's pack_dataset(bfd) in Python on the
    /// same traces, and the fill ratio beside offline FFD's.
    Packer {
        #[arg(long, default_value_t = 20_000)]
        traces: usize,
        #[arg(long, default_value_t = 60_000)]
        row_tokens: usize,
        /// Mistral's tekken_240718.json (installed by .ci/install-tools by default).
        #[arg(long)]
        tekken: Option<PathBuf>,
    },
    /// The judge's rule verifier on labelled answer pairs (the judge's own model-style
    /// responses, and MATH-500 gold answers against rewrites and wrong values): the share it
    /// decides without the LLM judge, its wrong decisions and answers/s, beside Hugging Face's
    /// math-verify on the same pairs.
    Judge {
        /// MATH-500 `test.jsonl` (shipped in topology/data/benchmarks).
        #[arg(long, default_value = "topology/data/benchmarks/math500/test.jsonl")]
        math500: PathBuf,
        /// The judge's labelled pairs (JSONL: shape, gold, answer, equivalent).
        #[arg(long, default_value = "processors/judge/tests/data/labelled_pairs.jsonl")]
        labelled: PathBuf,
    },
    /// Training tokens/s and MFU of the trainer's candle decoder (forward + backward + AdamW
    /// over packed rows, completion-masked cross-entropy) for named model shapes, beside the same
    /// model in PyTorch eager (scripts/bench_trainer_torch.py) on the same rows in the same run.
    Trainer(trainer::TrainerBenchArgs),
    /// The trainer's custom ops (rms_norm, softmax, log_softmax, rope, packed attention,
    /// cross-entropy) and a small model, forward and gradients, on --device against the CPU in
    /// f32 and bf16; exits non-zero on any mismatch (part of scripts/gpu-check.sh).
    TrainerOpsCheck(trainer::OpsCheckArgs),
    /// A tiny model learns the trainer test's synthetic packed dataset on --device: exits
    /// non-zero unless the loss falls by more than half (part of scripts/gpu-check.sh).
    TrainerLearnCheck(trainer::LearnCheckArgs),
    /// Peak memory and step time of one packed row per step on a real student (SmolLM2-135M),
    /// by row length, with the fused ops (with and without layer recomputation) beside the
    /// composite reference ops in the same run; each case in its own process.
    TrainerMemory(trainer_memory::TrainerMemoryArgs),
}

pub async fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Runtime { records, record_kib, partitions, bootstrap_servers } => {
            runtime::run(records, record_kib, partitions, bootstrap_servers).await
        }
        Bench::Sampler { requests, python_requests, concurrency } => {
            sampler::run(requests, python_requests, concurrency).await
        }
        Bench::Judge { math500, labelled } => judge::run(&math500, &labelled),
        Bench::Packer { traces, row_tokens, tekken } => packer::run(traces, row_tokens, tekken),
        Bench::Trainer(args) => trainer::run(args),
        Bench::TrainerOpsCheck(args) => trainer::ops_check(args),
        Bench::TrainerLearnCheck(args) => trainer::learn_check(args),
        Bench::TrainerMemory(args) => trainer_memory::run(args),
    }
}

/// The Python of the benchmark baselines' virtualenv (made by `.ci/install-tools`).
fn venv_python() -> PathBuf {
    std::env::var_os("DISTILLERY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/distillery-venv"))
        .join("bin/python")
}

/// Runs a baseline script (shipped inside the binary) and parses the JSON line it prints.
fn run_python(script: &str, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let file = tempfile::Builder::new().suffix(".py").tempfile()?;
    std::fs::write(file.path(), script)?;
    let python = venv_python();
    let output = std::process::Command::new(&python).arg(file.path()).args(args).output().map_err(|e| {
        anyhow::anyhow!("cannot run the baseline with {} ({e}); run `bash .ci/install-tools` first", python.display())
    })?;
    anyhow::ensure!(output.status.success(), "the Python baseline failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| anyhow::anyhow!("baseline printed {line:?}: {e}"))
}

/// Deterministic words of math reasoning (a small vocabulary drawn by a linear congruential
/// generator): text that tokenizes and compresses roughly like real traces.
pub(crate) struct ReasoningWords {
    state: u64,
}

impl ReasoningWords {
    const WORDS: &'static [&'static str] = &[
        "so",
        "the",
        "answer",
        "is",
        "let",
        "me",
        "check",
        "x",
        "=",
        "+",
        "2",
        "squared",
        "wait",
        "then",
        "we",
        "get",
        "\\frac{1}{2}",
        "because",
        "sum",
        "of",
        "terms",
        "therefore",
        "compute",
        "factor",
        "(",
        ")",
        "equation",
        "7",
        "13",
        "Hmm,",
        "maybe",
        "triangle",
        "angle",
        "prime",
        "divisible",
        "remainder",
        "modulo",
        "integer",
    ];

    pub(crate) fn new(seed: u64) -> ReasoningWords {
        ReasoningWords { state: seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) }
    }

    /// A number in 0..n.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.state >> 33) % n
    }

    pub(crate) fn word(&mut self) -> &'static str {
        Self::WORDS[self.below(Self::WORDS.len() as u64) as usize]
    }

    /// `count` words separated by spaces.
    pub(crate) fn words(&mut self, count: usize) -> String {
        (0..count).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}
