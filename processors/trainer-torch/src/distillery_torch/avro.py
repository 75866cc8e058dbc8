"""Records in the project's Avro single-object encoding, byte-identical to the Rust codec
(`schemas/src/codec.rs`): the marker `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint
of the writer schema's Parsing Canonical Form, then the Avro binary datum.

The schemas are the project's own `schemas/*.avsc` (current versions, which this module writes)
and `schemas/history/{kind}.v{N}.avsc` (older writer versions, which it still reads: a record is
resolved from the schema its fingerprint names into the current one).

Command line, for tools and the cross-language test:

    python -m distillery_torch.avro encode KIND < record.json > record.avro
    python -m distillery_torch.avro decode [KIND] < record.avro > record.json

JSON records use plain values: unions as the value or null, enums as their symbol, `bytes`
fields as a list of byte values (what serde_json makes of a `Vec<u8>`).
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

MARKER = b"\xc3\x01"
HEADER_LEN = 10

KINDS = (
    "question",
    "teacher_sample",
    "judged_sample",
    "agreed_sample",
    "shard_manifest",
    "checkpoint_event",
    "train_metrics",
    "eval_result",
    "dead_letter",
)

SCHEMAS_ENV = "DISTILLERY_SCHEMAS_DIR"


class CodecError(ValueError):
    """A payload that is not a record of the expected kind."""


# --- CRC-64-AVRO (the Rabin fingerprint of the Avro specification) ----------------------------
_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _table()


def crc64_avro(data: bytes) -> bytes:
    """The fingerprint as it appears in a single-object header (little-endian)."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


# --- the schema set ---------------------------------------------------------------------------
def schemas_dir() -> Path:
    """`$DISTILLERY_SCHEMAS_DIR`, else the repository's `schemas/` above this package."""
    if os.environ.get(SCHEMAS_ENV):
        return Path(os.environ[SCHEMAS_ENV])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "schemas"
        if (candidate / "shard_manifest.avsc").is_file():
            return candidate
    raise CodecError(f"cannot find the project's schemas/ folder; set {SCHEMAS_ENV}")


@dataclass(frozen=True)
class KnownSchema:
    kind: str
    parsed: Any
    fingerprint: bytes


@dataclass(frozen=True)
class SchemaSet:
    by_fingerprint: dict[bytes, KnownSchema]
    current: dict[str, KnownSchema]


def _load(kind: str, path: Path) -> KnownSchema:
    raw = json.loads(path.read_text())
    parsed = fastavro.parse_schema(raw, _write_hint=False)
    return KnownSchema(kind, parsed, crc64_avro(to_parsing_canonical_form(raw).encode()))


@cache
def schema_set() -> SchemaSet:
    folder = schemas_dir()
    current, by_fingerprint = {}, {}
    for kind in KINDS:
        known = _load(kind, folder / f"{kind}.avsc")
        current[kind] = known
        by_fingerprint[known.fingerprint] = known
    history = folder / "history"
    if history.is_dir():
        for path in sorted(history.glob("*.avsc")):
            kind = path.name.split(".v")[0]
            if kind in current:
                old = _load(kind, path)
                by_fingerprint[old.fingerprint] = old
    return SchemaSet(by_fingerprint, current)


def fingerprint(kind: str) -> bytes:
    """The fingerprint written in front of records of this kind."""
    return schema_set().current[kind].fingerprint


# --- encode and decode ------------------------------------------------------------------------
def encode(kind: str, record: dict[str, Any]) -> bytes:
    """A record in the current schema of `kind`, single-object encoded."""
    known = schema_set().current[kind]
    out = io.BytesIO()
    out.write(MARKER)
    out.write(known.fingerprint)
    fastavro.schemaless_writer(out, known.parsed, record, strict=True)
    return out.getvalue()


def _split_header(payload: bytes) -> tuple[KnownSchema, bytes]:
    if len(payload) < HEADER_LEN:
        raise CodecError(f"payload of {len(payload)} bytes is too short for an Avro single-object header")
    if payload[:2] != MARKER:
        raise CodecError(
            f"payload does not start with the Avro single-object marker C3 01 (found {payload[0]:02X} {payload[1]:02X})"
        )
    fp = payload[2:HEADER_LEN]
    known = schema_set().by_fingerprint.get(fp)
    if known is None:
        raise CodecError(
            f"unknown writer schema fingerprint {fp.hex()}: the record was written with a schema this build does not know"
        )
    return known, payload[HEADER_LEN:]


def _read(writer: KnownSchema, reader: KnownSchema | None, datum: bytes) -> dict[str, Any]:
    buffer = io.BytesIO(datum)
    try:
        reader_schema = reader.parsed if reader is not None else None
        value = fastavro.schemaless_reader(buffer, writer.parsed, reader_schema)
    except Exception as e:  # fastavro raises EOFError, ValueError, IndexError, ... on bad bytes
        raise CodecError(f"cannot decode {writer.kind}: {type(e).__name__}: {e}") from e
    trailing = len(datum) - buffer.tell()
    if trailing:
        raise CodecError(f"{trailing} bytes follow the end of the {writer.kind} record")
    if not isinstance(value, dict):
        raise CodecError(f"{writer.kind} did not decode to a record")
    return value


def decode(kind: str, payload: bytes) -> dict[str, Any]:
    """A record of `kind`, resolved from an older writer schema into the current one."""
    writer, datum = _split_header(payload)
    if writer.kind != kind:
        raise CodecError(f"record was written as '{writer.kind}' but '{kind}' was expected")
    current = schema_set().current[kind]
    return _read(writer, None if writer.fingerprint == current.fingerprint else current, datum)


def decode_any(payload: bytes) -> tuple[str, dict[str, Any]]:
    """A record of any known kind, with its writer schema, and the kind."""
    writer, datum = _split_header(payload)
    return writer.kind, _read(writer, None, datum)


# --- JSON form for the command line ------------------------------------------------------------
def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def _from_json(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """Byte lists back to bytes for the schema's `bytes` fields (top level; no schema here
    nests one deeper)."""
    raw = json.loads((schemas_dir() / f"{kind}.avsc").read_text())
    byte_fields = {f["name"] for f in raw["fields"] if f["type"] == "bytes"}
    return {k: bytes(v) if k in byte_fields and isinstance(v, list) else v for k, v in record.items()}


def main(argv: list[str]) -> int:
    usage = "usage: python -m distillery_torch.avro encode KIND < json > avro | decode [KIND] < avro > json"
    if not argv or argv[0] not in ("encode", "decode") or (argv[0] == "encode" and len(argv) != 2):
        print(usage, file=sys.stderr)
        return 2
    try:
        if argv[0] == "encode":
            kind = argv[1]
            if kind not in KINDS:
                raise CodecError(f"unknown schema '{kind}' (known: {', '.join(KINDS)})")
            record = _from_json(kind, json.loads(sys.stdin.read()))
            sys.stdout.buffer.write(encode(kind, record))
        else:
            payload = sys.stdin.buffer.read()
            if len(argv) > 1:
                kind, record = argv[1], decode(argv[1], payload)
            else:
                kind, record = decode_any(payload)
            print(json.dumps({"kind": kind, "record": _to_json(record)}))
    except (CodecError, ValueError, TypeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
