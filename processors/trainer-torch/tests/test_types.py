"""The package is typed (`py.typed`, hints everywhere): mypy in strict mode passes on it
(configured in pyproject.toml). mypy is a test dependency (`pip install -e '.[test]'`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_mypy_strict_passes_on_the_package() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=PACKAGE, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
