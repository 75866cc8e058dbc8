"""The records this engine writes, field for field as the candle trainer and the runtime write
them (`processors/trainer/src/train.rs`, `processors/runtime/src/publisher.rs`), with the same
deterministic ids, so a redone step or a replayed dead letter carries the id of the first one
and consumers drop it."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any


def stable_id(*parts: str) -> str:
    """Hex of the first 16 bytes of sha256 over the parts separated by NUL (`stable_id` in
    `schemas/src/record.rs`)."""
    return hashlib.sha256(b"\x00".join(p.encode() for p in parts)).digest()[:16].hex()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Cursor:
    """Where the trainer is in its input: the next manifest to read, and how many rows of the
    shard at that offset are already trained on (`ShardPosition` of the candle trainer)."""

    next_offset: int = 0
    rows_done: int = 0


def train_metrics(
    run: str,
    style: str,
    step: int,
    loss: float,
    lr: float,
    grad_norm: float,
    tokens: int,
    completion_tokens: int,
    seconds: float,
) -> dict[str, Any]:
    return {
        "id": stable_id(run, str(step)),
        "run": run,
        "style": style,
        "step": step,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": tokens,
        "completion_tokens": completion_tokens,
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "created_at_ms": now_ms(),
    }


def checkpoint_event(
    run: str,
    style: str,
    step: int,
    uri: str,
    input_topic: str,
    next_offset: int,
    shards_consumed: int,
    tokens_seen: int,
    is_final: bool,
) -> dict[str, Any]:
    return {
        "id": stable_id(run, str(step), "final" if is_final else ""),
        "run": run,
        "style": style,
        "step": step,
        "uri": uri,
        "consumed": [{"topic": input_topic, "partition": 0, "next_offset": next_offset}],
        "shards_consumed": shards_consumed,
        "tokens_seen": tokens_seen,
        "is_final": is_final,
        "created_at_ms": now_ms(),
    }


def dead_letter_id(processor: str, source_topic: str, partition: int, offset: int) -> str:
    """The same id for the same failed input, however often it fails."""
    return stable_id(processor, source_topic, str(partition), str(offset))


def dead_letter(
    processor: str,
    error_class: str,
    error: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: str | None,
    original: bytes,
) -> dict[str, Any]:
    return {
        "id": dead_letter_id(processor, source_topic, partition, offset),
        "processor": processor,
        "error_class": error_class,
        "error": error,
        "source_topic": source_topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": key,
        "original": original,
        "created_at_ms": now_ms(),
    }
