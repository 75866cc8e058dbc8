"""Checkpoints: the source of truth of a run, in one folder of `checkpoint_store`
(`{store}/{experiment}.{processor}/step-NNNNNN`, the candle trainer's layout):

- a Hugging Face export the evaluator, vLLM and transformers load as it is: `config.json`,
  `generation_config.json`, `model-0000K-of-0000N.safetensors` shards of at most
  `export_shard_bytes` with `model.safetensors.index.json`, and the tokenizer files;
- `dcp/`: the resumable state, a torch distributed checkpoint of the sharded model and
  optimizer (each rank writes and uploads its own shard files; a restart at another world
  size reshards them);
- `trainer_state.json`, written last: step, input position, rows done, tokens seen, the shard
  ids trained in order (the candle trainer's fields, plus the engine's).

The `checkpoints` event is published only after all of it is uploaded (uploads are multipart
for large files), so the newest event always names a complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from functools import partial
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from . import objects
from .model import PackedCausalLM
from .records import Cursor

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TrainerState:
    """`trainer_state.json`: where a run stands (the candle trainer's fields first)."""

    step: int
    next_offset: int
    rows_done: int
    input_topic: str
    shards_consumed: int = 0
    tokens_seen: int = 0
    shard_ids: list[str] = field(default_factory=list)
    is_final: bool = False
    optimizer_steps: int = 0
    """Optimizer updates taken (a batch without completion tokens takes none); 0 means the
    checkpoint has no optimizer state yet."""
    world_size: int = 1
    """Ranks that wrote the checkpoint (a restart may use another number)."""

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.next_offset, self.rows_done)

    def to_json(self) -> bytes:
        values = asdict(self)
        position = {"next_offset": values.pop("next_offset"), "rows_done": values.pop("rows_done")}
        ordered = {"step": values.pop("step"), "position": position, **values, "engine": "torch"}
        return json.dumps(ordered, indent=2).encode()

    @staticmethod
    def from_json(data: bytes) -> TrainerState:
        values = json.loads(data)
        position = values.pop("position")
        values.pop("engine", None)
        return TrainerState(next_offset=position["next_offset"], rows_done=position["rows_done"], **values)


def checkpoint_uri(store: str, run_id: str, step: int) -> str:
    return f"{store.rstrip('/')}/{run_id.replace('/', '.')}/step-{step:06}"


@dataclass(frozen=True)
class ExportSettings:
    """How the Hugging Face export is written."""

    dtype: torch.dtype
    shard_bytes: int
    config_json: dict[str, Any]
    """The student's config, as written into `config.json`."""
    tokenizer_files: dict[str, bytes]
    """File name -> contents, copied into every checkpoint."""


def export_config(config: Any, architecture: str, dtype: torch.dtype) -> dict[str, Any]:
    """The `config.json` of an export. `rope_theta` is also written at the top level (where
    transformers 4.x and the candle trainer's loader read it) beside transformers 5's
    `rope_parameters`."""
    values: dict[str, Any] = json.loads(config.to_json_string(use_diff=False))
    values["architectures"] = [architecture]
    values["dtype"] = str(dtype).removeprefix("torch.")
    rope = values.get("rope_parameters") or {}
    if isinstance(rope, dict) and rope.get("rope_type") == "default" and "rope_theta" in rope:
        values.setdefault("rope_theta", rope["rope_theta"])
    return {k: v for k, v in values.items() if not k.startswith("_")}


# --- staging -------------------------------------------------------------------------------------
def _staging(scratch: str | None, uri: str) -> Path:
    """A node-local folder for one checkpoint's files."""
    base = Path(scratch) if scratch else Path(os.environ.get("TMPDIR", "/tmp"))
    name = uri.replace("://", "_").replace("/", "_")
    return base / "distillery-torch" / name


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


# --- save ----------------------------------------------------------------------------------------
def _write_export(full: dict[str, Any], export: ExportSettings, folder: Path, tied: bool) -> list[Path]:
    """Safetensors shards of at most `shard_bytes`, their index, the config and tokenizer."""
    tensors = {name.removeprefix("hf."): t.to(export.dtype).contiguous() for name, t in full.items()}
    if tied:
        tensors.pop("lm_head.weight", None)  # the input embedding serves as the head
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > export.shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    written = []
    weight_map = {}
    for index, part in enumerate(shards, start=1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, folder / file_name, metadata={"format": "pt"})
        weight_map.update({name: file_name for name in part})
        written.append(folder / file_name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    files: dict[str, bytes] = {
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2
        ).encode(),
        "config.json": json.dumps(export.config_json, indent=2).encode(),
        "generation_config.json": json.dumps(
            {k: export.config_json[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if export.config_json.get(k) is not None},
            indent=2,
        ).encode(),
        **export.tokenizer_files,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written


def save(
    model: PackedCausalLM,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    uri: str,
    export: ExportSettings,
    scratch: str | None,
    control: dist.ProcessGroup,
) -> None:
    """Writes and uploads a whole checkpoint (every rank calls it). On return the checkpoint is
    complete in the store and rank 0 may publish its event."""
    rank = dist.get_rank()
    staging = _staging(scratch, uri)
    if _local_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "dcp").mkdir(parents=True)
    dist.barrier(group=control)

    # 1. The resumable state: every rank writes its shards, then uploads what it wrote.
    resumable: dict[str, Any] = {"model": get_model_state_dict(model)}
    if state.optimizer_steps > 0:
        resumable["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp_save(resumable, checkpoint_id=staging / "dcp", process_group=control)
    mine = [p for p in (staging / "dcp").iterdir() if p.name.startswith(f"__{rank}_")]
    if rank == 0:
        mine.append(staging / "dcp" / ".metadata")
    for path in mine:
        target = objects.join(uri, f"dcp/{path.name}")
        objects.retrying(f"uploading {target}", partial(objects.upload_file, path, target))

    # 2. The Hugging Face export, gathered to rank 0 one parameter at a time.
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        tied = bool(export.config_json.get("tie_word_embeddings"))
        for path in _write_export(full, export, staging, tied):
            target = objects.join(uri, path.name)
            objects.retrying(f"uploading {target}", partial(objects.upload_file, path, target))
    del full
    dist.barrier(group=control)

    # 3. trainer_state.json last: a checkpoint folder without it is incomplete.
    if rank == 0:
        state.world_size = dist.get_world_size()
        target = objects.join(uri, "trainer_state.json")
        objects.retrying(f"uploading {target}", partial(objects.put_bytes, target, state.to_json()))
    dist.barrier(group=control)
    if _local_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)


# --- load ----------------------------------------------------------------------------------------
def load(
    model: PackedCausalLM,
    optimizer: torch.optim.Optimizer,
    uri: str,
    scratch: str | None,
    control: dist.ProcessGroup,
) -> TrainerState:
    """Restores model and optimizer from a checkpoint (every rank calls it; the first rank of
    each node downloads the resumable state into node-local staging)."""
    state_uri = objects.join(uri, "trainer_state.json")
    state = TrainerState.from_json(objects.retrying(f"reading {state_uri}", partial(objects.get_bytes, state_uri)))
    staging = _staging(scratch, uri)
    if _local_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        names = objects.retrying(f"listing {uri}/dcp", partial(objects.list_names, objects.join(uri, "dcp")))
        for name in names:
            source = objects.join(uri, f"dcp/{name}")
            objects.retrying(f"downloading {source}", partial(objects.download_file, source, staging / "dcp" / name))
    dist.barrier(group=control)
    resumable: dict[str, Any] = {"model": get_model_state_dict(model)}
    if state.optimizer_steps > 0:
        resumable["optimizer"] = get_optimizer_state_dict(model, optimizer)
    dcp_load(resumable, checkpoint_id=staging / "dcp", process_group=control)
    set_model_state_dict(model, resumable["model"])
    if state.optimizer_steps > 0:
        set_optimizer_state_dict(model, optimizer, resumable["optimizer"])
    dist.barrier(group=control)
    if _local_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
    return state
