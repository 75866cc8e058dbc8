"""The candle trainer's optimizer and schedule (`processors/trainer/src/optim.rs`,
`schedule.rs`), on FSDP2's sharded parameters: AdamW with f32 moments and decoupled weight
decay, the global gradient norm taken before clipping and clipped as `max_norm / (norm + 1e-6)`
when above `max_norm`, and the paper's schedule: linear warmup over `ceil(steps *
warmup_ratio)` steps from `warmup_start_lr`, then cosine decay to `min_lr` at the last step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .settings import TrainerSettings


@dataclass(frozen=True)
class LrSchedule:
    peak_lr: float
    warmup_start_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    @staticmethod
    def of(settings: TrainerSettings) -> LrSchedule:
        """`warmup_steps = ceil(total_steps * warmup_ratio)` (3,000 x 0.03 = 90)."""
        return LrSchedule(
            peak_lr=settings.learning_rate,
            warmup_start_lr=settings.warmup_start_lr,
            min_lr=settings.min_lr,
            warmup_steps=math.ceil(settings.steps * settings.warmup_ratio),
            total_steps=settings.steps,
        )

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            progress = step / self.warmup_steps
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * progress
        decay_steps = max(max(self.total_steps - 1, 0) - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


def adamw(parameters: list[torch.nn.Parameter], settings: TrainerSettings, cuda: bool) -> torch.optim.AdamW:
    """torch's AdamW with the trainer's betas, epsilon and weight decay (the lr is set each
    step from the schedule). Moments are f32, like the parameters they shard."""
    return torch.optim.AdamW(
        parameters,
        lr=settings.learning_rate,
        betas=(settings.beta1, settings.beta2),
        eps=settings.adam_eps,
        weight_decay=settings.weight_decay,
        fused=cuda,
        foreach=None if cuda else True,
    )


def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """The global L2 norm of the gradients over every rank's shards (before clipping), and
    clipping to `max_norm` (0 disables) as the candle trainer clips."""
    device = parameters[0].device
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for p in parameters:
        if p.grad is None:
            continue
        grad = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        squares += grad.double().pow(2).sum()
    dist.all_reduce(squares)
    norm = math.sqrt(float(squares))
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm
