"""`python -m distillery_torch.bench` (the torch engine's side of `distillery bench trainer
--engine torch`) reads the bench's spec, times the engine's training step and reports tokens/s
and MFU; started from the same weights, its first-step loss equals the PyTorch-eager baseline's
(`scripts/bench_trainer_torch.py`) on the same rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from harness import PACKAGE, REPO, engine_env

# ModelConfig::tiny(16) as the Rust bench serialises it.
TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 16, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": None, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
    "max_position_embeddings": 8192, "bos_token_id": None, "eos_token_id": None, "hidden_act": "silu",
    "torch_dtype": "float32",
}


def spec_rows(seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(2):
        lengths = [40, 56, 32]
        ids = rng.integers(0, 16, sum(lengths)).tolist()
        positions, start = [], 0
        for length in lengths:
            prompt = max(length * 12 // 100, 1)
            positions += list(range(start + prompt - 1, start + length - 1))
            start += length
        rows.append({"input_ids": ids, "sequence_lengths": lengths, "positions": positions, "targets": [ids[p + 1] for p in positions]})
    return rows


def run(script: list[str], spec: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, *script, str(spec)], capture_output=True, text=True, env=engine_env({}), cwd=PACKAGE)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"], done.stderr[-3000:]
    return result


def test_the_bench_reports_throughput_and_mfu_and_starts_where_the_eager_baseline_starts(tmp_path: Path) -> None:
    torch.manual_seed(4)
    reference = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY.items() if v is not None and k not in ("torch_dtype", "architectures")}))
    weights = {k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, tmp_path / "weights.safetensors")
    spec = {
        "device": "cpu", "dtype": "f32", "config": TINY, "rows": spec_rows(1), "steps": 2, "warmup_steps": 1, "seed": 0,
        "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "attention": "per-sequence", "threads": 1, "weights": str(tmp_path / "weights.safetensors"),
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    engine = run(["-m", "distillery_torch.bench"], path)
    eager = run([str(REPO / "scripts" / "bench_trainer_torch.py")], path)
    assert engine["engine"] == "distillery-torch" and engine["world_size"] == 1 and engine["attention"] == "sdpa"
    assert engine["tokens_per_step"] == eager["tokens_per_step"] == 256
    assert engine["completion_tokens_per_step"] == eager["completion_tokens_per_step"]
    assert engine["tokens_per_second"] > 0 and 0 < engine["mfu"] < 1  # type: ignore[operator]
    first, baseline = engine["losses"][0], eager["losses"][0]  # type: ignore[index]
    assert abs(first - baseline) < 1e-5 * abs(baseline), (first, baseline)
