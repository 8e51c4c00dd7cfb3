"""bench/ensemble.py on the tiny bundle: its two ends are the two models as their own reports measure them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_ensemble_ends_reproduce_evaluate_and_the_tfidf_baseline(tiny_bundle, tiny_data, tmp_path):
    from papertasks.baseline import run_baseline
    from papertasks.evaluate import evaluate_bundle

    out = tmp_path / "ensemble.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "ensemble.py"), "--bundle", str(tiny_bundle),
                             "--data", str(tiny_data), "--weights", "1", "0.5", "0", "--min-positives", "3",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = json.loads(out.read_text())["weights"]
    assert list(weights) == ["1.0", "0.5", "0.0"]

    bundle = evaluate_bundle(str(tiny_bundle), str(tiny_data), str(tmp_path / "bundle_report"), min_positives=3)
    tfidf = run_baseline(str(tiny_data), str(tmp_path / "tfidf_report"), min_positives=3)
    for weight, report in (("1.0", bundle), ("0.0", tfidf)):
        for metric, value in weights[weight]["per-label"]["test"].items():
            assert value == pytest.approx(report["test"][metric], abs=1e-9), (weight, metric)
        for metric, value in weights[weight]["global"]["test"].items():
            assert value == pytest.approx(report["test_global_threshold"][metric], abs=1e-9), (weight, metric)
