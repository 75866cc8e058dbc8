"""The settings table: the candle trainer's keys and defaults, the `[torch]` sub-table, unknown
keys refused (as `deny_unknown_fields`), and the candle trainer's checks."""

from __future__ import annotations

import tomllib

import pytest

from distillery_torch.settings import SettingsError, TorchSettings, TrainerSettings

EXAMPLE = """
engine = "torch"
student = "s3://models/NVIDIA-Nemotron-Nano-12B-v2-Base"
style = "gpt-oss-120b"
checkpoint_store = "s3://distillery/checkpoints"
device = "cuda"
[torch]
nproc_per_node = 8
nnodes = 4
rdzv_endpoint = "trainer-0:29400"
activation_checkpointing = true
"""


def parse(text: str) -> TrainerSettings:
    return TrainerSettings.from_table(tomllib.loads(text))


def test_an_example_parses_with_the_papers_recipe_as_defaults() -> None:
    s = parse(EXAMPLE)
    assert (s.steps, s.global_batch_rows, s.learning_rate, s.warmup_ratio, s.warmup_start_lr) == (3000, 64, 5e-6, 0.03, 5e-7)
    assert (s.optimizer, s.lr_schedule, s.loss_on, s.min_lr) == ("adamw", "cosine", "completion", 0.0)
    assert (s.beta1, s.beta2, s.adam_eps, s.weight_decay, s.max_grad_norm) == (0.9, 0.999, 1e-8, 0.0, 1.0)
    assert (s.checkpoint_every_steps, s.compute_dtype, s.read_ahead_shards, s.fetch_attempts) == (100, "auto", 2, 20)
    assert s.stop_when_idle_secs is None and s.init_seed == 0
    assert s.torch.nproc_per_node == 8 and s.torch.nnodes == 4 and s.torch.rdzv_endpoint == "trainer-0:29400"
    assert s.torch.activation_checkpointing
    defaults = TorchSettings()
    assert (defaults.python, defaults.attention, defaults.loss_chunk_tokens) == ("python3", "auto", 4096)
    assert (defaults.rdzv_id, defaults.export_dtype, defaults.export_shard_bytes) == (None, "auto", 5_000_000_000)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('stpes = 10\n', "unknown field `stpes`"),
        ('[torch]\nnproc = 2\n', "unknown field `nproc` in settings.torch"),
        ('steps = "ten"\n', "settings.steps must be a int"),
        ('learning_rate = true\n', "settings.learning_rate must be a float"),
    ],
)
def test_unknown_keys_and_wrong_types_are_errors(edit: str, message: str) -> None:
    base = 'engine = "torch"\nstudent = "random"\nmodel_config = "c.json"\nstyle = "s"\ncheckpoint_store = "ck"\n'
    with pytest.raises(SettingsError, match=message):
        parse(base + edit)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('engine = "candle"', "engine = 'candle' is not supported"),
        ('optimizer = "sgd"', "optimizer = 'sgd' is not supported"),
        ('device = "tpu"', "is not cpu, cuda or cuda:N"),
        ('student = "random"', "needs model_config"),
        ('student = "smollm2.gguf"', "a .gguf student is for the candle engine"),
        ("steps = 0", "must be > 0"),
        ("warmup_ratio = 1.0", "is not in \\[0, 1\\)"),
        ('torch = { attention = "flash" }', "torch.attention = 'flash' is not supported"),
        ("torch = { nnodes = 2 }", "needs torch.rdzv_endpoint"),
    ],
)
def test_the_candle_trainers_checks_and_the_torch_tables(edit: str, message: str) -> None:
    values = {"engine": '"torch"', "student": '"models/x"', "style": '"s"', "checkpoint_store": '"ck"'}
    key = edit.split("=")[0].strip()
    values[key] = edit.split("=", 1)[1].strip()
    text = "\n".join(f"{k} = {v}" for k, v in values.items())
    with pytest.raises(SettingsError, match=message):
        parse(text)


def test_read_retry_secs_is_accepted_with_the_candle_trainers_default_and_typos_stay_refused() -> None:
    base = 'engine = "torch"\nstudent = "random"\nmodel_config = "c.json"\nstyle = "s"\ncheckpoint_store = "ck"\n'
    assert parse(base).read_retry_secs == 300
    assert parse(base + "read_retry_secs = 3\n").read_retry_secs == 3
    with pytest.raises(SettingsError, match="unknown field `read_retry_sec`"):
        parse(base + "read_retry_sec = 3\n")
    with pytest.raises(SettingsError, match="read_retry_secs -1 must be >= 0"):
        parse(base + "read_retry_secs = -1\n")
    with pytest.raises(SettingsError, match="settings.read_retry_secs must be a int"):
        parse(base + 'read_retry_secs = "3"\n')
