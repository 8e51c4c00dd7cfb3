"""bench/int8_compute.py: the bundle's int8 weights in a float graph score like the fp32 export, and
the bench measures the served bundle exactly as `evaluate` does."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import REPO
from deployment.predictor import Predictor
from export.onnx_export import dequantized_graph

BENCH = REPO / "bench" / "int8_compute.py"


def test_float_graph_has_no_int8_matmuls_and_matches_fp32(tiny_bundle, tiny_model, tiny_data, tmp_path):
    from papertasks.data import read_split

    folder = tmp_path / "float"
    shutil.copytree(tiny_bundle, folder, ignore=shutil.ignore_patterns("model.onnx", "manifest.json"))
    int8_ops = [n.op_type for n in onnx.load(str(tiny_bundle / "model.onnx")).graph.node]
    rewritten = dequantized_graph(tiny_bundle / "model.onnx", folder / "model.onnx")
    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node]
    assert rewritten == int8_ops.count("MatMulInteger") > 0
    assert not {"MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear"} & set(ops)
    assert ops.count("MatMul") == int8_ops.count("MatMul") + rewritten

    texts = read_split(tiny_data, "valid")["text"].tolist()[:32]
    fp32 = Predictor(tiny_model / "onnx", allow_unsigned=True).predict_proba(texts)
    np.testing.assert_allclose(Predictor(folder, allow_unsigned=True).predict_proba(texts), fp32, atol=0.02)


def test_bench_reports_the_bundle_as_evaluate_does(tiny_bundle, tiny_data, tmp_path):
    from papertasks.evaluate import evaluate_bundle

    out = tmp_path / "int8_compute.json"
    result = subprocess.run([sys.executable, str(BENCH), "--bundle", str(tiny_bundle), "--data", str(tiny_data),
                             "--min-positives", "3", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(out.read_text())["engines"]["int8 arithmetic (the bundle as served)"]
    report = evaluate_bundle(str(tiny_bundle), str(tiny_data), str(tmp_path / "report"), min_positives=3)
    for metric, value in served["per-label thresholds"].items():
        assert value == pytest.approx(report["test"][metric], abs=1e-9), metric


def test_a_float_model_is_a_clean_error(tiny_model, tiny_data, tmp_path):
    result = subprocess.run([sys.executable, str(BENCH), "--bundle", str(tiny_model / "onnx"), "--data", str(tiny_data),
                             "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("int8_compute: ")
    assert "no MatMulInteger" in result.stderr and not (tmp_path / "x.json").exists()
