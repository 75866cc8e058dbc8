"""Test 4: a manifest published twice is trained once; a shard whose checksum does not match its
manifest is dead-lettered with the reason; a shard the store does not have is dead-lettered
after `fetch_attempts` answers; and every restart skips both the same way, because the decision
is read back from the dead-letter topic rather than made again (the missing shard is uploaded
before the restart: fetching it again would now succeed and change what is trained).

Also the clean stop: SIGTERM to torchrun ends the run on both ranks after the current step with
a checkpoint, and the next run resumes from it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from distillery_torch import avro, objects
from harness import (
    Broker, experiment_topics, final_event, manifest, run_events, run_metrics, shard_bytes, start_engine,
    synthetic_rows, topology, trainer_state, wait_until,
)

EXPERIMENT = "feed"
CONFIG = (
    '{"model_type": "llama", "vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,'
    ' "num_attention_heads": 4, "num_key_value_heads": 2}'
)


def test_duplicates_are_trained_once_and_bad_shards_are_skipped_the_same_way_by_every_restart(
    broker: Broker, s3_prefix: str, tmp_path: Path
) -> None:
    broker.create_topics(experiment_topics(EXPERIMENT))
    objects.put_bytes(f"{s3_prefix}/config.json", CONFIG.encode())
    good = []
    for index in range(6):
        data, counts = shard_bytes(synthetic_rows(index, 4, 3, 32), "teacher-a", 64)
        uri = f"{s3_prefix}/shards/shard-{index}.safetensors"
        objects.put_bytes(uri, data)
        good.append(manifest(hashlib.sha256(data).hexdigest(), "teacher-a", index, uri, data, counts, 64))
    late_data, late_counts = shard_bytes(synthetic_rows(99, 4, 3, 32), "teacher-a", 64)
    late_uri = f"{s3_prefix}/shards/late.safetensors"
    wrong_checksum = {**good[2], "sha256": "0" * 64}
    missing = manifest(hashlib.sha256(late_data).hexdigest(), "teacher-a", 6, late_uri, late_data, late_counts, 64)
    # offset: 0 s0, 1 s1, 2 s1 again, 3 s2 with a wrong checksum, 4 a shard not in the store,
    #         5 s3, 6 s0 again, 7 s4, 8 s5
    published = [good[0], good[1], good[1], wrong_checksum, missing, good[3], good[0], good[4], good[5]]
    payloads = [avro.encode("shard_manifest", m) for m in published]
    broker.produce(f"{EXPERIMENT}.shards", [("teacher-a", p) for p in payloads])
    settings = {
        "engine": "torch", "student": "random", "model_config": f"{s3_prefix}/config.json", "init_seed": 1,
        "style": "teacher-a", "steps": 50, "global_batch_rows": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0,
        "checkpoint_every_steps": 100, "checkpoint_store": f"{s3_prefix}/checkpoints", "fetch_attempts": 2,
        "stop_when_idle_secs": 4,
    }
    path = tmp_path / "topology.toml"
    path.write_text(topology(EXPERIMENT, {"trainer": settings}))
    dead_letters = f"{EXPERIMENT}.dead-letters"

    # Run 1 decides: two dead letters, then it is killed before any checkpoint.
    first = start_engine(path, "trainer", broker, 2, tmp_path / "run-1.log")
    wait_until("two dead letters", 120, lambda: len(broker.read(dead_letters)) >= 2)
    wait_until("step 3 of run 1", 60, lambda: "step 3 loss" in first.log(), interval=0.02)
    first.kill9()
    assert run_events(broker, EXPERIMENT, "trainer") == []
    objects.put_bytes(late_uri, late_data)  # fetching it again would succeed now

    # Run 2 starts from offset 0 again and must skip offsets 3 and 4 as run 1 decided; it is
    # stopped with SIGTERM after it passed them.
    second = start_engine(path, "trainer", broker, 2, tmp_path / "run-2.log")
    wait_until("step 4 of run 2", 120, lambda: "step 4 loss" in second.log(), interval=0.02)
    second.terminate()
    second.wait(120)
    log = second.log()
    for offset in (3, 4):
        assert re.search(rf"skipping feed.shards offset {offset}: dead-lettered by an earlier run", log), log[-3000:]
    assert "skipping feed.shards offset 2: manifest" in log and "was already trained" in log
    assert len(re.findall(r"rank=\d distillery_torch: SIGTERM received", log)) == 2, "both ranks got the signal"
    [stopped] = run_events(broker, EXPERIMENT, "trainer")
    assert not stopped["is_final"] and stopped["step"] >= 4

    # Run 3 resumes from the SIGTERM checkpoint and trains the rest until the topic is idle.
    third = start_engine(path, "trainer", broker, 2, tmp_path / "run-3.log")
    assert third.wait(180) == 0, third.log()[-4000:]
    assert f"resuming from checkpoint step {stopped['step']}" in third.log()
    final = final_event(broker, EXPERIMENT, "trainer")
    assert final is not None and final["step"] == 5 and final["consumed"][0]["next_offset"] == 9
    expected = [good[i]["id"] for i in (0, 1, 3, 4, 5)]
    assert trainer_state(final["uri"])["shard_ids"] == expected, "each good shard once, in topic order"
    assert final["shards_consumed"] == 5

    letters = [(r, avro.decode("dead_letter", r.payload)) for r in broker.read(dead_letters)]
    assert len(letters) == 2, "decided once, never again"
    by_offset = {letter["source_offset"]: (record, letter) for record, letter in letters}
    record, letter = by_offset[3]
    assert (letter["error_class"], letter["processor"], letter["source_topic"]) == ("USER", "trainer", f"{EXPERIMENT}.shards")
    assert "checksum" in letter["error"] and letter["original"] == payloads[3]
    assert record.headers["distillery-source-offset"] == "3" and "checksum" in record.headers["distillery-error"]
    assert record.headers["distillery-id"] == letter["id"] and record.headers["distillery-producer"] == "trainer/0"
    _, letter = by_offset[4]
    assert letter["error_class"] == "EXTERNAL" and "no such object (2 attempts)" in letter["error"]
    assert letter["original"] == payloads[4]

    losses: dict[int, set[float]] = {}
    for m in run_metrics(broker, EXPERIMENT, "trainer"):
        losses.setdefault(m["step"], set()).add(m["loss"])
    assert sorted(losses) == [1, 2, 3, 4, 5] and all(len(v) == 1 for v in losses.values()), "redone steps repeat exactly"
