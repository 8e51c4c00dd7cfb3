"""bench/threshold_limits.py: the coordinate ascent does what it says, and the bench reads a report's scores."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from bench.threshold_limits import LAMBDAS, ascend_thresholds  # noqa: E402
from papertasks.evaluate import _micro_macro, _own_thresholds  # noqa: E402
from papertasks.test_scores import write_test_scores  # noqa: E402

BENCH = str(REPO / "bench" / "threshold_limits.py")


def scores(rows=600, labels=6, seed=0):
    """Labels of falling frequency whose scores are calibrated differently, so their best thresholds differ."""
    rng = np.random.default_rng(seed)
    y = rng.random((rows, labels)) < np.linspace(0.4, 0.03, labels)
    logits = 2.5 * y - np.linspace(1, 3, labels) + rng.normal(size=(rows, labels))
    return y, 1 / (1 + np.exp(-logits))


def test_one_label_ascent_finds_that_labels_best_threshold():
    y, probs = scores(labels=1)
    _, _, own = _own_thresholds(y, probs, 1)
    assert ascend_thresholds(y, probs, 0.3, 0.5)[0] == pytest.approx(own[0])


@pytest.mark.parametrize("lam", [0.0, *LAMBDAS])
def test_ascent_never_lowers_its_objective(lam):
    y, probs = scores()
    start = 0.4
    cut = ascend_thresholds(y, probs, lam, start)
    assert len(set(cut.round(2))) > 1  # per-label thresholds, not one moved together

    def objective(c):
        micro, macro = _micro_macro(y, probs >= c)
        return micro + lam * macro
    assert objective(cut) >= objective(np.full(y.shape[1], start)) - 1e-12


def test_bench_reads_a_reports_scores(tmp_path):
    y, probs = scores()
    write_test_scores(tmp_path / "report", probs, y, [f"l{j}" for j in range(y.shape[1])])
    out = tmp_path / "limits.json"
    result = subprocess.run([sys.executable, BENCH, "--report", str(tmp_path / "report"), "--min-positives", "4",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    table = report["micro_macro_held_out"]
    assert {"global threshold", "per-label, shrink 0, relative cut 0.0",
            "coordinate ascent on micro-F1 + 0.3 x macro-F1"} <= set(table)
    assert report["micro_f1_floor"] == pytest.approx(table["global threshold"][0] - 0.005, abs=1e-4)
    assert all(table[name][0] >= report["micro_f1_floor"] and table[name][1] >= report["macro_f1_floor"]
               for name in report["meeting_both"])
    assert "rules meeting both" in result.stdout.splitlines()[-1]


def test_bench_without_scores_says_so_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, BENCH, "--report", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"{tmp_path} has no test_scores.npz; evaluate the model again "
                                                  "to keep its scores"]
