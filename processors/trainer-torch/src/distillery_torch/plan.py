"""Rank 0's step planner and the plan every rank receives.

Every optimizer step is planned independently of the world size: `global_batch_rows` rows in
topic order (or what is left once the feed is idle), cut into consecutive slices, one per rank.
Rank 0 sends each rank its plan in one collective; a plan is a STEP, a WAIT (no full batch
yet: every rank loops and asks again) or a STOP, so no rank ever runs a collective the others
do not. The bookkeeping is the candle trainer's (`train_loop` in
`processors/trainer/src/train.rs`): the position after each row, the shard ids counted when
their first row is trained, rows already trained of a resumed shard skipped.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import TrainerState
from .feed import Failed, FeedItem, Idle, Shard, ShardFeed, Skipped
from .records import Cursor
from .shards import PackedRow

STEP, WAIT, STOP, FAIL = "step", "wait", "stop", "fail"

@dataclass
class Plan:
    """What one rank does next."""

    kind: str
    step: int = 0
    """The step this plan completes (STEP), or the step the run stands at (STOP)."""
    lr: float = 0.0
    rows: list[PackedRow] = field(default_factory=list)
    """This rank's consecutive slice of the global batch."""
    micro_steps: int = 0
    """Forward/backward passes every rank runs (the largest slice; smaller ones add `step.FILLER`)."""
    completion_tokens: int = 0
    """Completion targets in the whole global batch: the loss's denominator."""
    tokens: int = 0
    checkpoint: str | None = None
    """After the step (or at STOP): None, `periodic`, `final` or `stop`."""
    checkpoint_uri: str = ""
    """The folder the checkpoint goes to."""
    error: str = ""
    """FAIL: why the run cannot go on."""


@dataclass
class QueuedRow:
    row: PackedRow
    after: Cursor
    """Where the input stands once this row is trained on."""
    starts_shard: str | None
    """Set on a shard's first row: the shard id, counted as consumed from then on."""


def slices(count: int, world: int) -> list[range]:
    """Consecutive slices of `count` rows over `world` ranks (the first ones one longer)."""
    base, extra = divmod(count, world)
    bounds = [0]
    for rank in range(world):
        bounds.append(bounds[-1] + base + (1 if rank < extra else 0))
    return [range(bounds[r], bounds[r + 1]) for r in range(world)]


def rows_digest(rows: list[PackedRow]) -> str:
    """A short hash of a batch's rows in order (logged per step: twins must agree)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.input_ids.tobytes())
        digest.update(np.asarray(row.sequence_lengths, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


class Planner:
    """Turns feed items into global batches and keeps the run's state (rank 0)."""

    def __init__(
        self, state: TrainerState, global_batch_rows: int, steps: int, checkpoint_every: int, lr_of: Callable[[int], float]
    ) -> None:
        self.state = state
        self.lr_of = lr_of
        self.batch_rows = global_batch_rows
        self.steps = steps
        self.checkpoint_every = checkpoint_every
        self.queue: deque[QueuedRow] = deque()
        self.skip_rows = state.rows_done
        self.feed_idle = False
        self.failure: str | None = None
        self.last_batch: list[PackedRow] = []

    def take(self, item: FeedItem) -> None:
        """One feed item into the row queue (or the position, when nothing is queued)."""
        if isinstance(item, Shard):
            count = len(item.rows)
            for index in range(self.skip_rows, count):
                if index + 1 == count:
                    after = Cursor(item.offset + 1, 0)
                else:
                    after = Cursor(item.offset, index + 1)
                starts = item.id if index == self.skip_rows and self.skip_rows == 0 else None
                self.queue.append(QueuedRow(item.rows[index], after, starts))
            if count == 0 or self.skip_rows >= count:
                self._move_to(Cursor(item.offset + 1, 0))
            self.skip_rows = 0
        elif isinstance(item, Skipped):
            self._move_to(Cursor(item.offset + 1, 0))
            self.skip_rows = 0
        elif isinstance(item, Idle):
            self.feed_idle = True
        elif isinstance(item, Failed):
            self.failure = item.error

    def _move_to(self, cursor: Cursor) -> None:
        if self.queue:
            self.queue[-1].after = cursor
        else:
            self.state.next_offset, self.state.rows_done = cursor.next_offset, cursor.rows_done

    def fill(self, feed: ShardFeed, wait: float) -> None:
        """Takes feed items until a global batch is queued, the feed is idle or has failed, or
        `wait` seconds pass without an item."""
        while len(self.queue) < self.batch_rows and not self.feed_idle and self.failure is None:
            item = feed.next(wait)
            if item is None:
                return
            self.take(item)

    def plan(self, world: int, stop_requested: bool) -> list[Plan]:
        """Every rank's plan for this round (and the state moved past the planned step)."""
        if self.failure is not None:
            return [Plan(FAIL, error=self.failure)] * world
        if stop_requested:
            # Rows queued but not trained are not in the position: a restart reads them again.
            return [Plan(STOP, step=self.state.step, checkpoint="stop")] * world
        full = len(self.queue) >= self.batch_rows
        if not full and not self.feed_idle:
            return [Plan(WAIT)] * world
        if not self.queue:
            return [Plan(STOP, step=self.state.step, checkpoint="final")] * world
        batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.batch_rows))]
        rows = [q.row for q in batch]
        for queued in batch:
            if queued.starts_shard is not None:
                self.state.shard_ids.append(queued.starts_shard)
                self.state.shards_consumed += 1
        after = batch[-1].after
        self.state.next_offset, self.state.rows_done = after.next_offset, after.rows_done
        tokens = sum(len(r.input_ids) for r in rows)
        lr = self.lr_of(self.state.step)
        self.state.tokens_seen += tokens
        self.state.step += 1
        done = self.state.step >= self.steps or (self.feed_idle and not self.queue)
        checkpoint = "final" if done else "periodic" if self.state.step % self.checkpoint_every == 0 else None
        completion = sum(r.completion_tokens() for r in rows)
        parts = slices(len(rows), world)
        micro_steps = max(len(p) for p in parts)
        self.last_batch = rows
        return [
            Plan(
                STEP,
                step=self.state.step,
                lr=lr,
                rows=[rows[i] for i in part],
                micro_steps=micro_steps,
                completion_tokens=completion,
                tokens=tokens,
                checkpoint=checkpoint,
            )
            for part in parts
        ]
