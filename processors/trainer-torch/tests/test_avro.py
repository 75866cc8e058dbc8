"""The codec: the project's single-object encoding (marker, CRC-64-AVRO fingerprint of the
canonical form, datum), older writer schemas resolved into current ones, malformed payloads
refused with a reason, and the command line the cross-language test drives. (Records written by
the Rust codec are decoded in test_world_sizes.py, from the candle trainer's own output.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from distillery_torch import avro

METRICS = {
    "id": "0f", "run": "e/t", "style": "s", "step": 3, "loss": 1.25, "lr": 5e-6, "grad_norm": 0.5,
    "tokens": 120, "completion_tokens": 100, "tokens_per_second": 42.0, "created_at_ms": 7,
}
LETTER = {
    "id": "ab", "processor": "trainer", "error_class": "USER", "error": "checksum", "source_topic": "e.shards",
    "source_partition": 0, "source_offset": 4, "key": None, "original": b"\x00\xff raw", "created_at_ms": 1,
}


def test_the_header_is_the_marker_and_the_crc64_fingerprint_of_the_canonical_form() -> None:
    for kind in avro.KINDS:
        raw = json.loads((avro.schemas_dir() / f"{kind}.avsc").read_text())
        canonical = to_parsing_canonical_form(raw)
        # fastavro's own CRC-64-AVRO implementation, as an independent check of ours.
        assert avro.fingerprint(kind).hex() == fastavro_fingerprint(canonical, "CRC-64-AVRO")
    encoded = avro.encode("train_metrics", METRICS)
    assert encoded[:2] == b"\xc3\x01" and encoded[2:10] == avro.fingerprint("train_metrics")


@pytest.mark.parametrize(("kind", "record"), [("train_metrics", METRICS), ("dead_letter", LETTER)])
def test_records_round_trip(kind: str, record: dict[str, object]) -> None:
    assert avro.decode(kind, avro.encode(kind, record)) == record
    assert avro.decode_any(avro.encode(kind, record)) == (kind, record)


def test_an_older_writer_schema_resolves_into_the_current_one() -> None:
    old = json.loads((avro.schemas_dir() / "history" / "question.v1.avsc").read_text())
    record = {"id": "q", "dataset": "d", "source_uri": "u", "source_row": 2, "problem": "p", "expected_answer": "1"}
    import io

    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), record)
    header = b"\xc3\x01" + avro.crc64_avro(to_parsing_canonical_form(old).encode())
    assert avro.decode("question", header + body.getvalue()) == {**record, "metadata": {}}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc3", "too short"),
        (b"\x00\x01" + bytes(8) + b"\x00", "does not start with the Avro single-object marker"),
        (b"\xc3\x01" + bytes(8) + b"\x00", "unknown writer schema fingerprint"),
        (avro.encode("train_metrics", METRICS)[:-3], "cannot decode train_metrics"),
        (avro.encode("train_metrics", METRICS) + b"\x00", "1 bytes follow the end"),
        (avro.encode("train_metrics", METRICS), "written as 'train_metrics' but 'shard_manifest' was expected"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(avro.CodecError, match=reason):
        avro.decode("shard_manifest" if "expected" in reason else "train_metrics", payload)


def test_the_command_line_encodes_and_decodes(tmp_path: Path) -> None:
    src = Path(avro.__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(src)}
    record = {**LETTER, "original": list(LETTER["original"])}  # type: ignore[call-overload]
    encoded = subprocess.run(
        [sys.executable, "-m", "distillery_torch.avro", "encode", "dead_letter"], input=json.dumps(record).encode(),
        capture_output=True, env=env, check=True,
    ).stdout
    assert encoded == avro.encode("dead_letter", LETTER)
    decoded = subprocess.run(
        [sys.executable, "-m", "distillery_torch.avro", "decode"], input=encoded, capture_output=True, env=env, check=True
    ).stdout
    assert json.loads(decoded) == {"kind": "dead_letter", "record": record}
    refused = subprocess.run(
        [sys.executable, "-m", "distillery_torch.avro", "decode"], input=b"junk", capture_output=True, env=env
    )
    assert refused.returncode == 1 and b"too short for an Avro single-object header" in refused.stderr
