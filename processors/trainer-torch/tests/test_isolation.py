"""Test 1 (and test 6's isolation half): inside a packed row, a sequence's logits equal its
logits alone, for a tiny Llama and a tiny NemotronH (Mamba2 + attention + MLP layers), through
the same wrapper the engine trains. The negative controls show what the boundaries prevent: with
positions running on and no boundaries the logits differ, and NemotronH's Mamba2 layers without
our per-sequence forward leak state between sequences even when attention is kept apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery_torch.model import PackedCausalLM, build_hf, chunked_cross_entropy_sum, config_from_json
from distillery_torch.packing import PackedBatch, pack
from distillery_torch.shards import PackedRow

LLAMA = (
    '{"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,'
    ' "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true}'
)
# Two Mamba2 layers around an attention layer and an MLP; chunk_size 4 so that sequences span
# several SSD chunks and chunk boundaries fall inside sequences.
NEMOTRON_H = (
    '{"model_type": "nemotron_h", "vocab_size": 64, "hidden_size": 32,'
    ' "layers_block_type": ["linear_attention", "full_attention", "linear_attention", "mlp"],'
    ' "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,'
    ' "ssm_state_size": 8, "mamba_num_heads": 4, "mamba_head_dim": 8, "n_groups": 2, "chunk_size": 4, "conv_kernel": 4}'
)
LENGTHS = (5, 11, 7)


def student(config: str) -> PackedCausalLM:
    torch.manual_seed(11)
    return PackedCausalLM(build_hf(config_from_json(config), "cpu"), loss_chunk_tokens=4096).eval()


def packed_row(seed: int) -> PackedRow:
    rng = np.random.default_rng(seed)
    total = sum(LENGTHS)
    return PackedRow(rng.integers(0, 64, total).astype(np.int64), np.ones(total, dtype=np.uint8), LENGTHS)


def logits(model: PackedCausalLM, batch: PackedBatch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


def alone(model: PackedCausalLM, row: PackedRow, index: int) -> torch.Tensor:
    start = sum(LENGTHS[:index])
    ids = row.input_ids[start : start + LENGTHS[index]]
    single = PackedRow(ids, np.ones(len(ids), dtype=np.uint8), (len(ids),))
    return logits(model, pack(single, torch.device("cpu"), "sdpa"))


def span(index: int) -> slice:
    start = sum(LENGTHS[:index])
    return slice(start, start + LENGTHS[index])


def unpacked(row: PackedRow) -> PackedBatch:
    """The row as one long sequence: positions running on, no boundaries (plain causal)."""
    batch = pack(PackedRow(row.input_ids, row.loss_mask, (len(row.input_ids),)), torch.device("cpu"), "sdpa")
    return batch


@pytest.mark.parametrize("config", [LLAMA, NEMOTRON_H], ids=["llama", "nemotron_h"])
def test_a_sequence_inside_a_packed_row_has_its_logits_alone(config: str) -> None:
    model = student(config)
    row = packed_row(1)
    packed = logits(model, pack(row, torch.device("cpu"), "sdpa"))
    for index in range(len(LENGTHS)):
        torch.testing.assert_close(packed[span(index)], alone(model, row, index), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [LLAMA, NEMOTRON_H], ids=["llama", "nemotron_h"])
def test_without_restarting_positions_and_boundaries_the_later_sequences_differ(config: str) -> None:
    model = student(config)
    row = packed_row(2)
    leaky = logits(model, unpacked(row))
    for index in (1, 2):
        difference = (leaky[span(index)] - alone(model, row, index)).abs().max().item()
        assert difference > 1e-2, f"sequence {index} saw the one before it only by {difference}"


def test_nemotron_h_mamba_layers_leak_across_sequences_without_the_per_sequence_forward() -> None:
    model = student(NEMOTRON_H)
    row = packed_row(3)
    mixers = [m for m in model.modules() if type(m).__name__.startswith("SegmentedNemotronHMamba2Mixer")]
    assert len(mixers) == 2, "both Mamba2 layers run per sequence"
    original = type(mixers[0]).__mro__[1]
    for mixer in mixers:
        mixer.__class__ = original  # transformers' own mixer: attention still kept apart
    leaky = logits(model, pack(row, torch.device("cpu"), "sdpa"))
    difference = (leaky[span(1)] - alone(model, row, 1)).abs().max().item()
    assert difference > 1e-2, f"transformers' Mamba2 mixer leaked only {difference} between sequences"


def test_the_chunked_loss_and_its_gradients_equal_the_whole_loss() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    head = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    whole = torch.nn.functional.cross_entropy(hidden @ head.T, targets, reduction="sum")
    whole_grads = torch.autograd.grad(whole, (hidden, head))
    chunked = chunked_cross_entropy_sum(hidden, head, targets, chunk=8)
    chunked_grads = torch.autograd.grad(chunked, (hidden, head))
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)
    for a, b in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
