"""``python scripts/gpu_check.py`` in its CPU-only mode (CI has no GPU): it runs, writes its JSON and
says what it skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from wfa.methods import list_methods

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out),
                           "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["methods"] == list(list_methods())
    assert set(report["train"]["methods"]) == set(list_methods())
    assert all(entry["flops_per_step"] > 0 for entry in report["train"]["methods"].values())
    parity = report["retrieval_parity"]
    assert parity["identical"] and parity["paths"][1] == "torch-cpu" and parity["captions"] == 10_000
    assert len(report["skipped"]) == 5 and "loss_parity" not in report and "accelerate" not in report
    assert "fast_path" not in report
    for part in ("train: bf16", "loss_parity:", "retrieval_parity at 100,000", "accelerate:", "fast_path:"):
        assert f"skipped: {part}" in done.stdout
