"""One optimizer step over one rank's rows, as the engine takes it (and `bench` times it): a
forward and backward per row (gradient accumulation into FSDP2's sharded f32 gradients; every
rank runs `micro_steps` of them, the ranks with fewer rows on a filler row with zero gradient),
the loss of each row divided by the global batch's completion tokens, then clipping and AdamW."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from .model import PackedCausalLM
from .optim import clip_gradients
from .packing import pack
from .shards import PackedRow

# What a rank with fewer rows than the others trains on in its spare micro-steps: one token,
# no targets, so its gradient is exactly zero while the collectives line up.
FILLER = PackedRow(input_ids=np.zeros(1, dtype=np.int64), loss_mask=np.zeros(1, dtype=np.uint8), sequence_lengths=(1,))


def accumulate(
    model: PackedCausalLM,
    rows: list[PackedRow],
    micro_steps: int,
    completion_tokens: int,
    device: torch.device,
    attention: str,
) -> float:
    """Forward and backward of every micro-step; returns the global batch loss (mean over its
    completion tokens, summed over ranks)."""
    scale = 1.0 / completion_tokens
    local = torch.zeros((), dtype=torch.float64, device=device)
    for index in range(micro_steps):
        row = rows[index] if index < len(rows) else FILLER
        loss = model(pack(row, device, attention), loss_scale=scale)
        loss.backward()
        local += loss.detach().double()
    dist.all_reduce(local)
    return float(local)


def apply(model: PackedCausalLM, optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float) -> float:
    """Clips the accumulated gradients and takes the AdamW step; returns the norm before
    clipping."""
    grad_norm = clip_gradients(list(model.parameters()), max_grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train_rows(
    model: PackedCausalLM,
    optimizer: torch.optim.Optimizer,
    rows: list[PackedRow],
    micro_steps: int,
    completion_tokens: int,
    lr: float,
    max_grad_norm: float,
    device: torch.device,
    attention: str,
) -> tuple[float, float]:
    """The loss and the gradient norm before clipping. A batch without completion tokens
    takes no step."""
    if completion_tokens == 0:
        return 0.0, 0.0
    loss = accumulate(model, rows, micro_steps, completion_tokens, device, attention)
    return loss, apply(model, optimizer, lr, max_grad_norm)
