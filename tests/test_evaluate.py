"""Threshold tuning and metrics (checked by hand), and the evaluate / baseline reports."""
from __future__ import annotations

import json

import numpy as np
import pytest

from papertasks.evaluate import (TOP_CLASS_THRESHOLDS, compute_metrics, evaluate_bundle, evaluate_probs,
                                 evaluation_problem, headline_header, headline_row, precision_at_k,
                                 RELATIVE_GRID, SHRINK_GRID, single_label_metrics, tune_thresholds, tuned_predictions,
                                 write_report)
from papertasks.cli import main
from papertasks.errors import UserError

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
    t = tune_thresholds(y, probs, LABELS, min_positives=10, shrink=0)
    assert set(t["per_label"]) == {"a", "b"}
    assert 0.2 <= t["per_label"]["b"] <= 0.35
    m = compute_metrics(y, probs, np.array([t["per_label"]["a"], t["per_label"]["b"], t["global"]]), LABELS)
    assert m["per_label"]["a"]["f1"] == 1.0 and m["per_label"]["b"]["f1"] == 1.0


def test_per_label_thresholds_are_shrunk_as_validation_halves_choose():
    """Labels whose best threshold really differs keep it (little shrinkage); where the per-label
    optimum is noise, the thresholds move to the global one."""
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.random((n, 3)) < 0.2).astype(int)
    shifted = rng.uniform(0, 0.5, size=y.shape) + y * 0.3  # overlapping: positives 0.3..0.8, negatives 0..0.5
    shifted[:, 2] += 0.3  # label c's scores sit higher: its own threshold must be higher than a's
    t = tune_thresholds(y, shifted, LABELS, min_positives=10)
    assert t["shrink"] is not None and t["shrink"] <= 30 and t["per_label"]["c"] - t["per_label"]["a"] > 0.1
    held_out = t["policy_chosen_on_valid_halves"]["micro_macro"]
    assert len(held_out) == len(SHRINK_GRID) * len(RELATIVE_GRID)

    few = (rng.random((n, 6)) < 0.03).astype(int)  # ~60 positives a label, scored alike: one threshold fits all
    noise = rng.uniform(0, 0.8, size=few.shape) + few * 0.2
    t = tune_thresholds(few, noise, list("abcdef"), min_positives=10)
    held_out = t["policy_chosen_on_valid_halves"]["micro_macro"]
    assert (t["shrink"] is None or t["shrink"] >= 300)
    assert held_out["shrink=None,relative=0.0"][1] > held_out["shrink=0,relative=0.0"][1]


def test_the_tuned_policy_keeps_micro_f1_and_cuts_labels_far_below_the_papers_best():
    """A frequent label scored well and a rare one whose positives score low: its own threshold is low,
    which adds false positives to papers that have a confident label. The relative cut keeps the rare
    label where nothing else is confident; the policy keeps held-out micro-F1 at the global one's."""
    rng = np.random.default_rng(1)
    n = 3000
    y = np.zeros((n, 2), dtype=int)
    y[: n // 2, 0] = 1
    y[n // 2: n // 2 + 150, 1] = 1  # the rare label sits on papers without the frequent one
    rare_negatives = np.where(y[:, 0], rng.uniform(0.1, 0.3, n), rng.uniform(0.0, 0.12, n))  # confused on them
    probs = np.column_stack([np.where(y[:, 0], rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.3, n)),
                             np.where(y[:, 1], rng.uniform(0.15, 0.3, n), rare_negatives)])
    t = tune_thresholds(y, probs, ["frequent", "rare"], min_positives=10)
    assert t["relative_to_top"] > 0 and t["per_label"]["rare"] < 0.3
    pred = tuned_predictions(t, ["frequent", "rare"], probs)
    frequent_papers = y[:, 0] == 1
    assert not pred[frequent_papers, 1].any()  # never the rare label on a paper with a confident one
    assert pred[y[:, 1] == 1, 1].mean() > 0.3
    held_out = t["policy_chosen_on_valid_halves"]["micro_macro"]
    chosen = held_out[f"shrink={t['shrink']},relative={t['relative_to_top']}"]
    assert chosen[0] >= held_out["shrink=None,relative=0.0"][0] - 0.0025


def test_evaluate_bundle_writes_thresholds_metrics_and_card(tiny_bundle, tiny_data, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    assert main(["evaluate", "--model", str(bundle), "--data", str(tiny_data), "--out", str(tmp_path / "report"),
                 "--min-positives", "3", "--update-bundle", "--labels-json", str(tmp_path / "json_files" / "labels.json")]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
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
    names = json.loads((bundle / "label_names.json").read_text())  # arXiv codes: the report names them too
    assert report["label_names"] == names
    some = next(iter(names))
    assert f"| {some} — {names[some]} |" in (tmp_path / "report" / "report.md").read_text()


def test_tfidf_baseline_report(tiny_data, tmp_path):
    from papertasks.baseline import run_baseline

    report = run_baseline(str(tiny_data), str(tmp_path), "tfidf", min_positives=3)
    assert report["model"].startswith("TF-IDF")
    assert report["test"]["precision_at_1"] > 0.3  # cs.CV / cs.AI / cs.CL are learnable from 600 abstracts
    assert "| TF-IDF + logistic regression |" in (tmp_path / "report.md").read_text()


def test_single_label_metrics_by_hand(tmp_path):
    from sklearn.metrics import f1_score, roc_auc_score

    classes = ["a", "b", "c", "d"]
    true = np.array([0, 0, 0, 1, 1, 2])  # class d is never true in this test set
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.3, 0.4, 0.2, 0.1],
                      [0.1, 0.7, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.3, 0.15, 0.05, 0.5]])
    y = np.eye(4, dtype=int)[true]
    m = single_label_metrics(y, probs, classes)
    # top class: a a b | b b | d -> a: P 1, R 2/3; b: P 2/3, R 1; c: never predicted; d: one false positive
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.8 + 0.0) / 3)  # over the classes present in the test set
    assert m["f1_macro"] == pytest.approx(f1_score(true, probs.argmax(1), labels=[0, 1, 2], average="macro"))
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.8 + 1 * 0.0) / 6)
    assert m["top3_accuracy"] == pytest.approx(5 / 6)  # the c paper ranks c fourth
    assert m["roc_auc"] == pytest.approx(np.mean([roc_auc_score(true == c, probs[:, c]) for c in range(3)]))
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert m["per_label"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}

    report = evaluate_probs("hand", classes, y, probs, y, probs, min_positives=10, problem="multi-class")
    assert report["thresholds"] == TOP_CLASS_THRESHOLDS and report["valid"]["accuracy"] == pytest.approx(4 / 6)
    write_report(report, tmp_path, probs, y, classes)
    for name in ("metrics.json", "report.md", "per_label_f1.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "precision_recall.png").exists()
    assert headline_header(report) in (tmp_path / "report.md").read_text()
    assert headline_row(report) == "| hand | 0.667 | 0.533 | 0.667 | 0.833 | " + f"{m['roc_auc']:.3f} |"


def test_binary_metrics_score_the_second_class():
    y = np.eye(2, dtype=int)[[0, 0, 1, 1]]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])
    m = single_label_metrics(y, probs, ["no", "yes"])
    assert m["accuracy"] == 0.5 and m["top3_accuracy"] is None
    assert m["roc_auc"] == pytest.approx(3 / 4)  # positives 0.4, 0.9 vs negatives 0.1, 0.6: 3 of 4 pairs in order


def test_the_bundle_decides_how_it_is_evaluated():
    assert evaluation_problem(True, "multi-class", "m", "d") == "multi-class"
    assert evaluation_problem(True, "binary", "m", "d") == "binary"
    assert evaluation_problem(False, "multi-class", "m", "d") == "multi-label"  # sigmoids keep their thresholds
    with pytest.raises(UserError, match="single-label model"):
        evaluation_problem(True, "multi-label", "m", "d")


def test_evaluate_single_label_bundle(tiny_pwc_bundle, tiny_data, tmp_path):
    import shutil

    from deployment.predictor import Predictor

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_pwc_bundle, bundle)
    data = tiny_pwc_bundle.parents[1] / "data"  # where the fixture prepared it
    assert main(["evaluate", "--model", str(bundle), "--data", str(data), "--out", str(tmp_path / "report"),
                 "--update-bundle", "--labels-json", str(tmp_path / "json_files" / "labels.json")]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["problem"] == "multi-class" and "accuracy" in report["test"]
    assert json.loads((bundle / "thresholds.json").read_text()) == TOP_CLASS_THRESHOLDS
    assert (tmp_path / "report" / "confusion_matrix.png").stat().st_size > 0
    saved = json.loads((bundle / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == report["test"]["accuracy"] and "confusion_matrix" not in saved["test"]
    assert "## Test metrics" in (bundle / "MODEL_CARD.md").read_text()
    predictor = Predictor(bundle)  # the manifest covers the rewritten files
    probs = predictor.predict_proba(["Image classification with a small convolutional network."])
    assert predictor.single_label and predictor.global_threshold == 0.0 and predictor.decide(probs).sum() == 1
    with pytest.raises(UserError, match="single-label model"):
        evaluate_bundle(str(bundle), str(tiny_data), str(tmp_path / "wrong"))


def test_bootstrap_weights_are_resampled_rows():
    """A resample weighted by draw counts scores exactly as the drawn rows, repeated, score in evaluate."""
    from papertasks.bootstrap import resampled_metrics

    rng = np.random.default_rng(3)
    y = rng.random((400, 6)) < [0.5, 0.3, 0.1, 0.05, 0.02, 0.01]
    probs = np.clip(y * 0.4 + rng.random((400, 6)) * 0.7, 0, 1)
    cut = np.array([0.5, 0.45, 0.6, 0.4, 0.5, 0.3])
    labels = [f"l{j}" for j in range(6)]
    draws = [rng.integers(0, 400, 400) for _ in range(3)]
    weights = np.stack([np.bincount(d, minlength=400) for d in draws]).astype(np.float32)
    hit = y[np.arange(400), np.argsort(-probs, axis=1)[:, 0]]
    resampled = resampled_metrics(y, probs >= cut, hit, weights)
    for i, d in enumerate(draws):
        expected = compute_metrics(y[d], probs[d], cut, labels)
        for metric in ("f1_micro", "f1_macro", "precision_at_1"):
            assert resampled[metric][i] == pytest.approx(expected[metric], abs=1e-6)
