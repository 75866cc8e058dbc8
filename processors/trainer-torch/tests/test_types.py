"""The package is typed (`py.typed`, hints everywhere): mypy in strict mode passes on it.
mypy is a test dependency (`pip install -e processors/trainer-torch[test]`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_mypy_strict_passes_on_the_package() -> None:
    # The cache outlives the test run: a cold check reads all of torch's stubs (about a minute
    # on 2 cores), a warm one takes seconds.
    cache = Path.home() / ".cache" / "distillery-mypy"
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache)], cwd=PACKAGE, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
