"""Test 2: world sizes 1 and 2 (real torchrun, gloo) train on the same rows in the same order
and reach the same losses and weights within f32 tolerance; the first step's loss equals the
candle trainer's on the same initial weights and rows; and the candle loader (which the
evaluator's in-process backend uses) reads the engine's sharded Hugging Face export.

Five rows a step over two ranks gives slices of 3 and 2: rank 1 runs a filler micro-step, and
the result must not change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from distillery_torch import objects
from transformers import LlamaConfig, LlamaForCausalLM

from harness import (
    Broker, experiment_topics, export_weights, final_event, publish_shards, run_distillery, run_events, run_metrics,
    start_engine, step_lines, synthetic_rows, topology, trainer_state, wait_until,
)

EXPERIMENT = "sizes"
STEPS = 5


def initial_student(folder: Path) -> None:
    """A seeded random tiny Llama saved by transformers: both engines start from it."""
    torch.manual_seed(5)
    config = LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def common(student: str, store: str, steps: int) -> dict[str, object]:
    return {
        "student": student, "style": "teacher-a", "steps": steps, "global_batch_rows": 5, "learning_rate": 1e-3,
        "warmup_ratio": 0.2, "warmup_start_lr": 1e-4, "checkpoint_every_steps": 100, "checkpoint_store": store,
    }


def test_world_sizes_agree_and_the_first_loss_matches_the_candle_trainer(broker: Broker, s3_prefix: str, tmp_path: Path) -> None:
    broker.create_topics(experiment_topics(EXPERIMENT))
    folder = tmp_path / "student"
    initial_student(folder)
    publish_shards(broker, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards", [synthetic_rows(i, 5, 3, 32) for i in range(6)])
    store = f"{s3_prefix}/checkpoints"
    torch_settings = {**common(str(folder), store, STEPS), "engine": "torch", "torch": {"export_shard_bytes": 16384}}
    path = tmp_path / "torch.toml"
    path.write_text(topology(EXPERIMENT, {"torch-w1": torch_settings, "torch-w2": torch_settings}))
    one = start_engine(path, "torch-w1", broker, 1, tmp_path / "w1.log")
    two = start_engine(path, "torch-w2", broker, 2, tmp_path / "w2.log")
    assert two.wait(240) == 0, two.log()[-4000:]
    assert one.wait(240) == 0, one.log()[-4000:]

    # The same rows, step by step, and the same shard sequence.
    rows_one, rows_two = step_lines(one.log()), step_lines(two.log())
    assert sorted(rows_one) == list(range(1, STEPS + 1)) and rows_one == rows_two
    final_one, final_two = final_event(broker, EXPERIMENT, "torch-w1"), final_event(broker, EXPERIMENT, "torch-w2")
    assert final_one is not None and final_two is not None
    assert final_one["step"] == final_two["step"] == STEPS
    assert final_one["consumed"] == [{"topic": f"{EXPERIMENT}.shards", "partition": 0, "next_offset": 5}]
    assert final_one["consumed"][0]["next_offset"] == final_two["consumed"][0]["next_offset"]
    state_one, state_two = trainer_state(final_one["uri"]), trainer_state(final_two["uri"])
    assert state_one["shard_ids"] == state_two["shard_ids"] and len(state_one["shard_ids"]) == 5
    assert state_two["world_size"] == 2

    # The same losses and weights, within f32 tolerance.
    metrics_one = {m["step"]: m for m in run_metrics(broker, EXPERIMENT, "torch-w1")}
    metrics_two = {m["step"]: m for m in run_metrics(broker, EXPERIMENT, "torch-w2")}
    assert sorted(metrics_one) == sorted(metrics_two) == list(range(1, STEPS + 1))
    for step in metrics_one:
        a, b = metrics_one[step], metrics_two[step]
        assert (a["tokens"], a["completion_tokens"]) == (b["tokens"], b["completion_tokens"])
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (step, a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * abs(a["grad_norm"]), (step, a["grad_norm"], b["grad_norm"])
    weights_one, weights_two = export_weights(final_one["uri"]), export_weights(final_two["uri"])
    assert sorted(weights_one) == sorted(weights_two)
    for name in weights_one:
        np.testing.assert_allclose(weights_one[name], weights_two[name], rtol=0, atol=1e-5, err_msg=name)

    # The candle trainer: same initial weights and rows, one step; and the candle loader reads
    # the engine's export (several safetensors files behind an index).
    candle = {**common(str(folder), store, 1)}
    from_export = {**common(final_two["uri"], store, 1)}
    candle_path = tmp_path / "candle.toml"
    candle_path.write_text(topology(EXPERIMENT, {"candle": candle, "candle-from-export": from_export}))
    for name in ("candle", "candle-from-export"):
        run_distillery(
            ["run", name, "--topology", str(candle_path), "--bootstrap-servers", broker.bootstrap_servers, "--replica", "0"],
            tmp_path / f"{name}.log", timeout=240,
        )
        wait_until(f"{name}'s final checkpoint", 30, lambda: final_event(broker, EXPERIMENT, name) is not None)
    candle_loss = run_metrics(broker, EXPERIMENT, "candle")[0]["loss"]
    for first in (metrics_one[1]["loss"], metrics_two[1]["loss"]):
        assert abs(first - candle_loss) < 1e-5 * abs(candle_loss), (first, candle_loss)
    export_loss = run_metrics(broker, EXPERIMENT, "candle-from-export")[0]["loss"]
    assert np.isfinite(export_loss) and export_loss < candle_loss, "the exported student has learnt something"
    index = json.loads(objects.get_bytes(objects.join(final_two["uri"], "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1, "the export is sharded"
    assert [e["uri"] for e in run_events(broker, EXPERIMENT, "torch-w2")] == [final_two["uri"]]
