"""How much of a time-split score is the amount of training data, how much its age, and how much the
test months' own labels allow: the TF-IDF baseline trained on different rows, scored the same way.

Variants (TF-IDF + logistic regression, `papertasks baseline`'s model, `papertasks evaluate`'s
thresholds and metrics; test = the prepared test split):
- all training rows (what `papertasks baseline` reports);
- N training rows drawn at random, and the latest N by date: the same amount, older vs newer;
- all training rows with the latest N counted twice: weighting recent papers up;
- N rows of the test months themselves, k-fold (each test paper scored by a model trained on the
  other folds; thresholds tuned on these out-of-fold scores, so optimistic): what a model that
  knew the test months' label habits would get from the same amount of data.

    python bench/time_shift.py --data data/arxiv --out bench/results/time_shift_arxiv.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from papertasks.baseline import tfidf_model  # noqa: E402
from papertasks.data import label_matrix, read_labels, read_problem, read_split  # noqa: E402
from papertasks.errors import UserError  # noqa: E402
from papertasks.evaluate import evaluate_probs  # noqa: E402
from papertasks.io import write_json  # noqa: E402
from bench.split_metrics import print_table, summary  # noqa: E402


def run(data: str, rows: int, folds: int, seed: int) -> dict:
    labels = read_labels(data)
    if read_problem(data) != "multi-label":
        raise UserError(f"{data}: this bench is for multi-label data")
    train, valid, test = (read_split(data, name) for name in ("train", "valid", "test"))
    if "date" not in train.columns:
        raise UserError(f"{data}: rows have no date; prepare it with --split-by DATE_FIELD --test-from DATE")
    rows = min(rows, len(train), len(test) * (folds - 1) // folds)
    fit_predict = tfidf_model(labels, single_label=False)
    y_valid, y_test = label_matrix(valid["labels"], labels), label_matrix(test["labels"], labels)

    heldout = pd.concat([valid, test], ignore_index=True)

    def scored_on_split(name: str, train_rows: pd.DataFrame) -> dict:
        probs = fit_predict(train_rows.reset_index(drop=True), heldout)
        report = evaluate_probs(name, labels, y_valid, probs[:len(valid)], y_test, probs[len(valid):], 10, "multi-label")
        print(f"{name}: {summary(report)}", flush=True)
        return {"train_rows": len(train_rows), **summary(report)}

    by_date = train.sort_values("date", kind="stable")
    results = {
        "all training rows": scored_on_split("all training rows", train),
        f"random {rows} training rows": scored_on_split(f"random {rows} training rows", train.sample(rows, random_state=seed)),
        f"latest {rows} training rows": scored_on_split(f"latest {rows} training rows", by_date.iloc[-rows:]),
    }
    results[f"latest {rows} training rows"]["from_date"] = str(by_date["date"].iloc[-rows])
    name = f"all training rows, the latest {rows} twice"
    results[name] = scored_on_split(name, pd.concat([by_date, by_date.iloc[-rows:]]))

    from sklearn.model_selection import KFold

    out_of_fold = np.zeros(y_test.shape)
    for fit_rows, held in KFold(folds, shuffle=True, random_state=seed).split(test):
        fit_rows = np.random.default_rng(seed).permutation(fit_rows)[:rows]
        out_of_fold[held] = fit_predict(test.iloc[fit_rows].reset_index(drop=True), test.iloc[held].reset_index(drop=True))
    name = f"{rows} rows of the test months, {folds}-fold"
    report = evaluate_probs(name, labels, y_test, out_of_fold, y_test, out_of_fold, 10, "multi-label")
    print(f"{name}: {summary(report)}", flush=True)
    results[name] = {"train_rows": rows, **summary(report)}
    return {"data": data, "test_rows": len(test), "labels": len(labels), "variants": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a `prepare` folder with a time split (--split-by)")
    ap.add_argument("--rows", type=int, default=10_000, help="N: training rows of the random, latest and test-month variants")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "time_shift.json"))
    args = ap.parse_args()
    try:
        results = run(args.data, args.rows, args.folds, args.seed)
    except UserError as e:
        sys.exit(f"time_shift: {e}")
    print(f"\ntest: {results['test_rows']} rows, {results['labels']} labels (TF-IDF + logistic regression)")
    print_table("trained on", results["variants"], extra="train_rows")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
