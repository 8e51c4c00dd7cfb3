"""k-fold cross-validation over a prepared data folder's train + valid rows: how much a model's
numbers move with the rows it is trained and measured on, which one test split cannot say.

Any model fits in through one callback, `fit_predict(train_df, heldout_df) -> probs`: the frames
are rows of `pooled_rows` (columns id, text, labels; index 0..n-1 in pooled order, so a callback
may look precomputed features up by it) and `probs` has one column per label, in labels.json order.

Folds are stratified: iterative stratification (MultilabelStratifiedKFold) for multi-label data,
StratifiedKFold for single-label. The test split is never touched. Nothing is tuned per fold:
multi-label F1 is at a fixed 0.5 threshold (so it reads below `evaluate`'s tuned F1; P@k and
ROC-AUC need no threshold), single-label predicts the top class.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from papertasks.data import label_matrix, read_labels, read_problem, read_split
from papertasks.errors import UserError
from papertasks.evaluate import compute_metrics, single_label_metrics
from papertasks.io import write_json, write_text

log = logging.getLogger(__name__)

FitPredict = Callable[[pd.DataFrame, pd.DataFrame], np.ndarray]
FIXED_THRESHOLD = 0.5


def sample_rows(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows, a seeded sample (as `train --max-train` draws), index reset."""
    if max_rows and len(df) > max_rows:
        df = df.sample(max_rows, random_state=seed)
    return df.reset_index(drop=True)


def pooled_rows(data_dir, max_train: int | None = None, seed: int = 42) -> pd.DataFrame:
    """The training rows (or a sample of them), then the validation rows; index 0..n-1."""
    train = sample_rows(read_split(data_dir, "train"), max_train, seed)
    return pd.concat([train, read_split(data_dir, "valid")], ignore_index=True)


def fold_splits(y: np.ndarray, k: int, single_label: bool, labels: list[str], seed: int = 42):
    """k (fit rows, held-out rows) index pairs. Labels with fewer than k examples cannot be in every
    fold: they are reported, and the split goes on (plain KFold if no class reaches k)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    from sklearn.model_selection import KFold, StratifiedKFold

    if k < 2:
        raise UserError(f"--folds {k}: cross-validation needs at least 2 folds (0 turns it off)")
    if k > len(y):
        raise UserError(f"--folds {k}: only {len(y)} train + valid rows")
    counts = y.sum(axis=0)
    rare = [lab for lab, n in zip(labels, counts) if 0 < n < k]
    if rare:
        log.warning("%d labels have fewer than %d examples (%s%s): some folds hold none of them out or train "
                    "on none of them, so their per-fold scores are noisy", len(rare), k, ", ".join(rare[:5]),
                    ", ..." if len(rare) > 5 else "")
    x = np.zeros(len(y))
    if not single_label:
        return list(MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y))
    if counts.max() < k:
        log.warning("no class has %d examples: folds are not stratified", k)
        return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(x))
    with warnings.catch_warnings():  # sklearn's "least populated class" warning says what the log said
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y.argmax(axis=1)))


def fold_scores(y: np.ndarray, probs: np.ndarray, labels: list[str], problem: str) -> dict:
    """The scalar metrics `evaluate` reports for the problem, with no threshold tuned."""
    if problem == "multi-label":
        metrics = compute_metrics(y, probs, np.full(len(labels), FIXED_THRESHOLD), labels)
    else:
        metrics = single_label_metrics(y, probs, labels)
    return {k: v for k, v in metrics.items() if isinstance(v, float) or v is None}


def cross_validate(data_dir, fit_predict: FitPredict, k: int, name: str, max_train: int | None = None,
                   seed: int = 42, out=None) -> dict:
    """Fit and score one model per fold; mean and standard deviation (ddof=1) of each metric over
    the folds. Written to `out`/cv.json and cv.md when `out` is given."""
    from tqdm.auto import tqdm

    labels, problem = read_labels(data_dir), read_problem(data_dir)
    rows = pooled_rows(data_dir, max_train, seed)
    y = label_matrix(rows["labels"], labels)
    per_fold = []
    splits = fold_splits(y, k, problem != "multi-label", labels, seed)
    for fold, (fit_idx, held_idx) in enumerate(tqdm(splits, desc=f"{k}-fold CV", unit="fold"), start=1):
        probs = fit_predict(rows.iloc[fit_idx], rows.iloc[held_idx])
        scores = fold_scores(y[held_idx], probs, labels, problem)
        per_fold.append({"fold": fold, "fit_rows": len(fit_idx), "heldout_rows": len(held_idx), "metrics": scores})
        log.info("fold %d/%d: %s", fold, k, ", ".join(f"{m} {v:.3f}" for m, v in scores.items() if v is not None))
    names = list(per_fold[0]["metrics"])
    values = {m: [f["metrics"][m] for f in per_fold if f["metrics"][m] is not None] for m in names}
    result = {
        "model": name, "problem": problem, "folds": k, "rows": len(rows), "seed": seed, "max_train": max_train,
        "decision": f"threshold {FIXED_THRESHOLD}, not tuned" if problem == "multi-label" else "top class",
        "mean": {m: float(np.mean(v)) if v else None for m, v in values.items()},
        "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in values.items()},
        "per_fold": per_fold,
    }
    if out is not None:
        write_json(Path(out) / "cv.json", result)
        write_text(Path(out) / "cv.md", render_cv(result))
        log.info("%d-fold CV of %s written to %s", k, name, out)
    return result


def render_cv(result: dict) -> str:
    fmt = lambda v: f"{v:.3f}" if v is not None else "n/a"  # noqa: E731
    folds = result["per_fold"]
    lines = [f"# {result['folds']}-fold cross-validation: {result['model']}", "",
             f"{result['problem']}; {result['rows']} train + valid rows in {result['folds']} stratified folds "
             f"(seed {result['seed']}); the test split is not used. Decision: {result['decision']}. "
             "Standard deviation over folds (ddof=1).", "",
             "| metric | mean | std | " + " | ".join(f"fold {f['fold']}" for f in folds) + " |",
             "|---|---:|---:|" + "---:|" * len(folds)]
    lines += [f"| {m} | {fmt(mean)} | {fmt(result['std'][m])} | "
              + " | ".join(fmt(f["metrics"][m]) for f in folds) + " |" for m, mean in result["mean"].items()]
    return "\n".join(lines) + "\n"
