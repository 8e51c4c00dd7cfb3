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
