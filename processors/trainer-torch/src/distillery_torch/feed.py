"""Rank 0's shard feed: manifests in topic order from the single-partition shards topic,
shards fetched with read-ahead and checked, and a decision for every offset that is the same
on every restart.

For each manifest, in offset order:
- a record that is not a shard manifest is dead-lettered (USER);
- an offset this trainer dead-lettered before (found on the dead-letter topic at start-up) is
  skipped without looking at the shard again: a decision made once stays made, whatever the
  store answers now;
- a manifest whose id was already trained (listed in the checkpoint, or accepted earlier in
  this run) is dropped: a re-published manifest is trained once;
- otherwise the shard is fetched (an unreachable store is waited for, however long; a store
  that answers "no such object" `fetch_attempts` times gets the manifest dead-lettered,
  EXTERNAL) and checked against its sha256 and shape (a mismatch is dead-lettered, USER).

A dead letter is acknowledged by the broker before the offset is passed, so no checkpoint can
ever be past an offset whose decision a restart could not find.

The feed never ends a run as if its input were exhausted because of a failure: opening or
polling the topic (an unreachable broker, a missing topic) or sending a dead letter that keeps
failing for `read_retry_secs` ends the feed with `Failed`, and so does a saved position the topic
no longer has (at once: `PositionGone`). While the topic yields nothing the broker is asked for
its watermarks every `PROBE_EVERY_SECS`, so that an outage is told apart from an idle topic.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException

from . import avro, objects
from .kafka import Connection, OrderedReader, Publisher, ReadRecord, RetriesExhausted, read_to_end, retry_for
from .records import Cursor
from .shards import PackedRow, ShardError, read_shard, rows_of

log = logging.getLogger(__name__)

PROBE_EVERY_SECS = 1.0
"""While no record arrives, how often the broker is asked for the topic's watermarks."""


@dataclass(frozen=True)
class Shard:
    """A checked shard's rows, at its offset."""

    offset: int
    id: str
    rows: list[PackedRow]


@dataclass(frozen=True)
class Skipped:
    """An offset whose record is not trained on (dead-lettered or a duplicate)."""

    offset: int


@dataclass(frozen=True)
class Idle:
    """No new manifest for `stop_when_idle_secs`."""


@dataclass(frozen=True)
class Failed:
    """The feed cannot go on (a bug or an unusable topic): the run exits non-zero."""

    error: str


FeedItem = Shard | Skipped | Idle | Failed


class MissingShard(Exception):
    """The store keeps answering that the shard does not exist."""


class Stopped(Exception):
    """The run is stopping while a fetch waits for the store."""


def dead_lettered_offsets(connection: Connection, dead_letter_topic: str, processor: str, topic: str) -> set[int]:
    """Offsets of `topic` this processor dead-lettered in earlier runs."""
    offsets = set()
    for record in read_to_end(connection, dead_letter_topic):
        if record.headers.get("distillery-source-topic") != topic:
            continue
        try:
            letter = avro.decode("dead_letter", record.payload)
        except avro.CodecError:
            continue
        if letter["processor"] == processor and letter["source_topic"] == topic and letter["source_partition"] == 0:
            offsets.add(letter["source_offset"])
    return offsets


class ShardFeed:
    """Runs the feed on a thread; `next()` hands out items in offset order."""

    def __init__(
        self,
        connection: Connection,
        publisher: Publisher,
        topic: str,
        cursor: Cursor,
        trained_ids: list[str],
        dead_lettered: set[int],
        vocab_size: int,
        read_ahead: int,
        fetch_attempts: int,
        idle_after: float | None,
        stop: threading.Event,
        resumed: bool = False,
        read_retry_secs: float = 300.0,
    ) -> None:
        """`resumed`: the run resumes from a checkpoint, so reading starts at `cursor` exactly
        (a position the topic no longer has is refused); else at the topic's earliest record.
        `read_retry_secs`: how long reading or dead-lettering may keep failing."""
        self.connection = connection
        self.publisher = publisher
        self.topic = topic
        self.cursor = cursor
        self.seen = set(trained_ids)
        self.dead_lettered = dead_lettered
        self.vocab_size = vocab_size
        self.read_ahead = max(read_ahead, 1)
        self.fetch_attempts = max(fetch_attempts, 1)
        self.idle_after = idle_after
        self.stop = stop
        self.resumed = resumed
        self.read_retry_secs = read_retry_secs
        self.items: queue.Queue[FeedItem] = queue.Queue(maxsize=1)
        self.pool = ThreadPoolExecutor(max_workers=self.read_ahead, thread_name_prefix="shard-fetch")
        self.thread = threading.Thread(target=self._run, name="shard-feed", daemon=True)
        self.thread.start()

    def next(self, timeout: float) -> FeedItem | None:
        """The next item, or None if none is ready within `timeout` seconds. A feed whose
        thread ended without a last item is `Failed`, never mistaken for an idle topic."""
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            if self.thread.is_alive() or self.stop.is_set():
                return None
        try:
            return self.items.get_nowait()
        except queue.Empty:
            return Failed("the shard feed stopped without a result")

    # --- the feed thread -------------------------------------------------------------------
    def _emit(self, item: FeedItem) -> None:
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            self._feed()
        except Exception as e:  # anything unforeseen ends the run non-zero, never as "idle"
            log.exception("the shard feed failed")
            self._emit(Failed(f"{type(e).__name__}: {e}"))
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _probe_timeout(self) -> float:
        return min(max(self.read_retry_secs, 1.0), 5.0)

    def _feed(self) -> None:
        start = self.cursor.next_offset if self.resumed else None
        reader = retry_for(
            f"opening {self.topic}",
            lambda: OrderedReader(self.connection, self.topic, start, self._probe_timeout()),
            self.read_retry_secs,
            self.stop.is_set,
        )
        if reader is None:
            return
        window: deque[tuple[ReadRecord, Any]] = deque()
        last_record = last_probe = time.monotonic()
        failing_since: float | None = None

        def failing(error: Exception) -> None:
            """Counts a failed read against `read_retry_secs` (then gives up)."""
            nonlocal failing_since
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            elapsed = now - failing_since
            if elapsed >= self.read_retry_secs:
                raise RetriesExhausted(
                    f"reading {self.topic} kept failing for {elapsed:.1f} s "
                    f"(read_retry_secs = {self.read_retry_secs:g}); giving up: {error}"
                ) from error
            log.warning("reading %s failed (retrying for up to %g s): %s", self.topic, self.read_retry_secs, error)
            time.sleep(min(0.5, max(self.read_retry_secs - elapsed, 0.0)))

        try:
            while not self.stop.is_set():
                # Keep up to `read_ahead` shards fetching ahead of the one handed out next.
                while len(window) < self.read_ahead:
                    try:
                        record = reader.next(0.0 if window else 0.5)
                    except KafkaException as e:
                        failing(e)
                        break
                    if record is None:
                        break
                    last_record, failing_since = time.monotonic(), None
                    window.append((record, self._prepare(record)))
                if window:
                    record, prepared = window[0]
                    if isinstance(prepared, Future) and not prepared.done():
                        time.sleep(0.01)
                        continue
                    window.popleft()
                    self._emit(self._resolve(record, prepared))
                    continue
                # Nothing to hand out: is the topic idle, or is the broker gone? Idle is decided
                # only right after the broker answered.
                if time.monotonic() - last_probe < PROBE_EVERY_SECS and failing_since is None:
                    continue
                last_probe = time.monotonic()
                try:
                    reader.check(self._probe_timeout())
                except KafkaException as e:
                    failing(e)
                    continue
                failing_since = None
                if self.idle_after is not None and time.monotonic() - last_record >= self.idle_after:
                    self._emit(Idle())
                    return
        finally:
            reader.close()

    def _prepare(self, record: ReadRecord) -> Any:
        """What can be decided before fetching: a decision, or the fetch's future."""
        try:
            manifest = avro.decode("shard_manifest", record.payload)
        except avro.CodecError as e:
            return ("dead-letter", "USER", f"not a shard manifest: {e}")
        if record.offset in self.dead_lettered:
            return ("skip", f"dead-lettered by an earlier run of this trainer (manifest {manifest['id']})")
        if manifest["id"] in self.seen and not self._continues_resumed_shard(record):
            return ("skip", f"manifest {manifest['id']} was already trained")
        return self.pool.submit(self._fetch, manifest)

    def _continues_resumed_shard(self, record: ReadRecord) -> bool:
        """The shard a checkpoint stopped in the middle of: its id is already listed."""
        return record.offset == self.cursor.next_offset and self.cursor.rows_done > 0

    def _resolve(self, record: ReadRecord, prepared: Any) -> FeedItem:
        if isinstance(prepared, tuple):
            if prepared[0] == "dead-letter":
                return self._dead_letter(record, prepared[1], prepared[2])
            log.info("skipping %s offset %d: %s", self.topic, record.offset, prepared[1])
            return Skipped(record.offset)
        try:
            manifest_id, rows = prepared.result()
        except Stopped:
            return Skipped(record.offset) if self.stop.is_set() else Failed("a fetch stopped unexpectedly")
        except ShardError as e:
            return self._dead_letter(record, "USER", str(e))
        except MissingShard as e:
            return self._dead_letter(record, "EXTERNAL", str(e))
        if manifest_id in self.seen and not self._continues_resumed_shard(record):
            log.info("skipping %s offset %d: manifest %s was already trained", self.topic, record.offset, manifest_id)
            return Skipped(record.offset)
        self.seen.add(manifest_id)
        return Shard(record.offset, manifest_id, rows)

    def _dead_letter(self, record: ReadRecord, error_class: str, reason: str) -> FeedItem:
        # A dead letter the broker does not take within `read_retry_secs` fails the feed (the
        # offset is not passed, so a restart decides it again).
        self.publisher.dead_letter(self.topic, record, error_class, reason, within=self.read_retry_secs)
        self.dead_lettered.add(record.offset)
        return Skipped(record.offset)

    def _fetch(self, manifest: dict[str, Any]) -> tuple[str, list[PackedRow]]:
        """Downloads, checks and cuts one shard; waits out an unreachable store."""
        uri = manifest["uri"]
        missing, delay = 0, 0.1
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                data = objects.get_bytes(uri)
                break
            except Exception as e:
                if objects.is_missing(e):
                    missing += 1
                    if missing >= self.fetch_attempts:
                        raise MissingShard(f"cannot fetch shard {uri}: the store has no such object ({missing} attempts)") from e
                log.warning("fetching shard %s failed, retrying in %.1f s: %s", uri, delay, e)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        tensors = read_shard(data, manifest["sha256"])
        return manifest["id"], rows_of(tensors, self.vocab_size)
