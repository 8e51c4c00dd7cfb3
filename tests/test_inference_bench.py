"""bench/inference.py's table: speeds relative to torch fp32, or to the first engine without it."""
from __future__ import annotations

import importlib.util

from conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("inference_bench", REPO / "bench" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def speed(texts_per_s: float) -> dict:
    return {"texts_per_s": texts_per_s, "p50_ms": 1.0, "p95_ms": 2.0}


def result(engine: str, b1: float, b32: float) -> dict:
    return {"engine": engine, "size_mb": 1.0, "peak_rss_mb": 1.0, "batch1": speed(b1), "batch32": speed(b32),
            "micro_f1": 0.5}


def test_speedups_are_relative_to_torch_or_else_the_first_engine():
    render = load_bench().render
    with_torch = render([result("onnx-fp32", 40, 50), result("torch-fp32", 20, 25)]).splitlines()
    assert "b1 x torch | b32 x torch |" in with_torch[0] and with_torch[2].endswith("| 2.00 | 2.00 |")
    without = render([result("onnx-fp32", 40, 50), result("onnx-int8", 60, 100)]).splitlines()
    assert "b1 x onnx-fp32 | b32 x onnx-fp32 |" in without[0]
    assert without[2].endswith("| 1.00 | 1.00 |") and without[3].endswith("| 1.50 | 2.00 |")


def test_from_a_clone_the_references_come_from_the_bundle(tiny_bundle, tiny_data, tmp_path):
    """No trained folder: torch fp32 is the base architecture with a fresh head (speed only, no quality),
    ONNX fp32 the bundle's own weights dequantized (real quality); the CPU's peaks and the model's
    multiply-adds per text come with the table."""
    import json
    import subprocess
    import sys

    out = tmp_path / "inference.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "inference.py"), "--bundle", str(tiny_bundle),
                             "--data", str(tiny_data), "--texts", "4", "--single", "2",
                             "--engines", "torch-fp32", "onnx-fp32", "onnx-int8", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    engines = {r["engine"]: r for r in report["results"]}
    assert engines["torch-fp32"]["micro_f1"] is None and engines["torch-fp32"]["vs_fp32"] is None
    assert engines["onnx-fp32"]["micro_f1"] is not None and engines["onnx-fp32"]["vs_fp32"]["max_prob_diff"] == 0
    assert engines["onnx-int8"]["arithmetic"] in ("u8s8", "u8u8") and engines["onnx-fp32"]["arithmetic"] == "fp32"
    assert "dequantized" in report["fp32_reference"]
    assert set(report["peak_macs_per_s"]) == {"fp32", "u8s8", "u8u8"} and min(report["peak_macs_per_s"].values()) > 0
    assert report["macs_per_text"] > 0 and "% of peak" in report["table"]
