"""A checkpoint written by two ranks resumes on one: the torch distributed checkpoint reshards
the model and optimizer, the cursor does not depend on the world size, and the run ends where
a two-rank twin ends, within f32 tolerance, over the same steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from distillery_torch import objects
from harness import (
    Broker, experiment_topics, export_weights, final_event, publish_shards, run_metrics, start_engine, synthetic_rows,
    topology, trainer_state, wait_until,
)

EXPERIMENT = "reshard"
CONFIG = {
    "model_type": "llama", "vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2,
}


def test_a_checkpoint_of_two_ranks_resumes_on_one(broker: Broker, s3_prefix: str, tmp_path: Path) -> None:
    broker.create_topics(experiment_topics(EXPERIMENT))
    objects.put_bytes(f"{s3_prefix}/config.json", json.dumps(CONFIG).encode())
    publish_shards(broker, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards", [synthetic_rows(i, 5, 3, 32) for i in range(6)])
    settings = {
        "engine": "torch", "student": "random", "model_config": f"{s3_prefix}/config.json", "init_seed": 3, "style": "a",
        "steps": 6, "global_batch_rows": 4, "learning_rate": 1e-2, "warmup_ratio": 0.1, "checkpoint_every_steps": 3,
        "checkpoint_store": f"{s3_prefix}/checkpoints",
    }
    path = tmp_path / "topology.toml"
    path.write_text(topology(EXPERIMENT, {"twin": settings, "moved": settings}))
    twin = start_engine(path, "twin", broker, 2, tmp_path / "twin.log")
    moved = start_engine(path, "moved", broker, 2, tmp_path / "moved-2.log")
    wait_until("the two-rank checkpoint", 120, lambda: "checkpoint step 3" in moved.log(), interval=0.02)
    moved.kill9()
    moved = start_engine(path, "moved", broker, 1, tmp_path / "moved-1.log")
    assert moved.wait(180) == 0, moved.log()[-3000:]
    assert twin.wait(180) == 0, twin.log()[-3000:]
    assert "resuming from checkpoint step 3" in moved.log()

    a, b = final_event(broker, EXPERIMENT, "twin"), final_event(broker, EXPERIMENT, "moved")
    assert a is not None and b is not None and a["step"] == b["step"] == 6 and a["consumed"] == b["consumed"]
    assert trainer_state(a["uri"])["shard_ids"] == trainer_state(b["uri"])["shard_ids"]
    assert (trainer_state(a["uri"])["world_size"], trainer_state(b["uri"])["world_size"]) == (2, 1)
    weights_a, weights_b = export_weights(a["uri"]), export_weights(b["uri"])
    for name in weights_a:
        np.testing.assert_allclose(weights_a[name], weights_b[name], rtol=0, atol=1e-6, err_msg=name)
    twin_losses = {m["step"]: m["loss"] for m in run_metrics(broker, EXPERIMENT, "twin")}
    for m in run_metrics(broker, EXPERIMENT, "moved"):
        assert abs(m["loss"] - twin_losses[m["step"]]) <= 1e-5 * twin_losses[m["step"]], m
