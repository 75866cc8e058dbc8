"""The torch engine's side of `distillery bench trainer --engine torch`: the engine's own
training step (the student built by transformers, FSDP2 over a process group of one, packed
attention, chunked loss, AdamW with clipping) timed on the bench's rows.

    python -m distillery_torch.bench SPEC.json      # prints one JSON line

SPEC.json is the spec `distillery bench trainer` writes for `scripts/bench_trainer_torch.py`
(model config, packed rows with their completion targets, steps, warmup steps, device, dtype,
optimizer settings, threads, and optionally `weights`: the candle trainer's initial weights as
safetensors under their Hugging Face names, so the first-step losses must agree), plus two
optional keys: `peak_tflops` (the peak MFU is measured against; default: a large matmul timed
here) and `engine_attention` (default `auto`).

The output has the baseline script's keys (`tokens_per_second`, `step_seconds`,
`forward_backward_seconds`, `optimizer_seconds`, `losses`, `parameters`, `matmul_tflops`,
`peak_memory_gb`, ...) plus `model_flops_per_step` and `mfu`: model FLOPs counted as the Rust
bench counts them (6 x matmul weights x tokens, 6 x head weights x completion targets, attention
12 x layers x heads x head_dim x sum of squared sequence lengths) over the step time.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from typing import Any

import numpy as np


def model_flops(config: dict[str, Any], rows: list[dict[str, Any]]) -> float:
    """The Rust bench's `flops_per_step`, for Llama-family configs."""
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    q, kvw = heads * head_dim, kv * head_dim
    body = config["num_hidden_layers"] * (h * q + 2 * h * kvw + q * h + 3 * h * inter)
    tokens = sum(len(r["input_ids"]) for r in rows)
    targets = sum(len(r["targets"]) for r in rows)
    squares = sum(n * n for r in rows for n in r["sequence_lengths"])
    return 6.0 * body * tokens + 6.0 * vocab * h * targets + 12.0 * config["num_hidden_layers"] * q * squares


def packed_rows(spec_rows: list[dict[str, Any]]) -> list[Any]:
    from .shards import PackedRow

    rows = []
    for r in spec_rows:
        ids = np.asarray(r["input_ids"], dtype=np.int64)
        mask = np.zeros(len(ids), dtype=np.uint8)
        mask[np.asarray(r["positions"], dtype=np.int64) + 1] = 1  # each target follows its position
        rows.append(PackedRow(ids, mask, tuple(r["sequence_lengths"])))
    return rows


def matmul_tflops(torch: Any, device: Any, bf16: bool) -> tuple[str, float]:
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return f"{n}x{n} {'bf16' if bf16 else 'f32'}", 2 * n**3 / best / 1e12


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    from .model import PackedCausalLM, build_hf, config_from_json, shard
    from .optim import adamw
    from .packing import attention_kind
    from .settings import TrainerSettings
    from .step import accumulate, apply
    from .train import init_distributed

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    _, _, device, _ = init_distributed(spec["device"], 600)
    bf16 = spec["dtype"] == "bf16"
    config_values = {k: v for k, v in spec["config"].items() if v is not None and k not in ("torch_dtype", "architectures")}
    config = config_from_json(json.dumps(config_values))
    torch.manual_seed(spec.get("seed", 0))
    full = build_hf(config, "cpu")
    if spec.get("weights"):
        from safetensors.torch import load_file

        missing, unexpected = full.load_state_dict(load_file(spec["weights"]), strict=False)
        allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - allowed or unexpected:
            raise ValueError(f"the weights do not fit the config: missing {missing}, unexpected {unexpected}")
    model: PackedCausalLM = shard(config, full, device, bf16, False, 4096)
    del full
    settings = TrainerSettings(
        student="random", style="bench", checkpoint_store="unused", engine="torch",
        beta1=spec.get("betas", (0.9, 0.999))[0], beta2=spec.get("betas", (0.9, 0.999))[1],
        adam_eps=spec.get("eps", 1e-8), weight_decay=spec.get("weight_decay", 0.0),
    )
    optimizer = adamw(list(model.parameters()), settings, device.type == "cuda")
    attention = attention_kind(spec.get("engine_attention", "auto"), device)
    rows = packed_rows(spec["rows"])
    completion = sum(r.completion_tokens() for r in rows)
    tokens = sum(len(r.input_ids) for r in rows)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, forward_backward, optimizer_seconds, losses = [], [], [], []
    for index in range(spec["warmup_steps"] + spec["steps"]):
        sync()
        started = time.perf_counter()
        loss = accumulate(model, rows, len(rows), completion, device, attention)
        sync()
        middle = time.perf_counter()
        apply(model, optimizer, spec.get("lr", 1e-4), spec.get("max_grad_norm", 1.0))
        sync()
        ended = time.perf_counter()
        losses.append(loss)
        if index >= spec["warmup_steps"]:
            seconds.append(ended - started)
            forward_backward.append(middle - started)
            optimizer_seconds.append(ended - middle)
    peak_memory = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    matmul_name, matmul = matmul_tflops(torch, device, bf16)
    if not all(math.isfinite(x) for x in losses):
        return {"ok": False, "error": f"non-finite loss: {losses}"}
    flops = model_flops(spec["config"], spec["rows"])
    step_time = sum(seconds) / len(seconds)
    peak = float(spec.get("peak_tflops") or matmul)
    return {
        "ok": True,
        "engine": "distillery-torch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "autocast_bf16": bf16,
        "attention": attention,
        "world_size": 1,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": tokens,
        "completion_tokens_per_step": completion,
        "step_seconds": seconds,
        "forward_backward_seconds": forward_backward,
        "optimizer_seconds": optimizer_seconds,
        "tokens_per_second": tokens * len(seconds) / sum(seconds),
        "losses": losses,
        "peak_memory_gb": peak_memory,
        "matmul": matmul_name,
        "matmul_tflops": matmul,
        "model_flops_per_step": flops,
        "peak_tflops": peak,
        "mfu": flops / step_time / (peak * 1e12),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m distillery_torch.bench SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0]) as file:
        spec = json.load(file)
    try:
        result = run(spec)
    except Exception as e:
        import traceback

        traceback.print_exc(file=sys.stderr)
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
