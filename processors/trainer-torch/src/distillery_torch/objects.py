"""Object stores by URL, through obstore (which wraps the Rust `object_store` crate the rest of
the project uses): plain paths and `file://` URLs on the local filesystem, `s3://bucket/key`
on S3 or any S3-compatible server.

S3 is configured only from the environment, exactly as `processors/runtime/src/objects.rs`
reads it: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
`AWS_ENDPOINT` (MinIO or another S3-compatible server), `AWS_ALLOW_HTTP=true` for plain HTTP,
and any other `AWS_*` key object_store knows. Requests are retried for up to 4 minutes with
backoff from 100 ms to 5 s, like the Rust side, so a restarting S3 server is waited out.
Writes are atomic: a reader never sees a partial object; large files go up as multipart
uploads (single PUTs stop at 5 GB).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import obstore
from obstore.store import LocalStore, S3Store

log = logging.getLogger(__name__)
T = TypeVar("T")

# Files above this go up in parts of this size (S3 wants parts of at least 5 MiB).
MULTIPART_PART_BYTES = 64 * 1024 * 1024

_RETRY: Any = {
    "max_retries": 60,
    "retry_timeout": timedelta(seconds=240),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5), "base": 2},
}


def is_url(location: str) -> bool:
    return "://" in location


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


@cache
def _s3(bucket: str) -> S3Store:
    # S3Store reads every AWS_* variable of the environment, as AmazonS3Builder::from_env does.
    return S3Store(bucket, retry_config=_RETRY)


@cache
def _local() -> LocalStore:
    return LocalStore()


def locate(location: str) -> tuple[Any, str]:
    """The store and the path inside it of `s3://bucket/key`, `file:///abs/path` or a path."""
    if location.startswith("s3://"):
        bucket, _, key = location.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ValueError(f"{location}: expected s3://bucket/key")
        return _s3(bucket), key
    if location.startswith("file://"):
        path = Path(location.removeprefix("file://"))
    elif is_url(location):
        raise ValueError(f"{location}: unsupported URL scheme (use a path, file:// or s3://)")
    else:
        path = Path(location)
    return _local(), str(path.resolve()).lstrip("/")


def get_bytes(location: str) -> bytes:
    """A whole object. Raises FileNotFoundError when there is none."""
    store, path = locate(location)
    return bytes(obstore.get(store, path).bytes())


def put_bytes(location: str, data: bytes) -> None:
    """Writes a whole object, atomically."""
    store, path = locate(location)
    obstore.put(store, path, data, use_multipart=len(data) > MULTIPART_PART_BYTES, chunk_size=MULTIPART_PART_BYTES)


def upload_file(local: Path, location: str) -> None:
    """Uploads a local file; multipart above 64 MiB. The object appears only once complete."""
    store, path = locate(location)
    size = local.stat().st_size
    obstore.put(store, path, local, use_multipart=size > MULTIPART_PART_BYTES, chunk_size=MULTIPART_PART_BYTES)


def download_file(location: str, local: Path) -> None:
    """Streams an object into a local file (written beside it, then renamed into place)."""
    store, path = locate(location)
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".partial")
    with open(partial, "wb") as file:
        for chunk in obstore.get(store, path).stream(min_chunk_size=MULTIPART_PART_BYTES):
            file.write(chunk)
    os.replace(partial, local)


def list_names(folder: str) -> list[str]:
    """Paths of the objects under a folder, relative to it (recursively)."""
    store, prefix = locate(folder)
    prefix = prefix.rstrip("/") + "/"
    names = []
    for batch in obstore.list(store, prefix):
        for meta in batch:
            names.append(meta["path"].removeprefix(prefix))
    return sorted(names)


def is_missing(error: BaseException) -> bool:
    """Whether the store answered that the object does not exist (not: could not be reached)."""
    return isinstance(error, FileNotFoundError)


def retrying(what: str, action: Callable[[], T], stop: Callable[[], bool] = lambda: False) -> T:
    """Runs `action` until it succeeds: a store that stays unreachable beyond obstore's own
    retries (4 minutes) is waited for, never taken as a reason to end the run. A missing
    object is not retried (it is an answer, not an outage)."""
    delay = 1.0
    while True:
        try:
            return action()
        except FileNotFoundError:
            raise
        except Exception as e:
            if stop():
                raise
            log.warning("%s failed, retrying in %.0f s: %s", what, delay, e)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
