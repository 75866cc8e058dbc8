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
from typing import Any, cast

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

    def reader(self) -> Consumer:
        """A consumer without a group, for topics read from a position the caller keeps."""
        config = self._base()
        config.update(
            {
                # Readers assign partitions themselves; the group id is required but never joined.
                "group.id": "distillery-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": MAX_MESSAGE_BYTES,
                "receive.message.max.bytes": MAX_MESSAGE_BYTES + 1024 * 1024,
            }
        )
        return Consumer(config)


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise RuntimeError(f"topic {topic} does not exist")
    return sorted(described.partitions)


class OrderedReader:
    """A single-partition topic read in its one order from a position the caller stores
    (`processors/runtime/src/ordered.rs`): every restart sees the same records in the same
    order."""

    def __init__(self, connection: Connection, topic: str, next_offset: int) -> None:
        self.topic = topic
        self.consumer = connection.reader()
        partitions = _partitions(self.consumer, topic)
        if len(partitions) != 1:
            # A mistake in the topology, not an outage: not retried.
            raise ValueError(
                f"topic {topic} has {len(partitions)} partitions; an ordered reader needs exactly 1 so that every "
                "restart sees the same record order (give the topic `partitions = 1` in the topology)"
            )
        self.consumer.assign([TopicPartition(topic, 0, next_offset)])

    def next(self, timeout: float) -> ReadRecord | None:
        """The next record, or None if none arrived within `timeout` seconds."""
        message = self.consumer.poll(timeout)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if is_transient(error) or error.code() == KafkaError._PARTITION_EOF:
                log.warning("reading %s: %s (retrying)", self.topic, error)
                return None
            raise KafkaException(error)
        return ReadRecord.of(message)

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

    def _send(self, topic: str, key: str, payload: bytes, headers: list[tuple[str, str | bytes | None]], wait: bool) -> None:
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        self.producer.produce(topic, value=payload, key=key.encode(), headers=headers, on_delivery=delivered)
        if wait:
            self.flush()
            if failures:
                raise KafkaException(failures[0])
        else:
            self.producer.poll(0)

    def flush(self) -> None:
        """Waits until every record sent so far is acknowledged."""
        while self.producer.flush(1.0) > 0:
            pass

    def publish(self, port: str, record: dict[str, Any], wait: bool = True) -> None:
        """Encodes `record` for `port` (keyed by its run) and sends it with its id header."""
        topic, kind = self.ports[port]
        headers: list[tuple[str, str | bytes | None]] = [
            (HEADER_ID, record["id"].encode()),
            (HEADER_KIND, kind.encode()),
            (HEADER_PRODUCER, self.producer_label.encode()),
        ]
        self._send(topic, record["run"], avro.encode(kind, record), headers, wait)

    def dead_letter(self, source_topic: str, source: ReadRecord, error_class: str, error: str) -> None:
        """Sends a failed input to the dead-letter topic with the reason, and waits for the ack."""
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
        self._send(self.dead_letter_topic, key, avro.encode("dead_letter", letter), headers, wait=True)
        log.warning(
            "dead-lettered %s offset %d (%s): %s", source_topic, source.offset, error_class, error
        )


def retry_forever(what: str, action: Callable[[], Any], stop: Callable[[], bool]) -> Any:
    """Runs `action` until it succeeds or `stop()` says to give up (then returns None): for
    reads that must ride out a broker restart rather than end the run."""
    delay = 0.5
    while True:
        try:
            return action()
        except (KafkaException, RuntimeError, TimeoutError) as e:
            if stop():
                return None
            log.warning("%s failed, retrying in %.1f s: %s", what, delay, e)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
