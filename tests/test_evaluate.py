"""Threshold tuning and metrics (checked by hand), and the evaluate / baseline reports."""
from __future__ import annotations

import json

import numpy as np
import pytest

from papertasks.evaluate import compute_metrics, evaluate_bundle, precision_at_k, tune_thresholds

LABELS = ["a", "b", "c"]


def test_metrics_by_hand():
    y = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.4], [0.6, 0.7, 0.2], [0.1, 0.2, 0.95]])
    m = compute_metrics(y, probs, np.full(3, 0.5), LABELS)
    # predictions: row1 {a}, row2 {b}, row3 {a,b}, row4 {c}: tp=5, fp=0, fn=1 (row2 c)
    assert m["f1_micro"] == pytest.approx(2 * 5 / (2 * 5 + 0 + 1))
    assert m["per_label"]["c"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2,
                                   "threshold": 0.5}
    assert m["f1_macro"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert m["precision_at_1"] == 1.0
    assert precision_at_k(y, probs, 3) == pytest.approx(6 / 12)
    assert m["roc_auc_macro"] == pytest.approx(1.0)


def test_thresholds_tuned_per_label_with_global_fallback():
    rng = np.random.default_rng(0)
    y = np.zeros((400, 3), dtype=int)
    y[:200, 0] = 1
    y[:100, 1] = 1
    y[:3, 2] = 1  # too few positives for its own threshold
    probs = rng.uniform(0, 0.2, size=y.shape)
    probs[:200, 0] += 0.75  # label a separable at ~0.3 .. 0.95
    probs[200:, 0] += 0.05
    probs[:100, 1] = 0.35  # label b positives sit at 0.35, negatives below 0.2
    t = tune_thresholds(y, probs, LABELS, min_positives=10)
    assert set(t["per_label"]) == {"a", "b"}
    assert 0.2 <= t["per_label"]["b"] <= 0.35
    m = compute_metrics(y, probs, np.array([t["per_label"]["a"], t["per_label"]["b"], t["global"]]), LABELS)
    assert m["per_label"]["a"]["f1"] == 1.0 and m["per_label"]["b"]["f1"] == 1.0


def test_evaluate_bundle_writes_thresholds_metrics_and_card(tiny_bundle, tiny_data, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    report = evaluate_bundle(str(bundle), str(tiny_data), str(tmp_path / "report"), min_positives=3,
                             labels_json=str(tmp_path / "json_files" / "labels.json"))
    thresholds = json.loads((bundle / "thresholds.json").read_text())
    assert thresholds == report["thresholds"]
    assert json.loads((tmp_path / "json_files" / "thresholds.json").read_text()) == thresholds
    test = report["test"]
    for key in ("f1_micro", "f1_macro", "f1_samples", "precision_at_1", "precision_at_3"):
        assert 0.0 <= test[key] <= 1.0
    n_test = sum(1 for _ in open(tiny_data / "test.jsonl"))
    assert report["test_rows"] == n_test
    assert sum(m["support"] for m in test["per_label"].values()) >= n_test
    for name in ("metrics.json", "report.md", "per_label_f1.png", "precision_recall.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "## Test metrics" in (bundle / "MODEL_CARD.md").read_text()
    assert json.loads((bundle / "metrics.json").read_text())["test"]["f1_micro"] == test["f1_micro"]


def test_tfidf_baseline_report(tiny_data, tmp_path):
    from papertasks.baseline import run_tfidf_baseline

    report = run_tfidf_baseline(str(tiny_data), str(tmp_path), min_positives=3)
    assert report["model"].startswith("TF-IDF")
    assert report["test"]["precision_at_1"] > 0.3  # cs.CV / cs.AI / cs.CL are learnable from 600 abstracts
    assert "| TF-IDF + logistic regression |" in (tmp_path / "report.md").read_text()
