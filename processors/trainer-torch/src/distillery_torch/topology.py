"""The parts of a topology file (TOML) this engine needs, resolved exactly as
`processors/runtime/src/topology.rs` resolves them: the experiment, the `[kafka]` client
settings, broker-side topic names (`{experiment}.{topic}`, or the topic's own `experiment`
when it belongs to an earlier run) and one processor instance with its ports.

The Rust side (`distillery topology check`) validates the whole file; here only what this
engine relies on is checked again.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEAD_LETTERS = "dead-letters"
"""The dead-letter topic every processor writes to."""

BOOTSTRAP_ENV = "DISTILLERY_BOOTSTRAP_SERVERS"


class TopologyError(ValueError):
    """A topology that does not say what this engine needs."""


@dataclass(frozen=True)
class KafkaSettings:
    """`[kafka]`: how to reach the brokers."""

    bootstrap_servers: str = "embedded"
    """Broker list; "embedded" means the local broker `distillery quickstart` starts."""
    properties: dict[str, str] = field(default_factory=dict)
    """librdkafka properties passed verbatim to every client; `env:NAME` values are read from
    the environment variable NAME (secrets never sit in the file)."""
    delivery: str = "at-least-once"
    """at-least-once or exactly-once (the trainer's own outputs are idempotent either way)."""

    def resolved_properties(self) -> dict[str, str]:
        """The properties with every `env:NAME` value replaced by that variable's value."""
        resolved = {}
        for key, value in self.properties.items():
            if value.startswith("env:"):
                var = value.removeprefix("env:")
                if var not in os.environ:
                    raise TopologyError(f"kafka property '{key}' names environment variable {var}, which is not set")
                resolved[key] = os.environ[var]
            else:
                resolved[key] = value
        return resolved


@dataclass(frozen=True)
class Instance:
    """One `[processors.NAME]` entry."""

    name: str
    kind: str
    inputs: list[str]
    outputs: dict[str, str]
    settings: dict[str, Any]


@dataclass(frozen=True)
class Topology:
    experiment: str
    kafka: KafkaSettings
    topics: dict[str, dict[str, Any]]
    processors: dict[str, dict[str, Any]]

    @staticmethod
    def load(path: str | Path) -> Topology:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
        return Topology.parse(raw, str(path))

    @staticmethod
    def parse(raw: dict[str, Any], origin: str) -> Topology:
        if "experiment" not in raw:
            raise TopologyError(f"{origin} has no `experiment`")
        kafka_table = dict(raw.get("kafka", {}))
        unknown = set(kafka_table) - {"bootstrap_servers", "properties", "delivery"}
        if unknown:
            raise TopologyError(f"{origin}: unknown field `{sorted(unknown)[0]}` in [kafka]")
        kafka = KafkaSettings(
            bootstrap_servers=kafka_table.get("bootstrap_servers", "embedded"),
            properties={k: str(v) for k, v in kafka_table.get("properties", {}).items()},
            delivery=kafka_table.get("delivery", "at-least-once"),
        )
        return Topology(
            experiment=raw["experiment"],
            kafka=kafka,
            topics=dict(raw.get("topics", {})),
            processors=dict(raw.get("processors", {})),
        )

    def topic_name(self, short: str) -> str:
        """The broker-side name of a topic: `{experiment}.{short}`, with the topic's own
        `experiment` when it belongs to another run."""
        experiment = self.topics.get(short, {}).get("experiment") or self.experiment
        return f"{experiment}.{short}"

    def processor(self, name: str) -> Instance:
        if name not in self.processors:
            known = ", ".join(self.processors)
            raise TopologyError(f"no processor named '{name}' in the topology (it has: {known})")
        entry = self.processors[name]
        return Instance(
            name=name,
            kind=entry.get("type", ""),
            inputs=list(entry.get("inputs", [])),
            outputs=dict(entry.get("outputs", {})),
            settings=dict(entry.get("settings", {})),
        )

    def bootstrap_servers(self, override: str | None) -> str:
        """The flag, else `DISTILLERY_BOOTSTRAP_SERVERS`, else the file's `[kafka]` value."""
        bootstrap = override or os.environ.get(BOOTSTRAP_ENV) or self.kafka.bootstrap_servers
        if bootstrap == "embedded":
            raise TopologyError(
                'the topology says bootstrap_servers = "embedded": start the local broker (`distillery broker`) '
                "and pass --bootstrap-servers, or use `distillery quickstart`, which starts it for you"
            )
        return bootstrap
