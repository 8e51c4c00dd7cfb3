"""Would mixing TF-IDF into the shipped model pay? Probabilities averaged, p = w * bundle + (1 - w) * TF-IDF.

Scores validation and test once with the bundle (the served predictor) and once with the TF-IDF
baseline (`papertasks baseline`'s model, fitted on train), then for each weight tunes thresholds on
validation and measures test exactly as `evaluate` does. The weight to use is the one validation
picks; the test columns show what it would have bought. A probe for the next model, not a served path:

    python bench/ensemble.py --bundle deployment/models/arxiv --data data/arxiv --out bench/results/ensemble_arxiv.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployment.predictor import BundleError, Predictor  # noqa: E402
from papertasks.baseline import tfidf_model  # noqa: E402
from papertasks.data import label_matrix, read_split  # noqa: E402
from papertasks.errors import UserError  # noqa: E402
from papertasks.evaluate import evaluate_probs, score_texts  # noqa: E402
from papertasks.io import write_json  # noqa: E402
from bench.split_metrics import METRICS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="a multi-label bundle (model.onnx + labels)")
    ap.add_argument("--data", required=True, help="the `prepare` folder it was trained on")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25, 0.0],
                    help="bundle weights to try (1: the bundle alone, 0: TF-IDF alone)")
    ap.add_argument("--min-positives", type=int, default=10, help="as evaluate's")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ensemble.json"))
    args = ap.parse_args()

    try:
        predictor = Predictor(args.bundle)
        train, valid, test = (read_split(args.data, s) for s in ("train", "valid", "test"))
    except (BundleError, UserError) as e:
        sys.exit(f"ensemble: {e}")
    if predictor.single_label:
        sys.exit(f"ensemble: {args.bundle} is single-label; this probe mixes per-label sigmoid scores")
    labels = predictor.labels
    y_valid, y_test = label_matrix(valid["labels"], labels), label_matrix(test["labels"], labels)
    bundle_probs = np.concatenate([score_texts(predictor, df["text"].tolist(), 32, split)
                                   for split, df in (("valid", valid), ("test", test))])
    tfidf_probs = tfidf_model(labels, single_label=False)(train, pd.concat([valid, test], ignore_index=True))

    n = len(valid)
    results = {"bundle": args.bundle, "data": args.data, "weights": {}}
    print(f"{'bundle weight':<14}{'thresholds':<12}" + "".join(f"{'valid ' + m:>22}{'test ' + m:>20}" for m in METRICS))
    for w in args.weights:
        probs = w * bundle_probs + (1 - w) * tfidf_probs
        valid_report = evaluate_probs("ensemble", labels, y_valid, probs[:n], y_valid, probs[:n], args.min_positives)
        test_report = evaluate_probs("ensemble", labels, y_valid, probs[:n], y_test, probs[n:], args.min_positives)
        row = {kind: {"valid": {m: valid_report[key][m] for m in METRICS}, "test": {m: test_report[key][m] for m in METRICS}}
               for kind, key in (("per-label", "test"), ("global", "test_global_threshold"))}
        results["weights"][str(w)] = row
        for kind, r in row.items():
            print(f"{w:<14}{kind:<12}" + "".join(f"{r['valid'][m]:>22.4f}{r['test'][m]:>20.4f}" for m in METRICS))
    write_json(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
