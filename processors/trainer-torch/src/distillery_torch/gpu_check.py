"""The torch engine's GPU checks (`scripts/gpu-check-torch.sh` runs this):

1. isolation: for every attention kernel the device offers (CUDA: `varlen`, `flex` and the
   block-mask `sdpa`; CPU: `sdpa`), a sequence's logits inside a packed row equal its logits
   alone, and without boundaries they differ; the same for a NemotronH, whose Mamba2 layers run
   on the `mamba_ssm`/`causal_conv1d` kernels when they are installed (the torch path otherwise;
   the report says which);
2. throughput: the engine's training step (FSDP2, activation checkpointing, chunked loss,
   AdamW) on packed rows of `--row-tokens` tokens (60,000 on CUDA) for a ~1B Llama (Llama 3.2
   1B's shape) and a small NemotronH: tokens/s, peak memory and MFU against the H200's dense
   bf16 peak (989 TFLOP/s; the goal for the 1B model is 40%), or on the CPU against a large
   f32 matmul timed in the same run.

    python -m distillery_torch.gpu_check --device cuda
    python -m distillery_torch.gpu_check --device cpu      # dry run: small models, short rows

Prints a JSON line per check and exits non-zero when an isolation check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from typing import Any

import numpy as np

H200_BF16_DENSE_TFLOPS = 989.0

# Llama 3.2 1B's shape (1.24B parameters, tied embeddings).
LLAMA_1B = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "max_position_embeddings": 131072, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
}
# A small NemotronH: Nemotron-Nano-12B-v2's layer mix (Mamba2, MLP, a few attention layers) at
# a tenth of the width.
NEMOTRON_H_SMALL = {
    "model_type": "nemotron_h", "vocab_size": 131072, "hidden_size": 1024, "intermediate_size": 4096,
    "layers_block_type": ["linear_attention", "mlp", "linear_attention", "full_attention", "mlp", "linear_attention",
                          "mlp", "linear_attention", "full_attention", "mlp", "linear_attention", "mlp"],
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128, "mamba_num_heads": 32, "mamba_head_dim": 64,
    "ssm_state_size": 128, "n_groups": 8, "chunk_size": 128, "conv_kernel": 4, "tie_word_embeddings": False,
}
LLAMA_TINY = {**LLAMA_1B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
NEMOTRON_H_TINY = {**NEMOTRON_H_SMALL, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                   "layers_block_type": ["linear_attention", "full_attention", "mlp", "linear_attention"],
                   "num_attention_heads": 4, "head_dim": 16, "mamba_num_heads": 4, "mamba_head_dim": 16,
                   "ssm_state_size": 16, "n_groups": 2, "chunk_size": 16}


def mamba_kernels() -> str:
    have = [name for name in ("mamba_ssm", "causal_conv1d") if importlib.util.find_spec(name) is not None]
    return "kernels (" + ", ".join(have) + ")" if have else "torch path (mamba_ssm not installed)"


def row_of(lengths: list[int], vocab: int, seed: int) -> Any:
    from .shards import PackedRow

    ids = np.random.default_rng(seed).integers(0, vocab, sum(lengths)).astype(np.int64)
    return PackedRow(ids, np.ones(len(ids), dtype=np.uint8), tuple(lengths))


def isolation(config: dict[str, Any], kind: str, device: Any, bf16: bool) -> dict[str, Any]:
    """Largest difference between a sequence's packed and alone logits, and the unpacked
    control's, relative to the logits' scale."""
    import torch

    from .model import PackedCausalLM, build_hf, config_from_json
    from .packing import pack
    from .shards import PackedRow

    torch.manual_seed(0)
    model = PackedCausalLM(build_hf(config_from_json(json.dumps(config)), "cpu"), 4096).to(device).eval()
    if bf16:
        model = model.to(torch.bfloat16)
    lengths = [200, 328, 136]
    row = row_of(lengths, config["vocab_size"], 1)
    with torch.no_grad():
        packed = model(pack(row, device, kind)).float()
        scale = packed.abs().max().item()
        worst, control, start = 0.0, 0.0, 0
        whole = model(pack(PackedRow(row.input_ids, row.loss_mask, (len(row.input_ids),)), device, kind)).float()
        for length in lengths:
            ids = row.input_ids[start : start + length]
            alone = model(pack(PackedRow(ids, np.ones(length, dtype=np.uint8), (length,)), device, kind)).float()
            worst = max(worst, (packed[start : start + length] - alone).abs().max().item() / scale)
            if start > 0:
                control = max(control, (whole[start : start + length] - alone).abs().max().item() / scale)
            start += length
    tolerance = 2e-2 if bf16 else 1e-5
    return {
        "check": "isolation", "model": config["model_type"], "attention": kind, "dtype": "bf16" if bf16 else "f32",
        "relative_difference": worst, "control_difference": control, "tolerance": tolerance,
        "ok": worst <= tolerance and control > 10 * tolerance,
    }


def matmul_flops_per_token(config: dict[str, Any]) -> float:
    """Weights every token multiplies by (per forward), for the MFU's 6 x N x tokens."""
    h = config["hidden_size"]
    if config["model_type"] == "nemotron_h":
        total = 0.0
        for kind in config["layers_block_type"]:
            if kind == "linear_attention":
                inner = config["mamba_num_heads"] * config["mamba_head_dim"]
                conv = inner + 2 * config["n_groups"] * config["ssm_state_size"]
                total += h * (inner + conv + config["mamba_num_heads"]) + inner * h
            elif kind == "full_attention":
                q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
                total += h * q + 2 * h * kv + q * h
            else:
                total += 2 * h * config["intermediate_size"]
        return total
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    return float(config["num_hidden_layers"] * (h * q + 2 * h * kv + q * h + 3 * h * config["intermediate_size"]))


def attention_layers(config: dict[str, Any]) -> int:
    if config["model_type"] == "nemotron_h":
        return sum(1 for kind in config["layers_block_type"] if kind == "full_attention")
    return int(config["num_hidden_layers"])


def throughput(name: str, config: dict[str, Any], device: Any, row_tokens: int, steps: int, peak_tflops: float) -> dict[str, Any]:
    """The engine's step on one packed row of `row_tokens` tokens (24 sequences)."""
    import torch

    from .model import build_hf, config_from_json, shard
    from .optim import adamw
    from .packing import attention_kind
    from .settings import TrainerSettings
    from .step import train_rows

    bf16 = device.type == "cuda"
    hf_config = config_from_json(json.dumps(config))
    torch.manual_seed(0)
    model = shard(hf_config, build_hf(hf_config, "cpu"), device, bf16, True, 4096)
    optimizer = adamw(list(model.parameters()), TrainerSettings("random", "bench", "unused", engine="torch"), bf16)
    weights = np.random.default_rng(3).uniform(0.5, 1.5, 24)
    lengths = [max(int(w / weights.sum() * row_tokens), 2) for w in weights]
    lengths[-1] = max(row_tokens - sum(lengths[:-1]), 2)
    row = row_of(lengths, config["vocab_size"], 2)
    attention = attention_kind("auto", device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for index in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        loss, _ = train_rows(model, optimizer, [row], 1, row.completion_tokens(), 1e-5, 1.0, device, attention)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index > 0:  # the first step warms up (allocations, kernel selection)
            times.append(time.perf_counter() - started)
    seconds = sum(times) / len(times)
    heads_width = config["num_attention_heads"] * config["head_dim"]
    flops = (
        6 * matmul_flops_per_token(config) * row_tokens
        + 6 * config["vocab_size"] * config["hidden_size"] * row.completion_tokens()
        + 12 * attention_layers(config) * heads_width * sum(n * n for n in lengths)
    )
    return {
        "check": "throughput", "model": name, "device": str(device), "attention": attention,
        "parameters": sum(p.numel() for p in model.parameters()), "row_tokens": row_tokens,
        "tokens_per_second": row_tokens / seconds, "step_seconds": seconds, "loss": loss,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "mfu": flops / seconds / (peak_tflops * 1e12), "peak_tflops": peak_tflops, "ok": bool(np.isfinite(loss)),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m distillery_torch.gpu_check", description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a dry run with small models)")
    parser.add_argument("--row-tokens", type=int, help="tokens per packed row (default 60000 on CUDA, 512 on CPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--peak-tflops", type=float, help=f"peak for the MFU (default {H200_BF16_DENSE_TFLOPS} on CUDA)")
    args = parser.parse_args(argv)

    import torch

    from .train import init_distributed

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(json.dumps({"check": "device", "ok": False, "error": "torch.cuda.is_available() is False"}))
        return 1
    _, _, device, _ = init_distributed(args.device, 600)
    results = []
    kinds = ["varlen", "flex", "sdpa"] if cuda else ["sdpa"]
    for config in (LLAMA_TINY, NEMOTRON_H_TINY):
        for kind in kinds:
            result = isolation(config, kind, device, cuda)
            if config["model_type"] == "nemotron_h":
                result["mamba"] = mamba_kernels()
            results.append(result)
            print(json.dumps(result), flush=True)
    row_tokens = args.row_tokens or (60000 if cuda else 512)
    if args.peak_tflops:
        peak = args.peak_tflops
    elif cuda:
        peak = H200_BF16_DENSE_TFLOPS
    else:
        from .bench import matmul_tflops

        peak = matmul_tflops(torch, device, False)[1]  # an achievable CPU peak, timed here
    models = {"llama-1b": LLAMA_1B, "nemotron-h-small": NEMOTRON_H_SMALL} if cuda else {
        "llama-tiny": LLAMA_TINY, "nemotron-h-tiny": NEMOTRON_H_TINY}
    for name, config in models.items():
        result = throughput(name, config, device, row_tokens, args.steps, peak)
        if name == "llama-1b":
            result["goal_mfu"] = 0.4
            result["goal_met"] = result["mfu"] >= 0.4
        results.append(result)
        print(json.dumps(result), flush=True)
    failed = [r for r in results if not r["ok"]]
    print(json.dumps({"check": "summary", "device": str(device), "checks": len(results), "failed": len(failed)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
