"""The trainer contract of the candle trainer (`tests/trainer_contract.rs`) on the torch engine:
a failure to read the input is retried for `read_retry_secs` only, then every rank exits
non-zero with a non-final checkpoint of what it trained (the run is never marked complete by a
failure) and a restart completes the run without training a shard twice; a saved position the
topic no longer has is refused with an error naming the offset and the topic's watermarks,
never silently restarted from the earliest record. (A manifest whose shard id was already
trained is skipped: `test_feed.py`.)"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distillery_torch import objects
from distillery_torch.feed import Failed, ShardFeed
from distillery_torch.kafka import Connection, Publisher, ReadRecord
from distillery_torch.records import Cursor
from harness import (
    Broker, experiment_topics, final_event, publish_shards, records, run_events, run_metrics, start_engine,
    synthetic_rows, topology, trainer_state, wait_until,
)

EXPERIMENT = "contract"
RUN = f"{EXPERIMENT}/trainer"
CONFIG = {
    "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False,
}


@pytest.fixture
def free_port() -> Iterator[int]:
    """A loopback port nothing listens on (held bound, not listening, for the test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def trainer_settings(s3_prefix: str, **extra: Any) -> dict[str, Any]:
    """A tiny trainer: shards of 2 rows, one step each, and 3 s of read retries."""
    return {
        "engine": "torch", "student": "random", "model_config": f"{s3_prefix}/config.json", "init_seed": 3,
        "style": "teacher-a", "global_batch_rows": 2, "learning_rate": 1e-3, "warmup_ratio": 0.0,
        "checkpoint_store": f"{s3_prefix}/checkpoints", "read_retry_secs": 3, **extra,
    }


def shards(first_seed: int, count: int) -> list[list[list[Any]]]:
    return [synthetic_rows(first_seed + i, 2, 2, 32) for i in range(count)]


def step_uri(s3_prefix: str, step: int) -> str:
    return f"{s3_prefix}/checkpoints/{RUN.replace('/', '.')}/step-{step:06}"


def test_a_bounded_retry_gives_up_after_read_retry_secs_naming_what_failed_and_for_how_long() -> None:
    from distillery_torch.kafka import RetriesExhausted, retry_for

    attempts = []

    def unreachable() -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("the broker does not answer")

    started = time.monotonic()
    with pytest.raises(RetriesExhausted, match=r"reading x\.shards kept failing for [\d.]+ s \(read_retry_secs = 2\).*"
                       r"the broker does not answer"):
        retry_for("reading x.shards", unreachable, 2, lambda: False)
    assert 2.0 <= time.monotonic() - started < 4.0 and len(attempts) >= 3, "backoff from 0.5 s, within the budget"
    assert retry_for("reading x.shards", unreachable, 60, lambda: True) is None, "a stop request ends the retries"


def test_with_no_broker_the_feed_fails_and_a_dead_letter_gives_up_after_read_retry_secs(free_port: int) -> None:
    from distillery_torch.kafka import RetriesExhausted

    nowhere = Connection(f"127.0.0.1:{free_port}", {})
    publisher = Publisher(nowhere, "trainer", "0", {}, "x.dead-letters")
    source = ReadRecord(partition=0, offset=7, key="k", payload=b"not a manifest", headers={})
    started = time.monotonic()
    with pytest.raises(RetriesExhausted, match=r"cannot dead-letter x\.shards offset 7: .*kept failing for"):
        publisher.dead_letter("x.shards", source, "USER", "not a manifest", within=2)
    assert time.monotonic() - started < 6

    started = time.monotonic()
    stop = threading.Event()
    feed = ShardFeed(nowhere, publisher, "x.shards", Cursor(), [], set(), 32, 1, 1, 0.5, stop, read_retry_secs=2)
    item = None
    while item is None and time.monotonic() - started < 60:
        item = feed.next(0.5)
    stop.set()
    assert isinstance(item, Failed), f"never idle, never complete: {item}"
    assert re.search(r"opening x\.shards kept failing for [\d.]+ s \(read_retry_secs = 2\)", item.error), item.error
    assert time.monotonic() - started < 30
    publisher.abandon()


def test_a_broker_that_goes_away_ends_every_rank_non_zero_with_a_non_final_checkpoint_and_a_restart_completes_the_run(
    s3_prefix: str, tmp_path: Path
) -> None:
    # A broker whose records survive its restart (sqlite store), as a real cluster's do.
    broker = Broker(tmp_path / "broker.log", store=tmp_path / "broker" / "nisshi.db")
    try:
        broker.create_topics(experiment_topics(EXPERIMENT))
        objects.put_bytes(f"{s3_prefix}/config.json", json.dumps(CONFIG).encode())
        first = publish_shards(broker, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards-a", shards(0, 3))
        # 5 shards in all, one step each; a checkpoint every 2 steps, so step 3 is trained but
        # not checkpointed when the broker goes away.
        settings = trainer_settings(s3_prefix, steps=5, checkpoint_every_steps=2)
        path = tmp_path / "topology.toml"
        path.write_text(topology(EXPERIMENT, {"trainer": settings}))

        engine = start_engine(path, "trainer", broker, 2, tmp_path / "run-1.log")
        wait_until("step 3", 180, lambda: any(m["step"] == 3 for m in run_metrics(broker, EXPERIMENT, "trainer")))
        assert [e["step"] for e in run_events(broker, EXPERIMENT, "trainer")] == [2]
        broker.stop()
        gone = time.monotonic()
        status = engine.wait(120)
        waited = time.monotonic() - gone
        log = engine.log()
        assert status != 0, f"torchrun must exit non-zero for its supervisor:\n{log[-4000:]}"
        assert waited < 60, f"the run took {waited:.0f} s to give up on a broker that is gone"
        assert re.search(r"kept failing for [\d.]+ s \(read_retry_secs = 3\)", log), log[-4000:]
        assert len(re.findall(r"rank=\d distillery_torch: the trainer failed", log)) == 2, "both ranks exit on the failure"
        # What was trained since the last checkpoint is kept, never as a final checkpoint; its
        # event could not be published (the broker is gone).
        kept = trainer_state(step_uri(s3_prefix, 3))
        assert kept["step"] == 3 and kept["is_final"] is False and len(kept["shard_ids"]) == 3
        assert "its event could not be published" in log

        broker.restart()
        events = run_events(broker, EXPERIMENT, "trainer")
        assert [e["step"] for e in events] == [2] and not any(e["is_final"] for e in events), "not marked complete"
        second = publish_shards(broker, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards-b", shards(10, 2))
        restarted = start_engine(path, "trainer", broker, 2, tmp_path / "run-2.log")
        assert restarted.wait(180) == 0, restarted.log()[-4000:]
        assert "resuming from checkpoint step 2" in restarted.log()
        final = final_event(broker, EXPERIMENT, "trainer")
        assert final is not None and final["step"] == 5 and final["shards_consumed"] == 5
        assert final["consumed"][0]["next_offset"] == 5
        assert trainer_state(final["uri"])["shard_ids"] == [m["id"] for m in first + second], "each shard once, in order"
        losses: dict[int, set[float]] = {}
        for m in run_metrics(broker, EXPERIMENT, "trainer"):
            losses.setdefault(m["step"], set()).add(m["loss"])
        assert sorted(losses) == [1, 2, 3, 4, 5] and all(len(v) == 1 for v in losses.values()), "step 3 redone exactly"
    finally:
        broker.stop()


def test_a_saved_position_beyond_the_end_of_a_recreated_topic_is_refused_naming_the_offset_and_the_watermarks(
    broker: Broker, s3_prefix: str, tmp_path: Path
) -> None:
    broker.create_topics(experiment_topics(EXPERIMENT))
    objects.put_bytes(f"{s3_prefix}/config.json", json.dumps(CONFIG).encode())
    publish_shards(broker, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards-a", shards(0, 3))
    path = tmp_path / "topology.toml"
    path.write_text(topology(EXPERIMENT, {"trainer": trainer_settings(s3_prefix, steps=100, checkpoint_every_steps=1)}))
    engine = start_engine(path, "trainer", broker, 1, tmp_path / "run-1.log")
    wait_until("a checkpoint past the third shard", 180, lambda: any(
        e["consumed"][0]["next_offset"] == 3 for e in run_events(broker, EXPERIMENT, "trainer")))
    engine.kill9()
    saved = broker.read(f"{EXPERIMENT}.checkpoints")

    # The broker loses its topics (a new, empty one); the checkpoint events are published back
    # as they were, and one new shard arrives: the topic now holds offsets 0..1.
    recreated = Broker(tmp_path / "broker-2.log")
    try:
        recreated.create_topics(experiment_topics(EXPERIMENT))
        recreated.produce(f"{EXPERIMENT}.checkpoints", [(r.key or "", r.payload) for r in saved])
        publish_shards(recreated, f"{EXPERIMENT}.shards", f"{s3_prefix}/shards-b", shards(10, 1))
        restarted = start_engine(path, "trainer", recreated, 1, tmp_path / "run-2.log")
        status = restarted.wait(120)
        log = restarted.log()
        assert status != 0, f"resuming past the topic's end must fail:\n{log[-4000:]}"
        assert f"{EXPERIMENT}.shards: the saved position (offset 3) is not in the topic any more" in log, log[-4000:]
        assert "it holds offsets 0..1" in log, log[-4000:]
        assert run_metrics(recreated, EXPERIMENT, "trainer") == [], "nothing trained from another position"
        events = records(recreated, f"{EXPERIMENT}.checkpoints", "checkpoint_event")
        assert len(events) == len(saved) and not any(e["is_final"] for e in events)
    finally:
        recreated.stop()
