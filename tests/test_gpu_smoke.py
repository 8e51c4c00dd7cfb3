"""bench/gpu_smoke.py, the check to run on a GPU machine, in its tiny CPU version (--device cpu)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_smoke_runs_a_tiny_version_on_the_cpu(tmp_path):
    """As a user runs it: the tiny random RoBERTa trained in bf16 and fp32 on the CPU, exported and
    scored; each run passes and reports its speed."""
    out = tmp_path / "smoke.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_smoke.py"), "--device", "cpu", "--models",
                             "tiny-roberta", "--json", str(out)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    assert [(r["model"], r["precision"], r["ok"]) for r in report["results"]] == [
        ("tiny-roberta", "bf16", True), ("tiny-roberta", "fp32", True)]
    assert all(r["train_texts_per_s"] > 0 and r["predict_texts_per_s"] > 0 for r in report["results"])
    assert "tiny-roberta | bf16 |" in result.stdout and "| pass" in result.stdout
