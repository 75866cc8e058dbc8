"""Test 3: a two-rank run killed with SIGKILL twice, at moments drawn from a seeded generator,
then restarted, ends bit-identical to an uninterrupted twin on the same shards: the same
weights, the same optimizer state (moments and step counts), the same shard sequence, and every
step's metrics carry the same id and numbers however often the step was redone.

The first kill hits torchrun alone: its workers run in sessions of their own and must die with
it (they ask the kernel to SIGKILL them when their parent goes) instead of training on beside
the restarted run. The second kill hits every process of the run at once.

Why bit-identity holds: the same world size gives the same reduction orders (gloo's collectives,
FSDP2's reduce-scatter of each micro-step into the same shards), CPU kernels are deterministic for
a fixed thread count (torchrun sets one per worker), and a resumed run restores the exact f32
weights and AdamW state from its torch distributed checkpoint and re-reads the same rows from the
checkpoint's position."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from distillery_torch import objects
from harness import (
    Broker, alive, experiment_topics, final_event, publish_shards, run_events, run_metrics, start_engine,
    synthetic_rows, topology, trainer_state, wait_until,
)

EXPERIMENT = "killed"
STEPS = 12
CONFIG = {
    "model_type": "llama", "vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
}


def resumable_state(uri: str, folder: Path) -> dict[str, object]:
    """A checkpoint's torch distributed checkpoint (model and optimizer), as plain tensors."""
    for name in objects.list_names(objects.join(uri, "dcp")):
        objects.download_file(objects.join(uri, f"dcp/{name}"), folder / "dcp" / name)
    dcp_to_torch_save(folder / "dcp", folder / "state.pt")
    return torch.load(folder / "state.pt", weights_only=False)


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}/"))
        return out
    return {prefix: value}


def test_a_run_killed_twice_ends_bit_identical_to_its_uninterrupted_twin(broker: Broker, s3_prefix: str, tmp_path: Path) -> None:
    broker.create_topics(experiment_topics(EXPERIMENT))
    objects.put_bytes(f"{s3_prefix}/config.json", json.dumps(CONFIG).encode())
    # 11 shards of 5 rows, 4 rows a step: shard and batch boundaries differ, so runs resume in
    # the middle of shards.
    publish_shards(broker, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards", [synthetic_rows(i, 5, 3, 32) for i in range(11)])
    settings = {
        "engine": "torch", "student": "random", "model_config": f"{s3_prefix}/config.json", "init_seed": 3,
        "style": "teacher-a", "steps": STEPS, "global_batch_rows": 4, "learning_rate": 1e-2, "warmup_ratio": 0.1,
        "warmup_start_lr": 1e-3, "checkpoint_every_steps": 3, "checkpoint_store": f"{s3_prefix}/checkpoints",
    }
    path = tmp_path / "topology.toml"
    path.write_text(topology(EXPERIMENT, {"steady": settings, "killed": settings}))
    steady = start_engine(path, "steady", broker, 2, tmp_path / "steady.log")

    draw = random.Random(14)
    killed = start_engine(path, "killed", broker, 2, tmp_path / "killed-0.log")
    for kill in (1, 2):
        # After this run's first checkpoint (so that the restart resumes from one), a drawn
        # number of steps and a drawn delay more; progress is read from the rank-0 log, which
        # is written as it happens.
        wait_until("a checkpoint of the killed run", 180, lambda: "checkpoint step" in killed.log(), interval=0.02)
        steps = killed.log().count(" INFO rank=0 distillery_torch: step ") + draw.randint(0, 2)
        wait_until(f"step line {steps}", 60, lambda: killed.log().count(" INFO rank=0 distillery_torch: step ") >= steps, interval=0.02)
        time.sleep(draw.uniform(0.0, 0.2))
        assert killed.process.poll() is None, f"the run finished before kill {kill}:\n{killed.log()[-3000:]}"
        if kill == 1:
            workers = killed.kill9_launcher()
            assert workers, "torchrun had started its workers"
            wait_until("the workers to die with torchrun", 10, lambda: not any(alive(pid) for pid in workers))
        else:
            killed.kill9()
        assert final_event(broker, EXPERIMENT, "killed") is None
        killed = start_engine(path, "killed", broker, 2, tmp_path / f"killed-{kill}.log")
    assert killed.wait(240) == 0, killed.log()[-4000:]
    assert steady.wait(240) == 0, steady.log()[-4000:]

    a, b = final_event(broker, EXPERIMENT, "steady"), final_event(broker, EXPERIMENT, "killed")
    assert a is not None and b is not None and a["step"] == b["step"] == STEPS
    assert a["consumed"] == b["consumed"] == [{"topic": f"{EXPERIMENT}.shards", "partition": 0, "next_offset": 9}], (
        "48 rows of 5-row shards: 9 shards done, 3 rows of the 10th"
    )
    state_a, state_b = trainer_state(a["uri"]), trainer_state(b["uri"])
    assert state_a["shard_ids"] == state_b["shard_ids"] and len(state_a["shard_ids"]) == 10
    assert (state_a["position"], state_a["tokens_seen"]) == (state_b["position"], state_b["tokens_seen"])

    # Bit for bit: the exported weights, and the resumable model and optimizer state.
    for name in objects.list_names(a["uri"]):
        if name.endswith(".safetensors"):
            assert objects.get_bytes(objects.join(a["uri"], name)) == objects.get_bytes(objects.join(b["uri"], name)), name
    full_a = flatten(resumable_state(a["uri"], tmp_path / "a"))
    full_b = flatten(resumable_state(b["uri"], tmp_path / "b"))
    assert sorted(full_a) == sorted(full_b)
    assert any("exp_avg_sq" in key for key in full_a) and any(key.endswith("/step/") for key in full_a)
    for key, value in full_a.items():
        other = full_b[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key  # type: ignore[arg-type]
        else:
            assert value == other, key

    # Every step once per id; a redone step repeats its numbers exactly.
    steady_losses = {m["step"]: m["loss"] for m in run_metrics(broker, EXPERIMENT, "steady")}
    assert sorted(steady_losses) == list(range(1, STEPS + 1))
    redone = run_metrics(broker, EXPERIMENT, "killed")
    assert {m["step"] for m in redone} == set(steady_losses)
    for m in redone:
        assert m["loss"] == steady_losses[m["step"]], m
    assert steady_losses[STEPS] < steady_losses[1], "the loss falls"
    resumed = [p for p in sorted(tmp_path.glob("killed-*.log")) if "resuming from checkpoint" in p.read_text()]
    assert [p.name for p in resumed] == ["killed-1.log", "killed-2.log"], "both restarts resumed from a checkpoint"
    assert len({e["id"] for e in run_events(broker, EXPERIMENT, "killed")}) == len(
        {(e["step"], e["is_final"]) for e in run_events(broker, EXPERIMENT, "killed")}
    )
