"""PyTorch-eager baseline for `distillery bench trainer`.

The Rust side writes a JSON spec (model config, the packed rows with their completion targets,
steps, device, dtype) and runs this script with it; the script trains the same model on the same
rows and prints one JSON line with its timings. The model is the trainer's Llama-style decoder
(RMSNorm in f32, rotary embeddings restarting at every packed sequence, grouped-query attention,
SwiGLU MLP, no biases, optionally tied embeddings), written in plain PyTorch:

- attention: torch.nn.functional.scaled_dot_product_attention, causal, once per packed sequence
  (spec "attention": "per-sequence", the default, like the Rust trainer), or once per row with a
  block-diagonal causal mask ("block-mask");
- loss: cross-entropy (in f32) of the lm_head logits at the completion targets only, summed and
  divided by the batch's completion tokens, backward row by row (gradient accumulation);
- optimizer: gradient clipping to `max_grad_norm`, torch.optim.AdamW (fused=True on CUDA);
- precision: f32 master weights; bf16 autocast on CUDA when the spec says bf16, plain f32
  otherwise.

Weights are drawn normal(0, 0.02) (norms at 1) from torch's own generator: the same shapes and
distribution as the Rust side's `Student::random`, not the same values; or, with spec "weights"
(`distillery bench trainer --same-weights`), loaded from distillery's initial weights.

Usage: python bench_trainer_torch.py SPEC.json   (prints one JSON line; exit 0 unless the spec
is unreadable). Without torch it prints {"ok": false, "missing": "torch", ...}.
"""

import json
import math
import resource
import sys
import time


def main():
    spec = json.load(open(sys.argv[1]))
    try:
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        print(json.dumps({"ok": False, "missing": "torch", "error": f"{type(e).__name__}: {e}", "python": sys.executable}))
        return
    try:
        result = run(spec)
    except Exception as e:
        import traceback

        traceback.print_exc(file=sys.stderr)
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))


def run(spec):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    cfg = spec["config"]
    device = torch.device("cuda" if spec["device"].startswith("cuda") else "cpu")
    if spec["device"].startswith("cuda:"):
        device = torch.device(spec["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"ok": False, "error": "torch.cuda.is_available() is False (a CPU-only torch, or no GPU visible)"}
    bf16 = spec["dtype"] == "bf16"
    if bf16 and device.type != "cuda":
        return {"ok": False, "error": "bf16 autocast is only used on CUDA; the CPU baseline runs in f32"}
    torch.manual_seed(spec.get("seed", 0))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))

    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    eps, theta = cfg.get("rms_norm_eps", 1e-5), cfg.get("rope_theta", 10000.0)
    vocab, layers, tied = cfg["vocab_size"], cfg["num_hidden_layers"], cfg.get("tie_word_embeddings", False)
    gqa_native = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(hidden))

        def forward(self, x):
            dtype = x.dtype
            x = x.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            return self.weight * x.to(dtype)

    def rotate_half(x):
        first, second = x.chunk(2, dim=-1)
        return torch.cat((-second, first), dim=-1)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm()
            self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
            self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
            self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
            self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
            self.post_attention_layernorm = RMSNorm()
            self.gate_proj = nn.Linear(hidden, inter, bias=False)
            self.up_proj = nn.Linear(hidden, inter, bias=False)
            self.down_proj = nn.Linear(inter, hidden, bias=False)

        def attend(self, q, k, v, mask):
            # q [1, heads, len, hd], k/v [1, kv_heads, len, hd]
            if kv_heads != heads and not gqa_native:
                k = k.repeat_interleave(heads // kv_heads, dim=1)
                v = v.repeat_interleave(heads // kv_heads, dim=1)
            extra = {"enable_gqa": True} if (kv_heads != heads and gqa_native) else {}
            if mask is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, **extra)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **extra)

        def forward(self, x, lengths, cos, sin, mask):
            total = x.shape[0]
            normed = self.input_layernorm(x)
            q = self.q_proj(normed).view(total, heads, head_dim).transpose(0, 1)
            k = self.k_proj(normed).view(total, kv_heads, head_dim).transpose(0, 1)
            v = self.v_proj(normed).view(total, kv_heads, head_dim).transpose(0, 1)
            q = (q * cos + rotate_half(q) * sin).to(v.dtype)
            k = (k * cos + rotate_half(k) * sin).to(v.dtype)
            if mask is not None:
                out = self.attend(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), mask).squeeze(0)
            else:
                outs, start = [], 0
                for n in lengths:
                    s = slice(start, start + n)
                    outs.append(self.attend(q[None, :, s], k[None, :, s], v[None, :, s], None).squeeze(0))
                    start += n
                out = torch.cat(outs, dim=1)
            x = x + self.o_proj(out.transpose(0, 1).reshape(total, heads * head_dim))
            normed = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(normed)) * self.up_proj(normed))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm = RMSNorm()
            self.lm_head = None if tied else nn.Linear(hidden, vocab, bias=False)

        def loss_sum(self, ids, lengths, positions, targets, cos, sin, mask):
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, lengths, cos, sin, mask)
            x = self.norm(x)
            selected = x.index_select(0, positions)
            weight = self.embed_tokens.weight if tied else self.lm_head.weight
            logits = F.linear(selected, weight)
            return F.cross_entropy(logits.float(), targets, reduction="sum")

    model = Model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
        if spec.get("weights"):
            # distillery's initial weights under their Hugging Face names.
            from safetensors.torch import load_file

            state = {
                name.removeprefix("model.").replace("self_attn.", "").replace("mlp.", ""): tensor.float()
                for name, tensor in load_file(spec["weights"]).items()
            }
            model.load_state_dict(state, strict=True)
    model.to(device)
    params = [p for p in model.parameters()]
    parameter_count = sum(p.numel() for p in params)

    inverse_frequency = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    longest = max(max(r["sequence_lengths"]) for r in spec["rows"])
    angles = torch.arange(longest, dtype=torch.float64)[:, None] * inverse_frequency[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    table_dtype = torch.bfloat16 if bf16 else torch.float32
    cos_table, sin_table = angles.cos().to(device, table_dtype), angles.sin().to(device, table_dtype)

    block_mask = spec.get("attention", "per-sequence") == "block-mask"
    rows = []
    for r in spec["rows"]:
        lengths = r["sequence_lengths"]
        positions_in_seq = torch.cat([torch.arange(n) for n in lengths]).to(device)
        mask = None
        if block_mask:
            total = sum(lengths)
            seq_id = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(device)
            idx = torch.arange(total, device=device)
            mask = (seq_id[:, None] == seq_id[None, :]) & (idx[None, :] <= idx[:, None])
        rows.append(
            (
                torch.tensor(r["input_ids"], dtype=torch.long, device=device),
                lengths,
                torch.tensor(r["positions"], dtype=torch.long, device=device),
                torch.tensor(r["targets"], dtype=torch.long, device=device),
                cos_table.index_select(0, positions_in_seq),
                sin_table.index_select(0, positions_in_seq),
                mask,
            )
        )
    tokens_per_step = sum(len(r["input_ids"]) for r in spec["rows"])
    completion = sum(len(r["targets"]) for r in spec["rows"])

    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(
        params,
        lr=spec.get("lr", 1e-4),
        betas=tuple(spec.get("betas", (0.9, 0.999))),
        eps=spec.get("eps", 1e-8),
        weight_decay=spec.get("weight_decay", 0.0),
        **fused,
    )
    max_grad_norm = spec.get("max_grad_norm", 1.0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step():
        sync()
        started = time.perf_counter()
        total = None
        for ids, lengths, positions, targets, cos, sin, mask in rows:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss_sum(ids, lengths, positions, targets, cos, sin, mask) / completion
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        sync()
        forward_backward = time.perf_counter() - started
        started = time.perf_counter()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return float(total), forward_backward, time.perf_counter() - started

    warmup, steps = spec["warmup_steps"], spec["steps"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, forward_backward, optimizer_seconds, losses = [], [], [], []
    for i in range(warmup + steps):
        loss, fb, opt = step()
        losses.append(loss)
        if i >= warmup:
            seconds.append(fb + opt)
            forward_backward.append(fb)
            optimizer_seconds.append(opt)
    peak_gb = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    # An achievable peak for reference: one large matmul in the compute dtype.
    n = 8192 if device.type == "cuda" else 2048
    mm_dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=mm_dtype)
    b = torch.randn(n, n, device=device, dtype=mm_dtype)
    a @ b
    best = float("inf")
    for _ in range(4):
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    matmul_name = f"{n}x{n} {'bf16' if bf16 else 'f32'}"
    matmul_tflops = 2 * n**3 / best / 1e12
    del a, b

    if not all(math.isfinite(x) for x in losses):
        return {"ok": False, "error": f"non-finite loss: {losses}"}
    return {
        "ok": True,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "autocast_bf16": bf16,
        "attention": "block-mask" if block_mask else "per-sequence",
        "parameters": parameter_count,
        "tokens_per_step": tokens_per_step,
        "completion_tokens_per_step": completion,
        "step_seconds": seconds,
        "forward_backward_seconds": forward_backward,
        "optimizer_seconds": optimizer_seconds,
        "matmul": matmul_name,
        "matmul_tflops": matmul_tflops,
        "tokens_per_second": tokens_per_step * len(seconds) / sum(seconds),
        "losses": losses,
        "peak_memory_gb": peak_gb,
    }


if __name__ == "__main__":
    main()
