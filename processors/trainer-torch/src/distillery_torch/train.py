"""One rank of a torch-engine trainer: settings, shards in (rank 0 reads them and plans every
step), optimizer steps on FSDP2-sharded weights, and `train-metrics` and `checkpoints` out.

The contract is the candle trainer's (`processors/trainer/src/train.rs`): the checkpoint, not
Kafka, is the source of truth. A run resumes from the newest `checkpoints` event of its run id
(`{experiment}/{processor}`) and sees exactly the shard sequence an uninterrupted run sees,
at any world size: one partition, one reader, steps planned without regard to the number of
ranks. SIGINT/SIGTERM (torchrun forwards them to every worker) end the run after the current
step with a checkpoint; an unrecoverable failure exits non-zero and never writes a final
checkpoint. Reading the input (or sending a dead letter) that keeps failing for
`read_retry_secs` is such a failure: every rank writes its part of a non-final checkpoint if
anything was trained since the last one, then every rank exits non-zero together (rank 0 sends
the failure in the round's plans, or with the start-up broadcast), so none waits in a
collective. A checkpoint whose position the topic no longer has is refused at start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from . import avro, checkpoint, objects
from .checkpoint import ExportSettings, TrainerState
from .feed import ShardFeed, dead_lettered_offsets
from .kafka import Connection, Publisher, read_to_end, retry_for
from .model import PackedCausalLM, build_hf, config_from_json, load_pretrained, shard
from .optim import LrSchedule, adamw
from .packing import attention_kind
from .plan import FAIL, STEP, STOP, WAIT, Plan, Planner, rows_digest
from .records import checkpoint_event, train_metrics
from .settings import TrainerSettings
from .step import train_rows
from .topology import DEAD_LETTERS, Topology, TopologyError

log = logging.getLogger("distillery_torch")

OUTPUTS = {"checkpoints": "checkpoint_event", "metrics": "train_metrics"}
"""Output ports and their record kinds, as the candle trainer declares them."""

# Files of a Hugging Face model folder the engine reads (a repository may hold much more, such
# as original/consolidated.pth, which is never downloaded).
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")

# How long rank 0 waits for shards before telling the other ranks to wait with it.
WAIT_ROUND_SECS = 0.5


class EngineFailure(RuntimeError):
    """The run cannot go on; it exits non-zero for its supervisor to restart it."""


@dataclass
class Run:
    """Everything a rank knows about its run."""

    settings: TrainerSettings
    processor: str
    run_id: str
    input_topic: str
    rank: int
    world: int
    device: torch.device
    bf16: bool
    attention: str
    control: Any
    """A gloo group for the small control collectives (plans, stop flags, barriers)."""
    stop: threading.Event


# --- settings and distributed setup -----------------------------------------------------------
def load_run_settings(topology_path: str, processor: str) -> tuple[Topology, TrainerSettings, str]:
    topology = Topology.load(topology_path)
    instance = topology.processor(processor)
    if instance.kind != "trainer":
        raise TopologyError(f"processor '{processor}' is a {instance.kind}, not a trainer")
    settings = TrainerSettings.from_table(instance.settings)
    if len(instance.inputs) != 1:
        raise TopologyError(f"trainer '{processor}' reads exactly one shards topic")
    for port in OUTPUTS:
        if port not in instance.outputs:
            raise TopologyError(f"trainer '{processor}': output port '{port}' is not mapped to a topic")
    return topology, settings, topology.topic_name(instance.inputs[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(device_setting: str, timeout_secs: int) -> tuple[int, int, torch.device, Any]:
    """Joins torchrun's process group (RANK/WORLD_SIZE/LOCAL_RANK), or makes a group of one
    without torchrun. Returns rank, world size, device and a gloo control group."""
    timeout = timedelta(seconds=timeout_secs)
    cuda = device_setting.startswith("cuda")
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if cuda:
        index = int(os.environ.get("LOCAL_RANK", "0")) if under_torchrun else int(device_setting.partition(":")[2] or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if under_torchrun:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device, control


def install_signal_handlers(stop: threading.Event) -> None:
    def request_stop(signum: int, _frame: Any) -> None:
        log.info("%s received: stopping after the current step", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def broadcast(value: Any, run: Run) -> Any:
    """Rank 0's `value` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=run.control)
    return box[0]


# --- the student --------------------------------------------------------------------------------
def fetch_model_folder(location: str, scratch: Path) -> Path:
    """A local copy of a Hugging Face model folder (plain paths are used where they are)."""
    if not objects.is_url(location) or location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    names = objects.list_names(location)
    wanted = [n for n in names if n in MODEL_FILES or n in TOKENIZER_FILES or (n.endswith(".safetensors") and "/" not in n)]
    if "config.json" not in wanted:
        raise EngineFailure(f"{location} has no config.json")
    folder = scratch / "student"
    for name in wanted:
        objects.download_file(objects.join(location, name), folder / name)
    return folder


def tokenizer_files(settings: TrainerSettings, student_folder: Path | None) -> dict[str, bytes]:
    """The tokenizer files copied into every checkpoint: the settings' own, else the student
    folder's."""
    files: dict[str, bytes] = {}
    if settings.tokenizer is not None:
        files["tokenizer.json"] = objects.get_bytes(settings.tokenizer)
    if settings.tokenizer_config is not None:
        files["tokenizer_config.json"] = objects.get_bytes(settings.tokenizer_config)
    if not files and student_folder is not None:
        for name in TOKENIZER_FILES:
            if (student_folder / name).is_file():
                files[name] = (student_folder / name).read_bytes()
    return files


def initial_student(settings: TrainerSettings, scratch: Path) -> tuple[Any, torch.nn.Module, Path | None]:
    """Rank 0's full student (config, f32 CPU model, local folder if any)."""
    if settings.student == "random":
        assert settings.model_config is not None
        config = config_from_json(objects.get_bytes(settings.model_config).decode())
        torch.manual_seed(settings.init_seed)
        return config, build_hf(config, "cpu"), None
    folder = fetch_model_folder(settings.student, scratch)
    config = config_from_json((folder / "config.json").read_text())
    return config, load_pretrained(folder), folder


# --- the run ----------------------------------------------------------------------------------
def latest_checkpoint(
    connection: Connection, topic: str, run_id: str, stop: threading.Event, retry_secs: float
) -> dict[str, Any] | None:
    """The newest checkpoint event of this run (events follow complete uploads)."""
    records = retry_for(f"reading {topic}", lambda: read_to_end(connection, topic), retry_secs, stop.is_set) or []
    events = []
    for record in records:
        try:
            event = avro.decode("checkpoint_event", record.payload)
        except avro.CodecError:
            continue
        if event["run"] == run_id:
            events.append(event)
    return max(events, key=lambda e: (e["step"], e["is_final"]), default=None)


def run(topology_path: str, processor: str, bootstrap_override: str | None, replica: str | None) -> int:
    """One rank of the run, to the end (0) or to a failure (an exception)."""
    topology, settings, input_topic = load_run_settings(topology_path, processor)
    stop = threading.Event()
    install_signal_handlers(stop)
    rank, world, device, control = init_distributed(settings.device, settings.torch.collective_timeout_secs)
    bf16 = settings.compute_dtype == "bf16" or (settings.compute_dtype == "auto" and device.type == "cuda")
    r = Run(
        settings=settings,
        processor=processor,
        run_id=f"{topology.experiment}/{processor}",
        input_topic=input_topic,
        rank=rank,
        world=world,
        device=device,
        bf16=bf16,
        attention=attention_kind(settings.torch.attention, device),
        control=control,
        stop=stop,
    )
    try:
        return _run(r, topology, bootstrap_override, replica)
    finally:
        dist.destroy_process_group()


@dataclass
class Leader:
    """What rank 0 alone holds: the Kafka side of the run and, until it is sharded, the full
    student."""

    connection: Connection
    publisher: Publisher
    latest: dict[str, Any] | None
    """The newest checkpoint event of this run, if any."""
    config: Any
    full: torch.nn.Module | None
    tokenizer_files: dict[str, bytes]


def lead(r: Run, topology: Topology, bootstrap_override: str | None, replica: str | None) -> Leader:
    connection = Connection(topology.bootstrap_servers(bootstrap_override), topology.kafka.resolved_properties())
    label = replica or f"{os.environ.get('HOSTNAME', 'local')}-{os.getpid()}"
    outputs = topology.processor(r.processor).outputs
    ports = {port: (topology.topic_name(outputs[port]), kind) for port, kind in OUTPUTS.items()}
    publisher = Publisher(connection, r.processor, label, ports, topology.topic_name(DEAD_LETTERS))
    latest = latest_checkpoint(connection, publisher.topic_of("checkpoints"), r.run_id, r.stop, r.settings.read_retry_secs)
    scratch = Path(r.settings.torch.scratch_dir or os.environ.get("TMPDIR", "/tmp")) / "distillery-torch" / r.run_id.replace("/", ".")
    config, full, folder = initial_student(r.settings, scratch)
    files = tokenizer_files(r.settings, folder)
    if folder is not None and folder.is_relative_to(scratch):
        shutil.rmtree(folder, ignore_errors=True)  # a downloaded copy; the weights are in memory now
    return Leader(connection, publisher, latest, config, full, files)


def _run(r: Run, topology: Topology, bootstrap_override: str | None, replica: str | None) -> int:
    settings = r.settings

    # --- the student, sharded, and where the run stands ------------------------------------
    # A failure of rank 0 here goes to every rank with the broadcast: all exit together.
    leader: Leader | None = None
    failure = ""
    if r.rank == 0:
        try:
            leader = lead(r, topology, bootstrap_override, replica)
        except Exception as e:
            log.exception("starting the run failed")
            failure = f"{type(e).__name__}: {e}"
    config_text = leader.config.to_json_string(use_diff=False) if leader is not None else ""
    latest, config_text, failure = broadcast((leader.latest if leader is not None else None, config_text, failure), r)
    if failure:
        raise EngineFailure(f"cannot start the run: {failure}")
    config = config_from_json(config_text)
    full = leader.full if leader is not None else None
    model = shard(config, full, r.device, r.bf16, settings.torch.activation_checkpointing, settings.torch.loss_chunk_tokens)
    if leader is not None:
        leader.full = full = None  # rank 0's full copy is no longer needed
    optimizer = adamw(list(model.parameters()), settings, r.device.type == "cuda")
    if latest is not None:
        log.info("resuming from checkpoint step %d at %s", latest["step"], latest["uri"])
        state = checkpoint.load(model, optimizer, latest["uri"], settings.torch.scratch_dir, r.control)
    else:
        state = TrainerState(step=0, next_offset=0, rows_done=0, input_topic=r.input_topic)
    if state.is_final or state.step >= settings.steps:
        log.info("the run is already complete (step %d)", state.step)
        return 0
    dtype = {"auto": torch.bfloat16 if r.bf16 else torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}
    export_dtype = dtype[settings.torch.export_dtype]
    export = ExportSettings(
        dtype=export_dtype,
        shard_bytes=settings.torch.export_shard_bytes,
        config_json=checkpoint.export_config(config, type(model.hf).__name__, export_dtype),
        tokenizer_files=leader.tokenizer_files if leader is not None else {},
    )
    log.info(
        "training %s (%d parameters) on %d rank(s), %s, %s compute, %s attention, from step %d",
        r.run_id, sum(p.numel() for p in model.parameters()), r.world, r.device, "bf16" if r.bf16 else "f32",
        r.attention, state.step,
    )

    # --- rank 0: the shard feed and the planner ---------------------------------------------
    planner: Planner | None = None
    feed: ShardFeed | None = None
    if leader is not None:
        connection, publisher = leader.connection, leader.publisher
        schedule = LrSchedule.of(settings)
        planner = Planner(state, settings.global_batch_rows, settings.steps, settings.checkpoint_every_steps, schedule.lr)
        try:
            dead_lettered = retry_for(
                "reading the dead-letter topic",
                lambda: dead_lettered_offsets(connection, publisher.dead_letter_topic, r.processor, r.input_topic),
                settings.read_retry_secs,
                r.stop.is_set,
            ) or set()
            idle_after = float(settings.stop_when_idle_secs) if settings.stop_when_idle_secs is not None else None
            feed = ShardFeed(
                connection, publisher, r.input_topic, state.cursor, state.shard_ids, dead_lettered, config.vocab_size,
                settings.read_ahead_shards, settings.fetch_attempts, idle_after, r.stop,
                resumed=latest is not None, read_retry_secs=float(settings.read_retry_secs),
            )
        except Exception as e:
            # The other ranks are already in the loop: the first round's plans carry the failure.
            log.exception("starting the shard feed failed")
            planner.failure = f"{type(e).__name__}: {e}"
    last_checkpoint_step = latest["step"] if latest is not None else None
    return train_loop(r, model, optimizer, state, export, leader, planner, feed, last_checkpoint_step)


def train_loop(
    r: Run,
    model: PackedCausalLM,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    export: ExportSettings,
    leader: Leader | None,
    planner: Planner | None,
    feed: ShardFeed | None,
    last_checkpoint_step: int | None,
) -> int:
    """Rounds until the run stops: every rank gets its plan, then steps, checkpoints or stops
    with the others."""
    settings = r.settings
    while True:
        # 1. Stop requests of any rank, then rank 0 plans the round and sends every rank its part.
        stop_flag = torch.tensor([1 if r.stop.is_set() else 0])
        dist.all_reduce(stop_flag, op=dist.ReduceOp.MAX, group=r.control)
        plans: list[Plan] | None = None
        if planner is not None:
            if not stop_flag.item() and feed is not None:
                planner.fill(feed, WAIT_ROUND_SECS)
            plans = planner.plan(r.world, bool(stop_flag.item()))
            if plans[0].kind == FAIL and state.step > (last_checkpoint_step or 0):
                # Keep what was trained since the last checkpoint (never as a final one).
                plans = [dataclasses.replace(p, checkpoint="stop") for p in plans]
            uri = _checkpoint_target(plans[0], state, last_checkpoint_step, settings.checkpoint_store, r.run_id)
            for p in plans:
                p.checkpoint, p.checkpoint_uri = (p.checkpoint, uri) if uri else (None, "")
        box: list[Any] = [None]
        dist.scatter_object_list(box, plans, src=0, group=r.control)
        plan: Plan = box[0]
        if plan.kind == WAIT:
            continue
        if plan.kind == FAIL:
            fail(r, model, optimizer, state, export, leader, plan)

        # 2. The optimizer step, and its metrics.
        if plan.kind == STEP:
            started = time.monotonic()
            loss, grad_norm = train_rows(
                model, optimizer, plan.rows, plan.micro_steps, plan.completion_tokens, plan.lr,
                settings.max_grad_norm, r.device, r.attention,
            )
            if plan.completion_tokens == 0:
                log.warning("step %d: a batch without completion tokens, no update", plan.step)
            else:
                state.optimizer_steps += 1
            seconds = time.monotonic() - started
            if leader is not None and planner is not None:
                log.info(
                    "step %d loss %.6f lr %.3e grad_norm %.4f tokens %d seconds %.2f rows %s",
                    plan.step, loss, plan.lr, grad_norm, plan.tokens, seconds, rows_digest(planner.last_batch),
                )
                metrics = train_metrics(
                    r.run_id, settings.style, plan.step, loss, plan.lr, grad_norm, plan.tokens, plan.completion_tokens, seconds
                )
                leader.publisher.publish("metrics", metrics, wait=False)

        # 3. The checkpoint: every rank writes its part; its event follows the uploads.
        if plan.checkpoint is not None:
            is_final = plan.checkpoint == "final"
            state.is_final = is_final
            checkpoint.save(model, optimizer, state, plan.checkpoint_uri, export, settings.torch.scratch_dir, r.control)
            last_checkpoint_step = plan.step
            if leader is not None:
                event = checkpoint_event(
                    r.run_id, settings.style, state.step, plan.checkpoint_uri, r.input_topic, state.next_offset,
                    state.shards_consumed, state.tokens_seen, is_final,
                )
                leader.publisher.publish("checkpoints", event)
                log.info("checkpoint step %d at %s (final: %s)", state.step, plan.checkpoint_uri, is_final)

        # 4. The end of the schedule, of the input, or a signal.
        if plan.kind == STOP or plan.checkpoint == "final":
            if leader is not None:
                leader.publisher.flush()
            log.info("stopped at step %d", plan.step)
            return 0


def fail(
    r: Run,
    model: PackedCausalLM,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    export: ExportSettings,
    leader: Leader | None,
    plan: Plan,
) -> NoReturn:
    """Every rank's end of a run that cannot go on: the non-final checkpoint the plan asks for
    (rank 0 publishes its event, trying for `read_retry_secs`: the broker may be what failed),
    then, with the other ranks, `EngineFailure`, so that the process, and torchrun, exit non-zero."""
    settings = r.settings
    if plan.checkpoint is not None:
        state.is_final = False
        checkpoint.save(model, optimizer, state, plan.checkpoint_uri, export, settings.torch.scratch_dir, r.control)
        if leader is not None:
            event = checkpoint_event(
                r.run_id, settings.style, state.step, plan.checkpoint_uri, r.input_topic, state.next_offset,
                state.shards_consumed, state.tokens_seen, False,
            )
            try:
                leader.publisher.publish("checkpoints", event, within=float(settings.read_retry_secs))
                log.info("checkpoint step %d at %s (final: False), before exiting on the failure", state.step, plan.checkpoint_uri)
            except Exception as e:
                log.error(
                    "checkpoint step %d is written at %s, but its event could not be published (%s): a restart "
                    "resumes from the previous checkpoint event", state.step, plan.checkpoint_uri, e,
                )
    if leader is not None:
        leader.publisher.abandon()  # records the broker did not take are not waited for
    # The ranks exit together: none ends (and has torchrun stop the others) while rank 0 still
    # publishes the checkpoint's event.
    dist.barrier(group=r.control)
    raise EngineFailure(f"the run cannot go on: {plan.error}")


def _checkpoint_target(plan: Plan, state: TrainerState, last_step: int | None, store: str, run_id: str) -> str | None:
    """The folder a plan's checkpoint goes to, or None when there is nothing new to save (a
    stop right after a checkpoint of the same step)."""
    if plan.checkpoint is None:
        return None
    uri = checkpoint.checkpoint_uri(store, run_id, state.step)
    if last_step == state.step:
        if plan.checkpoint != "final":
            return None
        # A final checkpoint at the step of an earlier one gets its own folder: the earlier
        # one's event may be read while this one is written.
        return uri + "-final"
    return uri
