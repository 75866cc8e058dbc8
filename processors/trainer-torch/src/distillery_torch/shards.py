"""Shards in the packer's format (`processors/packer/src/shard.rs`): one safetensors file per
manifest, tokens of all rows stored flat with their boundaries.

| tensor | dtype | shape | meaning |
|---|---|---|---|
| `input_ids` | I32 | [tokens] | token ids, row after row, no padding |
| `loss_mask` | U8 | [tokens] | 1 on completion tokens |
| `position_ids` | I32 | [tokens] | restart at 0 for every sequence |
| `cu_seqlens` | I32 | [sequences + 1] | sequence start offsets into the flat tokens |
| `row_offsets` | I32 | [rows + 1] | row start offsets into the flat tokens |

A shard is checked against its manifest's sha256 and for consistent offsets before any row of
it is used, so a damaged shard is refused as a whole (and dead-lettered), never half-trained.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load


class ShardError(ValueError):
    """A shard that cannot be trained on, with the reason."""


@dataclass(frozen=True)
class PackedRow:
    """Several sequences laid end to end."""

    input_ids: np.ndarray
    """int64 [tokens]."""
    loss_mask: np.ndarray
    """uint8 [tokens]: 1 on completion tokens (the tokens the student learns to produce)."""
    sequence_lengths: tuple[int, ...]
    """Lengths of the sequences in the row, in order; they sum to the row's tokens."""

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions whose next token is a completion token of the same sequence, and those
        next tokens: the prediction targets (as the candle trainer's `PackedRow::targets`)."""
        follows = np.zeros(len(self.input_ids), dtype=bool)
        follows[:-1] = self.loss_mask[1:] == 1
        ends = np.cumsum(self.sequence_lengths) - 1
        follows[ends] = False  # the last token of a sequence predicts nothing
        positions = np.nonzero(follows)[0]
        return positions, self.input_ids[positions + 1]

    def completion_tokens(self) -> int:
        return len(self.targets()[0])

    def position_ids(self) -> np.ndarray:
        """Positions restarting at 0 in every sequence."""
        return np.concatenate([np.arange(n, dtype=np.int64) for n in self.sequence_lengths])

    def cu_seqlens(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sequence_lengths)]).astype(np.int32)


def read_shard(data: bytes, expected_sha256: str | None) -> dict[str, np.ndarray]:
    """The shard's tensors, checked against the manifest's checksum and for consistency."""
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ShardError(f"shard checksum {actual} does not match the manifest's {expected_sha256}")
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types on malformed headers
        raise ShardError(f"not a safetensors shard: {e}") from e
    for name in ("input_ids", "position_ids", "cu_seqlens", "row_offsets"):
        if name not in tensors:
            raise ShardError(f"the shard has no {name}")
        if tensors[name].dtype != np.int32:
            raise ShardError(f"{name} is {tensors[name].dtype}, not int32")
    if "loss_mask" not in tensors or tensors["loss_mask"].dtype != np.uint8:
        raise ShardError("the shard has no uint8 loss_mask")
    n = len(tensors["input_ids"])
    if len(tensors["loss_mask"]) != n or len(tensors["position_ids"]) != n:
        raise ShardError("input_ids, loss_mask and position_ids differ in length")
    if (tensors["input_ids"] < 0).any():
        raise ShardError("input_ids holds a negative token id")
    for name in ("cu_seqlens", "row_offsets"):
        offsets = tensors[name]
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != n:
            raise ShardError(f"{name} must run from 0 to the {n} tokens")
        if (np.diff(offsets) < 0).any():
            raise ShardError(f"{name} is not ascending")
    if not np.isin(tensors["row_offsets"], tensors["cu_seqlens"]).all():
        raise ShardError("a row does not start on a sequence boundary")
    return tensors


def rows_of(tensors: dict[str, np.ndarray], vocab_size: int) -> list[PackedRow]:
    """Cuts a checked shard's flat arrays into rows, and each row into its sequences."""
    if int(tensors["input_ids"].max(initial=0)) >= vocab_size:
        raise ShardError(f"a token id is outside the student's vocabulary of {vocab_size}")
    boundaries = np.unique(tensors["cu_seqlens"])
    rows: list[PackedRow] = []
    offsets = tensors["row_offsets"]
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        if end == start:
            raise ShardError(f"row {len(rows)} is empty")
        cuts = boundaries[(boundaries >= start) & (boundaries <= end)]
        rows.append(
            PackedRow(
                input_ids=tensors["input_ids"][start:end].astype(np.int64),
                loss_mask=tensors["loss_mask"][start:end].copy(),
                sequence_lengths=tuple(int(x) for x in np.diff(cuts)),
            )
        )
    return rows
