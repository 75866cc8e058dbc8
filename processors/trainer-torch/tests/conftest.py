"""Fixtures: a fresh broker per test, one S3 server for the session (each test writes under its
own prefix), and the environment that points obstore (in the test and in every engine process)
at that server."""

from __future__ import annotations

import os
import sys
import uuid

# One CPU thread per process, as torchrun gives each worker: on a shared 2-core machine
# OpenMP's spinning threads slow small models down tenfold, and results stay reproducible.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Broker, S3Server  # noqa: E402


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server("distillery", tmp_path_factory.mktemp("s3") / "moto.log")
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker.log")
    yield b
    b.stop()


@pytest.fixture
def s3_prefix(s3: S3Server) -> str:
    """A fresh folder in the bucket for one test."""
    return f"s3://{s3.bucket}/{uuid.uuid4().hex[:12]}"
