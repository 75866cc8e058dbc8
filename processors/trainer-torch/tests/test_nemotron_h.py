"""Test 6 (training half; the isolation half is in test_isolation.py): a tiny NemotronH (Mamba2,
attention and MLP layers) trains on packed rows on two CPU ranks, with activation
checkpointing and the loss in small chunks, and its loss falls. Its Hugging Face export loads in
plain transformers, where a sequence alone gives the logits the engine's packed forward gives
it inside a packed row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from distillery_torch import objects
from distillery_torch.model import PackedCausalLM, load_pretrained
from distillery_torch.packing import pack
from distillery_torch.shards import PackedRow
from harness import Broker, experiment_topics, final_event, publish_shards, run_metrics, start_engine, synthetic_rows, topology

EXPERIMENT = "hybrid"
CONFIG = {
    "model_type": "nemotron_h", "vocab_size": 32, "hidden_size": 32,
    "layers_block_type": ["linear_attention", "full_attention", "linear_attention", "mlp"],
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64, "ssm_state_size": 8,
    "mamba_num_heads": 4, "mamba_head_dim": 8, "n_groups": 2, "chunk_size": 8, "conv_kernel": 4,
}


def test_a_tiny_nemotron_h_trains_on_packed_rows_and_its_export_loads_in_transformers(
    broker: Broker, s3_prefix: str, tmp_path: Path
) -> None:
    broker.create_topics(experiment_topics(EXPERIMENT))
    objects.put_bytes(f"{s3_prefix}/config.json", json.dumps(CONFIG).encode())
    publish_shards(broker, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards", [synthetic_rows(i, 4, 3, 32, 10, 20) for i in range(8)])
    settings = {
        "engine": "torch", "student": "random", "model_config": f"{s3_prefix}/config.json", "init_seed": 2,
        "style": "teacher-a", "steps": 8, "global_batch_rows": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0,
        "checkpoint_every_steps": 100, "checkpoint_store": f"{s3_prefix}/checkpoints",
        "torch": {"activation_checkpointing": True, "loss_chunk_tokens": 16},
    }
    path = tmp_path / "topology.toml"
    path.write_text(topology(EXPERIMENT, {"trainer": settings}))
    run = start_engine(path, "trainer", broker, 2, tmp_path / "run.log")
    assert run.wait(240) == 0, run.log()[-4000:]
    losses = [m["loss"] for m in sorted(run_metrics(broker, EXPERIMENT, "trainer"), key=lambda m: m["step"])]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], f"the loss falls: {losses}"

    final = final_event(broker, EXPERIMENT, "trainer")
    assert final is not None
    folder = tmp_path / "export"
    for name in objects.list_names(final["uri"]):
        if "/" not in name:
            objects.download_file(objects.join(final["uri"], name), folder / name)
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    assert type(plain).__name__ == "NemotronHForCausalLM"
    engine = PackedCausalLM(load_pretrained(folder), loss_chunk_tokens=4096).eval()
    lengths = (9, 14, 6)
    ids = np.random.default_rng(7).integers(0, 32, sum(lengths)).astype(np.int64)
    row = PackedRow(ids, np.ones(len(ids), dtype=np.uint8), lengths)
    with torch.no_grad():
        packed = engine(pack(row, torch.device("cpu"), "sdpa"))
        start = 0
        for length in lengths:
            alone = plain(input_ids=torch.from_numpy(ids[start : start + length])[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + length], alone, rtol=1e-4, atol=1e-4)
            start += length
