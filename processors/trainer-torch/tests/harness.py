"""Real parts for the engine's tests, started the way the Rust harness (`tests/src/lib.rs`)
starts them: the Nisshi broker from `~/.cargo/bin` and moto's S3 server from the project's
virtualenv, each on a free loopback port; shards and manifests in the packer's exact format
(`processors/packer/src/shard.rs`, `schemas/shard_manifest.avsc`); the engine as real
processes, alone (world size 1) or under torchrun, in a process group of their own so that a
test can SIGKILL all of it at once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from safetensors.numpy import save

from distillery_torch import avro, objects
from distillery_torch.kafka import Connection, ReadRecord, read_to_end

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parents[1]
VENV = Path(os.environ.get("DISTILLERY_VENV", Path.home() / ".cache/distillery-venv"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, timeout: float, done: Callable[[], bool], interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- the broker -----------------------------------------------------------------------------
def nisshi_binary() -> str:
    if os.environ.get("DISTILLERY_NISSHI"):
        return os.environ["DISTILLERY_NISSHI"]
    installed = Path.home() / ".cargo/bin/nisshi"
    return str(installed) if installed.exists() else "nisshi"


class Broker:
    """A Nisshi broker with an in-memory store, or with `store` (a sqlite file): then its topics
    and records survive `kill` and `restart`, as with the Rust harness's `BrokerStore::Sqlite`."""

    def __init__(self, log_path: Path, store: Path | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.store = store
        self._start()

    def _start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.log = open(self.log_path, "ab")
        if self.store is None:
            engine, cwd = "memory://nisshi/", None
        else:
            # The sqlite URL is relative to the broker's working directory.
            self.store.parent.mkdir(parents=True, exist_ok=True)
            engine, cwd = f"sqlite://{self.store.name}", self.store.parent
        try:
            self.process = subprocess.Popen(
                [nisshi_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--group-initial-rebalance-delay", "1s", "--storage-engine", engine],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd=cwd,
            )
        except FileNotFoundError as e:
            raise AssertionError(f"the local broker is not installed ({e}); run .ci/install-tools") from e
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "broker.address.family": "v4"})

        def answers() -> bool:
            assert self.process.poll() is None, f"the broker exited during start-up; see {self.log_path}"
            try:
                admin.list_topics(timeout=1)
                return True
            except Exception:
                return False

        wait_until("the broker", 30, answers)

    def restart(self) -> None:
        """Starts the broker again on the same port (after `stop`)."""
        self.stop()
        self._start()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection(self) -> Connection:
        return Connection(self.bootstrap_servers, {})

    def create_topics(self, names: list[str]) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "broker.address.family": "v4"})
        futures = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1) for name in names])
        for future in futures.values():
            future.result(30)
        wait_until("the topics", 30, lambda: all(name in admin.list_topics(timeout=5).topics for name in names))

    def produce(self, topic: str, records: list[tuple[str, bytes]]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap_servers, "broker.address.family": "v4"})
        for key, payload in records:
            producer.produce(topic, value=payload, key=key.encode())
        assert producer.flush(30) == 0

    def read(self, topic: str) -> list[ReadRecord]:
        return read_to_end(self.connection(), topic)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()


# --- S3 -------------------------------------------------------------------------------------
class S3Server:
    """moto's S3 server, with one bucket."""

    def __init__(self, bucket: str, log_path: Path) -> None:
        self.port = free_port()
        self.bucket = bucket
        self.log = open(log_path, "ab")
        server = VENV / "bin/moto_server"
        assert server.exists(), f"{server} is missing; run .ci/install-tools"
        self.process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until("the S3 server", 30, listening)
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/{bucket}", method="PUT")
        with urllib.request.urlopen(request) as response:
            assert response.status == 200

    def env(self) -> dict[str, str]:
        """The environment object_store (and obstore) read to reach this server."""
        return {
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()


# --- shards in the packer's format ------------------------------------------------------------
@dataclass
class Sequence:
    input_ids: list[int]
    loss_mask: list[int]
    question_id: str


def shard_bytes(rows: list[list[Sequence]], style: str, row_capacity: int) -> tuple[bytes, dict[str, Any]]:
    """A shard file and its counts, laid out as `build_shard` lays them out."""
    input_ids, loss_mask, position_ids = [], [], []
    cu_seqlens, row_offsets, question_ids = [0], [0], []
    for row in rows:
        for s in row:
            input_ids += s.input_ids
            loss_mask += s.loss_mask
            position_ids += list(range(len(s.input_ids)))
            cu_seqlens.append(len(input_ids))
            question_ids.append(s.question_id)
        row_offsets.append(len(input_ids))
    tensors = {
        "input_ids": np.array(input_ids, dtype=np.int32),
        "loss_mask": np.array(loss_mask, dtype=np.uint8),
        "position_ids": np.array(position_ids, dtype=np.int32),
        "cu_seqlens": np.array(cu_seqlens, dtype=np.int32),
        "row_offsets": np.array(row_offsets, dtype=np.int32),
    }
    about = json.dumps({"format": "distillery-shard-v1", "style": style, "row_capacity": row_capacity})
    data = save(tensors, metadata={"distillery": about})
    tokens = len(input_ids)
    counts = {
        "rows": len(rows),
        "sequences": len(question_ids),
        "tokens": tokens,
        "completion_tokens": int(sum(loss_mask)),
        "fill_ratio": tokens / (len(rows) * row_capacity) if rows else 0.0,
        "question_ids": question_ids,
    }
    return data, counts


def manifest(shard_id: str, style: str, index: int, uri: str, data: bytes, counts: dict[str, Any], row_capacity: int,
             sha256: str | None = None) -> dict[str, Any]:
    """The `shard_manifest` record the packer publishes for a shard (with `sha256` overridden
    to plant a wrong checksum)."""
    return {
        "id": shard_id,
        "style": style,
        "shard_index": index,
        "uri": uri,
        "manifest_uri": uri.replace(".safetensors", ".json"),
        "format": "safetensors",
        "bytes": len(data),
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "rows": counts["rows"],
        "sequences": counts["sequences"],
        "tokens": counts["tokens"],
        "completion_tokens": counts["completion_tokens"],
        "row_capacity": row_capacity,
        "fill_ratio": counts["fill_ratio"],
        "tokenizer_sha256": "t",
        "template_sha256": "t",
        "question_ids": counts["question_ids"],
        "created_at_ms": 0,
    }


def synthetic_rows(seed: int, rows: int, sequences: int, vocab: int, min_len: int = 6, max_len: int = 14) -> list[list[Sequence]]:
    """Deterministic rows: each sequence a run `p, p+1, p+2, ... (mod vocab)` (learnable from
    the previous token) with its first three tokens a prompt (loss mask 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rows):
        row = []
        for s in range(sequences):
            length = int(rng.integers(min_len, max_len + 1))
            start = int(rng.integers(0, vocab))
            ids = [(start + i) % vocab for i in range(length)]
            row.append(Sequence(ids, [int(i >= 3) for i in range(length)], f"q{seed}-{r}-{s}"))
        out.append(row)
    return out


def publish_shards(broker: Broker, topic: str, location: str, shards: list[list[list[Sequence]]], style: str = "teacher-a",
                   row_capacity: int = 64) -> list[dict[str, Any]]:
    """Uploads shards under `location` and publishes their manifests, in order."""
    manifests = []
    for index, rows in enumerate(shards):
        data, counts = shard_bytes(rows, style, row_capacity)
        uri = objects.join(location, f"shard-{index:03}.safetensors")
        objects.put_bytes(uri, data)
        manifests.append(manifest(hashlib.sha256(data).hexdigest(), style, index, uri, data, counts, row_capacity))
    broker.produce(topic, [(style, avro.encode("shard_manifest", m)) for m in manifests])
    return manifests


# --- topologies -------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


TOPICS = """
experiment = "{experiment}"
[topics.shards]
schema = "shard_manifest"
partitions = 1
external = true
[topics.checkpoints]
schema = "checkpoint_event"
partitions = 1
[topics.train-metrics]
schema = "train_metrics"
partitions = 1
"""


def trainer_block(name: str, settings: dict[str, Any]) -> str:
    lines = [
        f"[processors.{name}]",
        'type = "trainer"',
        'inputs = ["shards"]',
        'outputs = { checkpoints = "checkpoints", metrics = "train-metrics" }',
        f"[processors.{name}.settings]",
    ]
    lines += [f"{key} = {toml_value(value)}" for key, value in settings.items() if key != "torch"]
    if "torch" in settings:
        lines.append(f"[processors.{name}.settings.torch]")
        lines += [f"{key} = {toml_value(value)}" for key, value in settings["torch"].items()]
    return "\n".join(lines) + "\n"


def topology(experiment: str, trainers: dict[str, dict[str, Any]]) -> str:
    return TOPICS.format(experiment=experiment) + "".join(trainer_block(n, s) for n, s in trainers.items())


def experiment_topics(experiment: str) -> list[str]:
    return [f"{experiment}.{t}" for t in ("shards", "checkpoints", "train-metrics", "dead-letters")]


# --- the engine as processes ------------------------------------------------------------------
@dataclass
class Engine:
    """A running trainer: `python -m distillery_torch` alone or under torchrun, in its own
    process group."""

    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: Any = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"the trainer did not finish within {timeout} s:\n{self.log()[-6000:]}")

    def processes(self) -> list[int]:
        """The launcher and every process below it (torchrun's workers run in sessions of
        their own, so they are not in the launcher's process group)."""
        return [self.process.pid, *descendants(self.process.pid)]

    def kill9(self) -> None:
        """SIGKILL to every process of the run at once: no chance to flush or checkpoint."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.log_file.close()

    def kill9_launcher(self) -> list[int]:
        """SIGKILL to torchrun alone; returns its workers, which must follow it by themselves."""
        workers = descendants(self.process.pid)
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log_file.close()
        return workers

    def terminate(self) -> None:
        """SIGTERM to the launcher only, as a supervisor sends it (torchrun forwards it)."""
        self.process.send_signal(signal.SIGTERM)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def engine_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PACKAGE / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def start_engine(topology_path: Path, processor: str, broker: Broker, world: int, log_path: Path,
                 env: dict[str, str] | None = None) -> Engine:
    """World 1 runs the module directly (no torchrun); more ranks run under torchrun."""
    module = ["-m", "distillery_torch", "--topology", str(topology_path), "--processor", processor,
              "--bootstrap-servers", broker.bootstrap_servers, "--replica", "0"]
    if world == 1:
        command = [sys.executable, *module]
    else:
        # The command the `distillery run` launcher uses, with a short grace period after SIGTERM.
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--nnodes", "1",
                   "--standalone", "--shutdown-timeout", "60", *module]
    log_file = open(log_path, "ab")
    process = subprocess.Popen(
        command, cwd=PACKAGE, env=engine_env(env or {}), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        start_new_session=True,
    )
    return Engine(process, log_path, log_file)


def records(broker: Broker, topic: str, kind: str) -> list[dict[str, Any]]:
    return [avro.decode(kind, r.payload) for r in broker.read(topic)]


def run_events(broker: Broker, experiment: str, processor: str) -> list[dict[str, Any]]:
    run = f"{experiment}/{processor}"
    return [e for e in records(broker, f"{experiment}.checkpoints", "checkpoint_event") if e["run"] == run]


def run_metrics(broker: Broker, experiment: str, processor: str) -> list[dict[str, Any]]:
    run = f"{experiment}/{processor}"
    return [m for m in records(broker, f"{experiment}.train-metrics", "train_metrics") if m["run"] == run]


def final_event(broker: Broker, experiment: str, processor: str) -> dict[str, Any] | None:
    finals = [e for e in run_events(broker, experiment, processor) if e["is_final"]]
    return finals[-1] if finals else None


# --- the Rust side ----------------------------------------------------------------------------
def distillery_bin() -> Path:
    """The `distillery` binary: `$DISTILLERY_BIN`, else built once with cargo (debug profile)
    into `$CARGO_TARGET_DIR` (default: the repository's target/)."""
    if os.environ.get("DISTILLERY_BIN"):
        return Path(os.environ["DISTILLERY_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    cargo = os.environ.get("CARGO", "cargo")
    build = subprocess.run(
        [cargo, "build", "--quiet", "-p", "distillery", "--bin", "distillery"],
        cwd=REPO, env={**os.environ, "CARGO_TARGET_DIR": str(target)},
    )
    assert build.returncode == 0, "cargo build of the distillery binary failed"
    return target / "debug" / "distillery"


def run_distillery(args: list[str], log_path: Path, timeout: float) -> str:
    """Runs `distillery ARGS` to completion and returns its log."""
    with open(log_path, "ab") as log:
        done = subprocess.run(
            [str(distillery_bin()), *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=timeout,
            env={**os.environ, "RUST_LOG": "info,rdkafka=warn", "NO_COLOR": "1"},
        )
    text = log_path.read_text(errors="replace")
    assert done.returncode == 0, f"distillery {' '.join(args)} failed:\n{text[-4000:]}"
    return text


# --- checkpoints ------------------------------------------------------------------------------
def export_weights(uri: str) -> dict[str, np.ndarray]:
    """The weights of a checkpoint's Hugging Face export, through its index."""
    from safetensors.numpy import load

    index = json.loads(objects.get_bytes(objects.join(uri, "model.safetensors.index.json")))
    weights: dict[str, np.ndarray] = {}
    for file_name in sorted(set(index["weight_map"].values())):
        weights.update(load(objects.get_bytes(objects.join(uri, file_name))))
    assert set(weights) == set(index["weight_map"]), "the index names exactly the tensors of its files"
    return weights


def trainer_state(uri: str) -> dict[str, Any]:
    return json.loads(objects.get_bytes(objects.join(uri, "trainer_state.json")))


def step_lines(log: str) -> dict[int, str]:
    """Step number -> the digest of its rows, from a rank-0 log."""
    import re

    return {int(m.group(1)): m.group(2) for m in re.finditer(r"step (\d+) loss \S+ .* rows (\w+)", log)}
