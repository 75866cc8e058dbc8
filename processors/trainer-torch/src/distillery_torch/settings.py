"""Settings of a trainer on the torch engine: the `[processors.NAME.settings]` table.

The keys, defaults and checks are the candle trainer's (`processors/trainer/src/config.rs`:
the paper's recipe, AdamW at lr 5e-6 with 3% warmup from 5e-7, cosine decay, 64 packed rows
a step, 3,000 steps, loss on completion tokens), plus `engine = "torch"` and the `[torch]`
sub-table below. Unknown keys are an error, as `deny_unknown_fields` makes them on the Rust
side, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# --- defaults (named, as on the Rust side) ---------------------------------------------------
DEFAULT_STEPS = 3000
DEFAULT_GLOBAL_BATCH_ROWS = 64
DEFAULT_OPTIMIZER = "adamw"
DEFAULT_LEARNING_RATE = 5e-6
DEFAULT_WARMUP_RATIO = 0.03
DEFAULT_WARMUP_START_LR = 5e-7
DEFAULT_LR_SCHEDULE = "cosine"
DEFAULT_LOSS_ON = "completion"
DEFAULT_BETA1 = 0.9
DEFAULT_BETA2 = 0.999
DEFAULT_ADAM_EPS = 1e-8
DEFAULT_MAX_GRAD_NORM = 1.0
DEFAULT_CHECKPOINT_EVERY_STEPS = 100
DEFAULT_DEVICE = "cpu"
DEFAULT_COMPUTE_DTYPE = "auto"
DEFAULT_READ_AHEAD_SHARDS = 2
DEFAULT_FETCH_ATTEMPTS = 20
DEFAULT_READ_RETRY_SECS = 300

DEFAULT_PYTHON = "python3"
DEFAULT_ATTENTION = "auto"
# 4,096 positions x a 131k vocabulary is 2 GiB of f32 logits at a time, instead of 31 GB for a
# whole 60k-token row.
DEFAULT_LOSS_CHUNK_TOKENS = 4096
# transformers' own default ("5GB"); the uploads are multipart whatever the size.
DEFAULT_EXPORT_SHARD_BYTES = 5_000_000_000
DEFAULT_EXPORT_DTYPE = "auto"
# Collectives wait this long for a slow rank (a checkpoint upload through an S3 outage) before
# the process group gives up and the run exits non-zero for its supervisor to restart it.
DEFAULT_COLLECTIVE_TIMEOUT_SECS = 3600
# After SIGTERM, torchrun waits this long for its workers to checkpoint and exit before it
# SIGKILLs them (its own default, 30 s, is too short to upload a 12B student's checkpoint).
DEFAULT_SHUTDOWN_TIMEOUT_SECS = 900

ATTENTION_KINDS = ("auto", "sdpa", "flex", "varlen")
EXPORT_DTYPES = ("auto", "float32", "bfloat16")


class SettingsError(ValueError):
    """A settings table that does not parse or does not pass the checks."""


@dataclass(frozen=True)
class TorchSettings:
    """The `[processors.NAME.settings.torch]` table: how torchrun starts the engine and how
    the engine runs the model."""

    python: str = DEFAULT_PYTHON
    """The Python that `distillery run` starts torchrun with (`{python} -m torch.distributed.run`);
    it must have this package and its pinned dependencies installed."""
    nproc_per_node: int = 1
    """Worker processes (ranks) per node: usually the node's GPU count."""
    nnodes: int = 1
    """Nodes in the run. Above 1, `rdzv_endpoint` is required."""
    rdzv_endpoint: str | None = None
    """`HOST:PORT` of the c10d rendezvous for several nodes; unset: `--standalone` (one node)."""
    rdzv_id: str | None = None
    """Rendezvous id shared by the nodes of one run; unset: `{experiment}.{processor}`."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping
    them: needed for 12B students on 60k-token rows, costs about a third more compute."""
    attention: str = DEFAULT_ATTENTION
    """How attention keeps packed sequences apart: `auto` (`varlen` on CUDA, `sdpa` on CPU),
    `sdpa` (one SDPA call per row with a block-diagonal causal mask; memory grows with the
    row length squared), `flex` (flex attention with a block mask built from the sequence
    boundaries; compiled) or `varlen` (PyTorch's variable-length flash/cuDNN kernel, CUDA
    only)."""
    loss_chunk_tokens: int = DEFAULT_LOSS_CHUNK_TOKENS
    """Positions whose logits exist at once when the loss is computed: the row's logits are
    never all materialised."""
    export_shard_bytes: int = DEFAULT_EXPORT_SHARD_BYTES
    """Largest safetensors file of a checkpoint's Hugging Face export."""
    export_dtype: str = DEFAULT_EXPORT_DTYPE
    """Weights' dtype in the Hugging Face export: `auto` (bfloat16 when computing in bf16,
    else float32), `float32` or `bfloat16`. The resumable state keeps f32 regardless."""
    scratch_dir: str | None = None
    """Local folder for checkpoint files on their way to and from `checkpoint_store`
    (needs room for one checkpoint per node); unset: the system's temporary folder."""
    collective_timeout_secs: int = DEFAULT_COLLECTIVE_TIMEOUT_SECS
    """How long a collective waits for the slowest rank before the run fails."""
    shutdown_timeout_secs: int = DEFAULT_SHUTDOWN_TIMEOUT_SECS
    """torchrun's `--shutdown-timeout`: how long after SIGTERM the workers have to write their
    checkpoint before torchrun SIGKILLs them (the last complete checkpoint then stands)."""


@dataclass(frozen=True)
class TrainerSettings:
    """A trainer's settings; fields as in `processors/trainer/src/config.rs`."""

    student: str
    """The student to start from: a Hugging Face model folder (path or `s3://` URL) or
    `random` (with `model_config`)."""
    style: str
    """The teacher style this trainer learns (recorded in metrics and checkpoints)."""
    checkpoint_store: str
    """Where checkpoints go: a folder path, `file://` or `s3://` URL."""
    engine: str = "candle"
    """`torch` for this engine (`candle`, the default, is the embedded Rust trainer)."""
    model_config: str | None = None
    """For `student = "random"`: the path or URL of a Hugging Face `config.json`."""
    init_seed: int = 0
    """Seed of random initialisation."""
    tokenizer: str | None = None
    """`tokenizer.json` copied into every checkpoint so it loads on its own."""
    tokenizer_config: str | None = None
    """`tokenizer_config.json` (with the chat template) copied into every checkpoint."""
    steps: int = DEFAULT_STEPS
    """Optimizer steps of the whole run (also the length of the lr schedule)."""
    global_batch_rows: int = DEFAULT_GLOBAL_BATCH_ROWS
    """Packed rows per optimizer step, split over the ranks in consecutive slices."""
    optimizer: str = DEFAULT_OPTIMIZER
    """Only `adamw`."""
    learning_rate: float = DEFAULT_LEARNING_RATE
    """Peak learning rate."""
    warmup_ratio: float = DEFAULT_WARMUP_RATIO
    """Share of the steps spent warming up linearly from `warmup_start_lr`."""
    warmup_start_lr: float = DEFAULT_WARMUP_START_LR
    """Learning rate of the first step."""
    min_lr: float = 0.0
    """Learning rate the cosine decay ends at."""
    lr_schedule: str = DEFAULT_LR_SCHEDULE
    """Only `cosine`."""
    loss_on: str = DEFAULT_LOSS_ON
    """Only `completion`: the loss covers the loss-mask tokens of the shards."""
    beta1: float = DEFAULT_BETA1
    """AdamW's first-moment decay."""
    beta2: float = DEFAULT_BETA2
    """AdamW's second-moment decay."""
    adam_eps: float = DEFAULT_ADAM_EPS
    """AdamW's epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM
    """Clip the global gradient norm to this (0 disables)."""
    checkpoint_every_steps: int = DEFAULT_CHECKPOINT_EVERY_STEPS
    """A resumable checkpoint (and its `checkpoints` event) every this many steps."""
    device: str = DEFAULT_DEVICE
    """`cpu`, `cuda` or `cuda:N`; under torchrun each rank takes `cuda:LOCAL_RANK`."""
    compute_dtype: str = DEFAULT_COMPUTE_DTYPE
    """`auto` (bf16 on CUDA, f32 on CPU), `f32` or `bf16`. Master weights, optimizer state and
    gradient reductions stay f32 whatever this says."""
    read_ahead_shards: int = DEFAULT_READ_AHEAD_SHARDS
    """Shards downloaded ahead of the one training."""
    fetch_attempts: int = DEFAULT_FETCH_ATTEMPTS
    """Answers that a shard is missing before it is dead-lettered (an unreachable store is
    waited for, however long)."""
    stop_when_idle_secs: int | None = None
    """With no new shard for this long, train what is left as a last (partial) batch, write a
    final checkpoint and stop. Unset: wait for shards until `steps` are done."""
    read_retry_secs: int = DEFAULT_READ_RETRY_SECS
    """How long reading the shards topic (opening it, polling it, reading the run's checkpoint
    events and dead letters) or sending a dead letter may keep failing before the trainer gives
    up: it then checkpoints what it trained (non-final) and exits non-zero for its supervisor to
    restart it. The run is never marked complete by a failure."""
    torch: TorchSettings = field(default_factory=TorchSettings)
    """The engine's own settings (the `[torch]` sub-table)."""

    @staticmethod
    def from_table(table: dict[str, Any]) -> TrainerSettings:
        """Parses and checks a settings table (as `tomllib` reads it)."""
        settings = _build(TrainerSettings, table, "settings")
        settings.check()
        return settings

    def check(self) -> None:
        """The candle trainer's checks, plus the torch sub-table's."""

        def one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise SettingsError(f"{name} = '{value}' is not supported (one of {list(allowed)})")

        one_of("engine", self.engine, ("torch",))
        one_of("optimizer", self.optimizer, ("adamw",))
        one_of("lr_schedule", self.lr_schedule, ("cosine",))
        one_of("loss_on", self.loss_on, ("completion",))
        one_of("compute_dtype", self.compute_dtype, ("auto", "f32", "bf16"))
        one_of("torch.attention", self.torch.attention, ATTENTION_KINDS)
        one_of("torch.export_dtype", self.torch.export_dtype, EXPORT_DTYPES)
        if not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise SettingsError(f"device = '{self.device}' is not cpu, cuda or cuda:N")
        if self.student == "random" and self.model_config is None:
            raise SettingsError('student = "random" needs model_config (the path or URL of a config.json)')
        if self.student.endswith(".gguf"):
            raise SettingsError(
                "the torch engine trains Hugging Face model folders; a .gguf student is for the candle engine"
            )
        if self.steps <= 0 or self.global_batch_rows <= 0 or self.checkpoint_every_steps <= 0:
            raise SettingsError("steps, global_batch_rows and checkpoint_every_steps must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise SettingsError(f"warmup_ratio {self.warmup_ratio} is not in [0, 1)")
        if self.read_retry_secs < 0:
            raise SettingsError(f"read_retry_secs {self.read_retry_secs} must be >= 0")
        t = self.torch
        if t.nproc_per_node <= 0 or t.nnodes <= 0:
            raise SettingsError("torch.nproc_per_node and torch.nnodes must be > 0")
        if t.nnodes > 1 and t.rdzv_endpoint is None:
            raise SettingsError("torch.nnodes > 1 needs torch.rdzv_endpoint (HOST:PORT of the c10d rendezvous)")
        if min(t.loss_chunk_tokens, t.export_shard_bytes, t.collective_timeout_secs, t.shutdown_timeout_secs) <= 0:
            raise SettingsError(
                "torch.loss_chunk_tokens, torch.export_shard_bytes, torch.collective_timeout_secs and "
                "torch.shutdown_timeout_secs must be > 0"
            )


def _build(cls: type[Any], table: dict[str, Any], where: str) -> Any:
    """A dataclass from a TOML table: unknown keys and wrongly typed values are errors."""
    if not isinstance(table, dict):
        raise SettingsError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise SettingsError(f"unknown field `{unknown[0]}` in {where}, expected one of: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, value in table.items():
        if name == "torch" and cls is TrainerSettings:
            values[name] = _build(TorchSettings, value, f"{where}.torch")
            continue
        values[name] = _checked(value, fields[name].type, f"{where}.{name}")
    missing = [
        f.name
        for f in fields.values()
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SettingsError(f"missing field `{missing[0]}` in {where}")
    return cls(**values)


def _checked(value: Any, annotation: object, where: str) -> Any:
    """`value` if it matches the field's (string) annotation; integers widen to floats."""
    text = str(annotation)
    optional = text.endswith("| None")
    base = text.removesuffix("| None").strip()
    if value is None and optional:
        return None
    expected: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
    types = expected.get(base)
    if types is None:
        return value
    # TOML booleans are ints in Python; never accept one for the other.
    if isinstance(value, bool) != (base == "bool") or not isinstance(value, types):
        raise SettingsError(f"{where} must be a {base}, not {value!r}")
    number: Any = value  # an int or a float, checked above
    return float(number) if base == "float" else value
