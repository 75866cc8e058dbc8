"""Rank 0's planner: global batches independent of the world size, consecutive slices per
rank, and the candle trainer's bookkeeping of the input position (rows of a resumed shard
skipped, a shard counted when its first row is trained, skipped offsets passed)."""

from __future__ import annotations

import numpy as np

from distillery_torch.checkpoint import TrainerState
from distillery_torch.feed import Idle, Shard, Skipped
from distillery_torch.plan import STEP, STOP, WAIT, Planner, slices
from distillery_torch.shards import PackedRow


def rows(n: int, first_token: int) -> list[PackedRow]:
    return [
        PackedRow(np.arange(first_token + i, first_token + i + 4, dtype=np.int64), np.array([0, 1, 1, 1], dtype=np.uint8), (4,))
        for i in range(n)
    ]


def planner(state: TrainerState, batch: int = 3, steps: int = 10, every: int = 2) -> Planner:
    return Planner(state, batch, steps, every, lambda step: 0.1 * (step + 1))


def test_slices_are_consecutive_and_differ_by_at_most_one_row() -> None:
    assert slices(5, 2) == [range(0, 3), range(3, 5)]
    assert slices(2, 4) == [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]
    assert slices(64, 8) == [range(8 * r, 8 * r + 8) for r in range(8)]


def test_the_same_rows_in_the_same_order_whatever_the_world_size() -> None:
    def batches(world: int) -> list[list[bytes]]:
        p = planner(TrainerState(0, 0, 0, "t"), batch=5)
        for offset in range(3):
            p.take(Shard(offset, f"s{offset}", rows(4, 10 * offset)))
        plans = p.plan(world, stop_requested=False)
        assert all(plan.kind == STEP for plan in plans)
        assert {plan.micro_steps for plan in plans} == {max(len(plan.rows) for plan in plans)}
        return [[row.input_ids.tobytes() for plan in plans for row in plan.rows]]

    assert batches(1) == batches(2) == batches(3)


def test_a_resumed_shard_skips_its_trained_rows_and_is_not_counted_twice() -> None:
    state = TrainerState(step=4, next_offset=7, rows_done=2, input_topic="t", shard_ids=["a", "b"], shards_consumed=2)
    p = planner(state, batch=3)
    p.take(Shard(7, "b", rows(5, 0)))
    assert [(q.after.next_offset, q.after.rows_done) for q in p.queue] == [(7, 3), (7, 4), (8, 0)]
    assert all(q.starts_shard is None for q in p.queue)
    [plan] = p.plan(1, stop_requested=False)
    assert plan.kind == STEP and plan.step == 5 and abs(plan.lr - 0.5) < 1e-12
    assert (state.next_offset, state.rows_done, state.shard_ids) == (8, 0, ["a", "b"])


def test_skipped_offsets_move_the_position_and_shards_count_on_their_first_row() -> None:
    state = TrainerState(step=0, next_offset=0, rows_done=0, input_topic="t")
    p = planner(state, batch=3)
    p.take(Skipped(0))
    assert (state.next_offset, state.rows_done) == (1, 0), "nothing queued: the position itself moves"
    p.take(Shard(1, "x", rows(2, 0)))
    assert p.plan(1, stop_requested=False)[0].kind == WAIT, "no full batch and the feed is not idle"
    p.take(Skipped(2))
    p.take(Shard(3, "y", rows(2, 50)))
    plan = p.plan(2, stop_requested=False)
    assert [len(part.rows) for part in plan] == [2, 1] and plan[0].checkpoint is None
    assert state.shard_ids == ["x", "y"] and (state.next_offset, state.rows_done) == (3, 1)
    p.take(Idle())
    [last] = p.plan(1, stop_requested=False)
    assert last.kind == STEP and len(last.rows) == 1 and last.checkpoint == "final", "the idle feed's partial batch ends the run"
    assert (state.next_offset, state.rows_done, state.step) == (4, 0, 2)


def test_checkpoints_come_every_n_steps_and_a_stop_request_stops_without_training() -> None:
    state = TrainerState(step=0, next_offset=0, rows_done=0, input_topic="t")
    p = planner(state, batch=1, steps=3, every=2)
    p.take(Shard(0, "x", rows(5, 0)))
    kinds = [p.plan(1, stop_requested=False)[0].checkpoint for _ in range(3)]
    assert kinds == [None, "periodic", "final"]
    p = planner(TrainerState(step=0, next_offset=0, rows_done=0, input_topic="t"), batch=1)
    p.take(Shard(0, "x", rows(5, 0)))
    [stop] = p.plan(1, stop_requested=True)
    assert stop.kind == STOP and stop.checkpoint == "stop" and p.state.step == 0 and len(p.queue) == 5
