"""Is a lead on the test split real, or the luck of which papers are in it? A paired bootstrap.

`evaluate` and `baseline` keep each report's test scores (test_scores.npz: probabilities, true labels,
label order). Two reports of one split are resampled together: the same papers, drawn with
replacement, for both models, so what the two get right or wrong on the same paper cancels out.
Thresholds stay as tuned on validation; the interval says how much the lead would move with another
sample of test papers of the same kind, not with another validation set or another training run.
"""
from __future__ import annotations

import numpy as np

from papertasks.errors import UserError
from papertasks.evaluate import tuned_predictions

CHUNK = 200  # resamples per matrix product: 200 x n test papers of float32


def predictions(report: dict, scores: dict, setting: str) -> tuple[np.ndarray, np.ndarray]:
    """What the report's model predicts for each test paper under `setting` (a key of the report): the
    top class (single-label), or every label over its threshold (per-label or global); and whether
    its best-scored label is true, picked as `evaluate` picks it (argmax, or precision_at_k's sort)."""
    probs, labels, y = scores["probs"], scores["labels"], scores["y"]
    if report.get("problem", "multi-label") != "multi-label":
        top = probs.argmax(axis=1)
        return np.eye(len(labels), dtype=bool)[top], y[np.arange(len(y)), top]
    thresholds = report["thresholds"]
    pred = tuned_predictions(thresholds, labels, probs) if setting == "test" else probs >= thresholds["global"]
    return pred, y[np.arange(len(y)), np.argsort(-probs, axis=1)[:, 0]]


def resampled_metrics(y: np.ndarray, pred: np.ndarray, top1_hit: np.ndarray, weights: np.ndarray) -> dict:
    """Each metric of the lead tables for each row of `weights` (how often each test paper was drawn).
    With all weights 1 these are the report's own numbers (sklearn's F1 = 2TP / (2TP + FP + FN));
    macro averages run over the labels present in that resample, as `evaluate` does over the test set."""
    y, pred = y.astype(np.float32), pred.astype(np.float32)
    tp, fp, fn = weights @ (y * pred), weights @ ((1 - y) * pred), weights @ (y * (1 - pred))
    support, n = weights @ y, weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        micro = 2 * tp.sum(1) / np.maximum(2 * tp.sum(1) + fp.sum(1) + fn.sum(1), 1e-12)
    present = support > 0
    top1 = weights @ top1_hit.astype(np.float32) / n  # precision@1 (multi-label) is accuracy (single-label)
    return {"f1_micro": micro,
            "f1_macro": (f1 * present).sum(1) / present.sum(1),
            "f1_weighted": (f1 * support).sum(1) / support.sum(1),
            "precision_at_1": top1,
            "accuracy": top1}


def paired_bootstrap(first: tuple[dict, dict], other: tuple[dict, dict], setting: str, metrics: tuple[str, ...],
                     resamples: int, seed: int) -> dict:
    """95% interval of first - other for each metric, and the share of resamples in which first leads.
    Each argument is (report, test scores)."""
    (report_a, scores_a), (report_b, scores_b) = first, other
    if scores_a["labels"] != scores_b["labels"] or not np.array_equal(scores_a["y"], scores_b["y"]):
        raise UserError("the two reports' test scores are not for the same papers and labels; "
                        "rerun evaluate / baseline on one prepared split")
    y = scores_a["y"]
    predicted = [predictions(report_a, scores_a, setting), predictions(report_b, scores_b, setting)]
    rng = np.random.default_rng(seed)
    diffs = {m: [] for m in metrics}
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        weights = np.stack([np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y))
                            for _ in range(size)]).astype(np.float32)
        a, b = (resampled_metrics(y, pred, hit, weights) for pred, hit in predicted)
        for m in metrics:
            diffs[m].append(a[m] - b[m])
    out = {}
    for m in metrics:
        d = np.concatenate(diffs[m])
        low, high = np.percentile(d, [2.5, 97.5])
        out[m] = {"low": float(low), "high": float(high), "first_leads": float((d > 0).mean())}
    return out


def full_sample_metrics(report: dict, scores: dict, setting: str) -> dict:
    """The metrics with every test paper drawn once: must equal the report's (a check on this module)."""
    pred, hit = predictions(report, scores, setting)
    ones = np.ones((1, len(pred)), np.float32)
    return {m: float(v[0]) for m, v in resampled_metrics(scores["y"], pred, hit, ones).items()}
