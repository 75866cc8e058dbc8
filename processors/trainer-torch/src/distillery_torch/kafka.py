"""Every Kafka client of the engine, configured as `processors/runtime/src/kafka.rs` configures
its own (the one place that decides librdkafka settings), and the publisher that writes records
with the runtime's headers (`processors/runtime/src/publisher.rs`): `distillery-id`,
`distillery-kind`, `distillery-producer`, and on dead letters the error and the source position.

Only rank 0 talks to Kafka. It reads without a consumer group: the trainer's position lives in
its checkpoints, not in committed offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from . import avro
from .records import dead_letter

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Largest record any client sends or accepts (as on the Rust side)."""

HEADER_ID = "distillery-id"
HEADER_KIND = "distillery-kind"
HEADER_PRODUCER = "distillery-producer"
HEADER_ERROR = "distillery-error"
HEADER_ERROR_CLASS = "distillery-error-class"
HEADER_SOURCE_TOPIC = "distillery-source-topic"
HEADER_SOURCE_PARTITION = "distillery-source-partition"
HEADER_SOURCE_OFFSET = "distillery-source-offset"

# Errors a client reports while it reconnects (broker restarting, dropped connection):
# librdkafka retries by itself, so readers keep polling instead of failing.
_TRANSIENT = {
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.BROKER_NOT_AVAILABLE,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def is_transient(error: KafkaError) -> bool:
    return error.code() in _TRANSIENT


MAX_RETRY_DELAY = 5.0
"""Longest pause between two attempts of a bounded retry (`retry_for`)."""


class PositionGone(Exception):
    """A saved position the topic no longer has (deleted by retention, or the topic was
    recreated and is shorter): not retried, since starting over from another position would
    silently train on a different sequence (`PositionGone` in `processors/runtime/src/ordered.rs`)."""

    def __init__(self, topic: str, offset: int, low: int, high: int) -> None:
        super().__init__(
            f"{topic}: the saved position (offset {offset}) is not in the topic any more (it holds offsets "
            f"{low}..{high}); the topic was recreated or its records were deleted by retention. Refusing to start "
            "over from another position: restore the topic, or train a new run"
        )
        self.topic, self.offset, self.low, self.high = topic, offset, low, high


class RetriesExhausted(Exception):
    """An action kept failing for its whole retry budget (`read_retry_secs`)."""


@dataclass(frozen=True)
class ReadRecord:
    partition: int
    offset: int
    key: str | None
    payload: bytes
    headers: dict[str, str]

    @staticmethod
    def of(message: Message) -> ReadRecord:
        return ReadRecord(
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=_text(message.key()),
            payload=_bytes(message.value()),
            headers={k: _text(v) or "" for k, v in cast(list[tuple[str, Any]], message.headers() or [])},
        )


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def _text(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else value.decode(errors="replace")


@dataclass(frozen=True)
class Connection:
    """Bootstrap servers plus the `[kafka.properties]` pass-through settings (secrets already
    read from the environment; never printed)."""

    bootstrap_servers: str
    properties: dict[str, str]

    def __repr__(self) -> str:
        return f"Connection(bootstrap_servers={self.bootstrap_servers!r}, properties={sorted(self.properties)})"

    def _base(self) -> dict[str, Any]:
        # The local broker and containers advertise IPv4 literals; skip IPv6 lookups.
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "broker.address.family": "v4"}
        config.update(self.properties)
        return config

    def producer(self) -> Producer:
        """Idempotent, zstd-compressing producer that waits for the broker forever: while the
        broker is down the trainer pauses instead of dropping records."""
        config = self._base()
        config.update(
            {
                "enable.idempotence": True,
                "compression.type": "zstd",
                "linger.ms": 5,
                "message.max.bytes": MAX_MESSAGE_BYTES,
                # 0 = no delivery deadline: retry until the broker is back.
                "message.timeout.ms": 0,
            }
        )
        return Producer(config)

    def reader(self, offset_reset: str = "earliest") -> Consumer:
        """A consumer without a group, for topics read from a position the caller keeps."""
        config = self._base()
        config.update(
            {
                # Readers assign partitions themselves; the group id is required but never joined.
                "group.id": "distillery-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": offset_reset,
                "fetch.max.bytes": MAX_MESSAGE_BYTES,
                "receive.message.max.bytes": MAX_MESSAGE_BYTES + 1024 * 1024,
            }
        )
        return Consumer(config)

    def positioned_reader(self) -> Consumer:
        """A reader for a saved position: an offset the partition does not have is an error
        (`auto.offset.reset = error`), never a silent jump to another position."""
        return self.reader("error")


def _partitions(consumer: Consumer, topic: str, timeout: float = 10.0) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise RuntimeError(f"topic {topic} does not exist")
    return sorted(described.partitions)


class OrderedReader:
    """A single-partition topic read in its one order from a position the caller stores
    (`processors/runtime/src/ordered.rs`): every restart sees the same records in the same
    order. `start` None reads from the earliest record the topic has; a saved position the
    topic does not have (below its low or above its high watermark) is refused with
    `PositionGone`, at start and while reading."""

    def __init__(self, connection: Connection, topic: str, start: int | None, timeout: float = 10.0) -> None:
        self.topic = topic
        self.consumer = connection.positioned_reader()
        try:
            partitions = _partitions(self.consumer, topic, timeout)
            if len(partitions) != 1:
                # A mistake in the topology, not an outage: not retried.
                raise ValueError(
                    f"topic {topic} has {len(partitions)} partitions; an ordered reader needs exactly 1 so that every "
                    "restart sees the same record order (give the topic `partitions = 1` in the topology)"
                )
            low, high = self.watermarks(timeout)
            if start is not None and not low <= start <= high:
                raise PositionGone(topic, start, low, high)
            self.next_offset = low if start is None else start
            self.consumer.assign([TopicPartition(topic, 0, self.next_offset)])
        except BaseException:
            self.consumer.close()
            raise

    def watermarks(self, timeout: float) -> tuple[int, int]:
        """The partition's (low, high) watermarks, asked of the broker (an error if it does not
        answer within `timeout` seconds)."""
        low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=timeout, cached=False)
        return int(low), int(high)

    def check(self, timeout: float) -> None:
        """Asks the broker for the watermarks: a KafkaException when it cannot be reached,
        `PositionGone` when the position left the topic."""
        low, high = self.watermarks(timeout)
        if not low <= self.next_offset <= high:
            raise PositionGone(self.topic, self.next_offset, low, high)

    def next(self, timeout: float) -> ReadRecord | None:
        """The next record, or None if none arrived within `timeout` seconds."""
        message = self.consumer.poll(timeout)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if error.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                try:
                    low, high = self.watermarks(10.0)
                except KafkaException:
                    low, high = -1, -1
                raise PositionGone(self.topic, self.next_offset, low, high)
            if is_transient(error) or error.code() == KafkaError._PARTITION_EOF:
                log.warning("reading %s: %s (retrying)", self.topic, error)
                return None
            raise KafkaException(error)
        record = ReadRecord.of(message)
        self.next_offset = record.offset + 1
        return record

    def close(self) -> None:
        self.consumer.close()


def read_to_end(connection: Connection, topic: str, timeout: float = 60.0) -> list[ReadRecord]:
    """Every record of `topic` up to the end it had when the call started (all partitions)."""
    consumer = connection.reader()
    try:
        ends: dict[int, int] = {}
        assignment = []
        for partition in _partitions(consumer, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        records: list[ReadRecord] = []
        if not ends:
            return records
        consumer.assign(assignment)
        started = time.monotonic()
        while ends:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"reading {topic} did not reach the end within {timeout} s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if is_transient(error) or error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            partition, offset = message.partition() or 0, message.offset() or 0
            end = ends.get(partition)
            if end is None:
                continue
            if offset < end:
                records.append(ReadRecord.of(message))
            if offset + 1 >= end:
                del ends[partition]
        return records
    finally:
        consumer.close()


class Publisher:
    """Produces the engine's outputs and dead letters with the runtime's headers. `publish`
    returns once the broker acknowledged the record (librdkafka retries without deadline)."""

    def __init__(
        self, connection: Connection, processor: str, replica: str, ports: dict[str, tuple[str, str]], dead_letters: str
    ) -> None:
        """`ports` maps each output port to its (broker topic, record kind)."""
        self.producer = connection.producer()
        self.processor = processor
        self.producer_label = f"{processor}/{replica}"
        self.ports = ports
        self.dead_letter_topic = dead_letters

    def topic_of(self, port: str) -> str:
        return self.ports[port][0]

    def _send(
        self,
        topic: str,
        key: str,
        payload: bytes,
        headers: list[tuple[str, str | bytes | None]],
        wait: bool,
        within: float | None = None,
    ) -> None:
        """Produces one record; with `wait`, returns once the broker acknowledged it. `within`
        None waits however long it takes; a number of seconds bounds the wait (delivery errors
        are then retried with backoff) and raises `RetriesExhausted` when it is spent."""
        if not wait:
            self.producer.produce(topic, value=payload, key=key.encode(), headers=headers)
            self.producer.poll(0)
            return
        started = time.monotonic()
        delay = 0.5

        def spent() -> str:
            return f"sending a record to {topic} kept failing for {time.monotonic() - started:.0f} s (limit {within} s)"

        while True:
            outcome: list[KafkaError | None] = []

            def delivered(error: KafkaError | None, _message: Message) -> None:
                outcome.append(error)

            self.producer.produce(topic, value=payload, key=key.encode(), headers=headers, on_delivery=delivered)
            while not outcome:
                remaining = 1.0 if within is None else within - (time.monotonic() - started)
                if remaining <= 0:
                    raise RetriesExhausted(f"{spent()}: the broker did not acknowledge it")
                self.producer.flush(min(1.0, remaining))
            error = outcome[0]
            if error is None:
                return
            if within is None:
                raise KafkaException(error)
            remaining = within - (time.monotonic() - started)
            if remaining <= 0:
                raise RetriesExhausted(f"{spent()}: {error}")
            log.warning("sending a record to %s failed, retrying in %.1f s: %s", topic, min(delay, remaining), error)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def flush(self) -> None:
        """Waits until every record sent so far is acknowledged."""
        while self.producer.flush(1.0) > 0:
            pass

    def abandon(self) -> None:
        """Drops every record not acknowledged yet (a run exiting on a failure)."""
        self.producer.purge()
        self.producer.flush(0)

    def publish(self, port: str, record: dict[str, Any], wait: bool = True, within: float | None = None) -> None:
        """Encodes `record` for `port` (keyed by its run) and sends it with its id header
        (`within`: see `_send`)."""
        topic, kind = self.ports[port]
        headers: list[tuple[str, str | bytes | None]] = [
            (HEADER_ID, record["id"].encode()),
            (HEADER_KIND, kind.encode()),
            (HEADER_PRODUCER, self.producer_label.encode()),
        ]
        self._send(topic, record["run"], avro.encode(kind, record), headers, wait, within)

    def dead_letter(
        self, source_topic: str, source: ReadRecord, error_class: str, error: str, within: float | None = None
    ) -> None:
        """Sends a failed input to the dead-letter topic with the reason, and waits for the ack
        (for up to `within` seconds, when given: then `RetriesExhausted`)."""
        letter = dead_letter(
            self.processor, error_class, error, source_topic, source.partition, source.offset, source.key, source.payload
        )
        headers: list[tuple[str, str | bytes | None]] = [
            (HEADER_ID, letter["id"].encode()),
            (HEADER_KIND, b"dead_letter"),
            (HEADER_PRODUCER, self.producer_label.encode()),
            (HEADER_ERROR, error.encode()),
            (HEADER_ERROR_CLASS, error_class.encode()),
            (HEADER_SOURCE_TOPIC, source_topic.encode()),
            (HEADER_SOURCE_PARTITION, str(source.partition).encode()),
            (HEADER_SOURCE_OFFSET, str(source.offset).encode()),
        ]
        key = source.key if source.key is not None else letter["id"]
        try:
            self._send(self.dead_letter_topic, key, avro.encode("dead_letter", letter), headers, True, within)
        except RetriesExhausted as e:
            raise RetriesExhausted(f"cannot dead-letter {source_topic} offset {source.offset}: {e}") from e
        log.warning(
            "dead-lettered %s offset %d (%s): %s", source_topic, source.offset, error_class, error
        )


T = TypeVar("T")


def retry_for(what: str, action: Callable[[], T], seconds: float, stop: Callable[[], bool]) -> T | None:
    """Runs `action` until it succeeds, `stop()` says to give up (then returns None) or it has
    kept failing for `seconds` (`read_retry_secs`; then `RetriesExhausted`, saying what failed
    and for how long). Pauses grow from 0.5 s to `MAX_RETRY_DELAY`. Only outages are retried:
    `PositionGone` and other errors (a topology mistake) propagate at once."""
    started = time.monotonic()
    delay = 0.5
    while True:
        try:
            return action()
        except (KafkaException, RuntimeError, TimeoutError) as e:
            if stop():
                return None
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                raise RetriesExhausted(
                    f"{what} kept failing for {elapsed:.1f} s (read_retry_secs = {seconds:g}); giving up: {e}"
                ) from e
            pause = min(delay, seconds - elapsed)
            log.warning("%s failed, retrying in %.1f s (for up to %g s in all): %s", what, pause, seconds, e)
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline and not stop():
                time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, MAX_RETRY_DELAY)
