"""Packed rows inside a Hugging Face model: batch size 1, no padding, positions restarting at 0
in every sequence, and the sequence boundaries (cu_seqlens) handed explicitly to every layer
that mixes positions, so nothing of one sequence reaches another.

- Attention: the models run with `attn_implementation="distillery_packed"`, registered here.
  Its function picks the kernel from what the wrapper passes as the attention mask:
  a boolean block-diagonal causal mask [1, 1, L, L] (`sdpa`: one SDPA call per row, memory
  L^2, for CPUs and tests), a flex-attention `BlockMask` built from the boundaries (`flex`),
  or no mask plus `cu_seq_lens_q/k` (`varlen`: PyTorch's variable-length flash/cuDNN kernel
  on CUDA). transformers hands a prepared 4-D mask to the layers unchanged, and never infers
  boundaries from position ids for an implementation it does not know, so nothing here
  relies on its packed-sequence detection.
- Mamba2 (NemotronH): transformers' block passes no boundaries its mixer uses (the torch path
  has no boundary logic, and state and the causal convolution would leak from one sequence
  into the next). `segment_mamba_mixers` gives each Mamba2 mixer a forward that runs it once
  per sequence, which is exact on every path (kernels or not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from .shards import PackedRow

ATTENTION_NAME = "distillery_packed"


@dataclass
class PackedBatch:
    """One packed row as tensors on the training device (batch size 1)."""

    input_ids: torch.Tensor
    """int64 [1, L]."""
    position_ids: torch.Tensor
    """int64 [1, L], restarting at 0 in every sequence."""
    cu_seqlens: torch.Tensor
    """int32 [sequences + 1], sequence start offsets."""
    max_length: int
    """Longest sequence."""
    attention_mask: Any
    """What the attention function dispatches on: a bool [1, 1, L, L] mask, a flex
    `BlockMask`, or None (varlen)."""
    target_positions: torch.Tensor
    """int64 [T]: positions whose next token is a completion token of the same sequence."""
    targets: torch.Tensor
    """int64 [T]: those next tokens."""

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the base model's forward (no KV cache: models would build
        one by default, and NemotronH's Mamba2 layers would then run their cached path)."""
        return {
            "use_cache": False,
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }


def block_causal_mask(sequence_lengths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[1, 1, L, L] bool: query i sees key j when both are in the same sequence and j <= i."""
    lengths = torch.tensor(sequence_lengths, device=device)
    sequence = torch.repeat_interleave(torch.arange(len(sequence_lengths), device=device), lengths)
    index = torch.arange(len(sequence), device=device)
    mask = (sequence[:, None] == sequence[None, :]) & (index[None, :] <= index[:, None])
    return mask[None, None]


def flex_block_mask(sequence_lengths: tuple[int, ...], device: torch.device) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    lengths = torch.tensor(sequence_lengths, device=device)
    sequence = torch.repeat_interleave(torch.arange(len(sequence_lengths), device=device), lengths)

    def same_sequence_causal(b: Any, h: Any, q: Any, k: Any) -> Any:
        return (sequence[q] == sequence[k]) & (k <= q)

    total = int(lengths.sum())
    # Compiled on CUDA so that a 60k-token row's mask is built block by block, never as L x L.
    return create_block_mask(same_sequence_causal, None, None, total, total, device=device, _compile=device.type == "cuda")


def pack(row: PackedRow, device: torch.device, attention: str) -> PackedBatch:
    """Tensors of one row for `attention` (`sdpa`, `flex` or `varlen`)."""
    positions, targets = row.targets()
    if attention == "sdpa":
        mask: Any = block_causal_mask(row.sequence_lengths, device)
    elif attention == "flex":
        mask = flex_block_mask(row.sequence_lengths, device)
    else:
        mask = None
    return PackedBatch(
        input_ids=torch.from_numpy(row.input_ids).to(device)[None],
        position_ids=torch.from_numpy(row.position_ids()).to(device)[None],
        cu_seqlens=torch.from_numpy(row.cu_seqlens()).to(device),
        max_length=max(row.sequence_lengths),
        attention_mask=mask,
        target_positions=torch.from_numpy(positions.astype(np.int64)).to(device),
        targets=torch.from_numpy(targets.astype(np.int64)).to(device),
    )


# --- attention ---------------------------------------------------------------------------------
_compiled_flex: Callable[..., Any] | None = None


def _flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask: Any, scale: float | None) -> Any:
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        # Flex attention is fast only compiled; one compilation serves every layer and row length.
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    gqa = key.shape[1] != query.shape[1]
    return _compiled_flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, H, L, D], key/value [1, H_kv, L, D] -> ([1, L, H, D], None)."""
    gqa = key.shape[1] != query.shape[1]
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        out = _flex(query, key, value, attention_mask, scaling)
    elif attention_mask is None and cu_seqlens is not None:
        from torch.nn.attention.varlen import varlen_attn

        longest = int(kwargs["max_length_q"])
        varlen_out: torch.Tensor = varlen_attn(
            query[0].transpose(0, 1).contiguous(),
            key[0].transpose(0, 1).contiguous(),
            value[0].transpose(0, 1).contiguous(),
            cu_seqlens,
            cu_seqlens,
            longest,
            longest,
            scale=scaling,
            window_size=(-1, 0),
            enable_gqa=gqa,
        )
        return varlen_out[None], None
    else:
        # A prepared block-diagonal mask, or (no packing: one plain sequence) causal.
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            is_causal=attention_mask is None,
            scale=scaling,
            enable_gqa=gqa,
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, packed_attention)


def attention_kind(setting: str, device: torch.device) -> str:
    """`auto` resolved for the device."""
    if setting != "auto":
        return setting
    return "varlen" if device.type == "cuda" else "sdpa"


# --- Mamba2 ------------------------------------------------------------------------------------
_segmented_classes: dict[type, type] = {}


def _segmented(mixer_class: type) -> type:
    """A subclass of a Mamba2 mixer class whose forward runs once per packed sequence."""
    if mixer_class in _segmented_classes:
        return _segmented_classes[mixer_class]

    original: Any = mixer_class

    def forward(
        self: Any, hidden_states: torch.Tensor, cache: Any = None, attention_mask: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if cu_seqlens is None:
            return original.forward(self, hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        if cache is not None or hidden_states.shape[0] != 1:
            # The cached path would carry state from one packed sequence into the next.
            raise ValueError("packed rows run with batch size 1 and without a cache (use_cache=False)")
        bounds = cu_seqlens.tolist()
        # No packing kwargs reach the mixer itself: its kernels take no cu_seqlens, and each
        # call sees one whole sequence from position 0 with a fresh state.
        parts = [original.forward(self, hidden_states[:, s:e]) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
        return torch.cat(parts, dim=1)

    segmented = type(f"Segmented{mixer_class.__name__}", (mixer_class,), {"forward": forward})
    _segmented_classes[mixer_class] = segmented
    return segmented


def segment_mamba_mixers(model: nn.Module) -> int:
    """Makes every Mamba2 mixer of a NemotronH model sequence-aware (the class is swapped, so
    parameter names stay those of the Hugging Face checkpoint). Returns how many there were."""
    count = 0
    for module in model.modules():
        if type(module).__name__ == "NemotronHMamba2Mixer":
            module.__class__ = _segmented(type(module))
            count += 1
    return count
