"""The student: any Hugging Face causal LM of the supported families (Llama, Mistral, Qwen2,
NemotronH) built through transformers, wrapped so that one forward takes a packed row and
returns its completion loss, and sharded with FSDP2.

Building (every rank): the model is created on the meta device, its Mamba2 mixers made
sequence-aware, `fully_shard` applied to every decoder layer and then to the root, and only
then given memory; rank 0 alone holds the full weights (from the Hugging Face folder, or drawn
from `init_seed` for `student = "random"`) and broadcasts them into the shards. A 12B student
therefore needs its full f32 weights in one process's CPU memory once, never on every rank.

Precision: f32 master weights always. On CUDA with bf16 compute, FSDP2 casts parameters to
bf16 for the forward and backward and reduces gradients in f32; on the CPU everything is f32.

The loss (`chunked_cross_entropy_sum`): cross-entropy at the completion targets only, summed,
computed `loss_chunk_tokens` positions at a time with each chunk's logits recomputed in the
backward pass, so a 60k-token row's logits (31 GB in f32 over a 131k vocabulary) never exist
at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from .packing import ATTENTION_NAME, PackedBatch, segment_mamba_mixers

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "nemotron_h")


def chunked_cross_entropy_sum(
    hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Sum over rows of -log softmax(hidden @ head.T)[target], in f32: hidden [T, H], head
    [V, H], targets [T]. Chunks of `chunk` rows; with more than one chunk, each chunk's logits
    are recomputed in the backward pass instead of kept."""

    def chunk_loss(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")

    if len(targets) <= chunk:
        return chunk_loss(hidden, head, targets)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(chunk_loss, hidden[part], head, targets[part], use_reentrant=False)
    return total


class PackedCausalLM(nn.Module):
    """A Hugging Face causal LM (`self.hf`, whose parameter names are the checkpoint's) taking
    packed rows. It is the FSDP root: its forward gathers the embedding, final norm and
    output head, each decoder layer gathers its own."""

    def __init__(self, hf: nn.Module, loss_chunk_tokens: int) -> None:
        super().__init__()
        self.hf = hf
        self.loss_chunk_tokens = loss_chunk_tokens

    def base(self) -> Any:
        hf: Any = self.hf
        return getattr(hf, hf.base_model_prefix)

    def head_weight(self) -> torch.Tensor:
        hf: Any = self.hf
        weight: torch.Tensor = hf.get_output_embeddings().weight
        return weight

    def forward(self, batch: PackedBatch, loss_scale: float | None = None) -> torch.Tensor:
        """With `loss_scale`: the row's summed completion cross-entropy times `loss_scale` (one
        over the global batch's completion tokens). Without: the row's logits [L, V] (tests)."""
        hidden = self.base()(**batch.model_kwargs()).last_hidden_state[0]
        head = self.head_weight()
        if loss_scale is None:
            return F.linear(hidden, head)
        if len(batch.targets) == 0:
            # A row without targets (or a rank's filler micro-step) still sends a zero gradient
            # through every parameter, so every rank runs the same reduce-scatters.
            return F.linear(hidden[:1], head).sum() * 0.0
        selected = hidden.index_select(0, batch.target_positions)
        return chunked_cross_entropy_sum(selected, head, batch.targets, self.loss_chunk_tokens) * loss_scale


def config_from_json(text: str) -> PretrainedConfig:
    """A transformers config from the text of a `config.json`."""
    # transformers writes infinities as {"__float__": "Infinity"} (NemotronH's time_step_limit).
    values = PretrainedConfig._decode_special_floats(json.loads(text))
    model_type = values.pop("model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type '{model_type}' is not supported by the torch engine (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return AutoConfig.for_model(model_type, **values)


def build_hf(config: PretrainedConfig, device: str | torch.device = "cpu") -> nn.Module:
    """The Hugging Face model of `config` in f32 with packed attention and sequence-aware
    Mamba2 mixers (random weights from torch's generator unless `device` is meta)."""
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=ATTENTION_NAME)
    segment_mamba_mixers(hf)
    return hf


def load_pretrained(folder: Path) -> nn.Module:
    """A Hugging Face model folder on local disk, in f32 on the CPU."""
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=ATTENTION_NAME)
    segment_mamba_mixers(hf)
    return hf


def shard(
    config: PretrainedConfig,
    full: nn.Module | None,
    device: torch.device,
    bf16: bool,
    activation_checkpointing: bool,
    loss_chunk_tokens: int,
) -> PackedCausalLM:
    """The FSDP2-sharded student on `device`. Rank 0 passes the full model (`full`), the others
    None; its weights and buffers are broadcast into every rank's shards."""
    hf: Any = build_hf(config, "meta")
    if activation_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = PackedCausalLM(hf, loss_chunk_tokens)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in model.base().layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Gradients are summed over ranks, not averaged: the loss is already divided by the
            # global count of completion tokens (the candle trainer's normalisation).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    model.to_empty(device=device)
    weights: dict[str, Any] = {}
    if full is not None:
        weights = {f"hf.{name}": tensor for name, tensor in full.state_dict().items()}
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # Buffers (rotary frequencies) are not sharded and not in every state dict: copy them too.
    sources = dict(full.named_buffers()) if full is not None else {}
    for name, buffer in model.named_buffers():
        if full is not None:
            buffer.copy_(sources[name.removeprefix("hf.")])
        dist.broadcast(buffer, src=0)
    return model
