"""`scripts/gpu-check-torch.sh --device cpu`, the dry run of the GPU checks, passes: the same
isolation and throughput code the GPU run uses, on tiny models and 512-token rows."""

from __future__ import annotations

import json
import subprocess

from harness import REPO


def test_the_gpu_checks_dry_run_passes_on_the_cpu() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "gpu-check-torch.sh"), "--device", "cpu", "--", "--steps", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(r["check"], r.get("model")) for r in lines] == [
        ("isolation", "llama"), ("isolation", "nemotron_h"), ("throughput", "llama-tiny"),
        ("throughput", "nemotron-h-tiny"), ("summary", None),
    ]
    assert all(r["ok"] for r in lines[:-1]) and lines[-1]["failed"] == 0
