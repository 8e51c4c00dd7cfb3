"""How far threshold rules can go with a model's scores, time shift left out: thresholds tuned on one
half of a report's test papers and scored on the other half (3 random splits, both ways), for the
rules `evaluate` chooses among (per-label thresholds shrunk toward the global one, a relative cut)
and for per-label thresholds fitted directly to micro-F1 + lambda x macro-F1 by coordinate ascent.

If no rule tuned on papers of the test months themselves keeps micro-F1 near the global threshold's
and macro-F1 near per-label thresholds', no rule tuned on validation papers will: the scores, not the
rule, set the trade-off.

    python bench/threshold_limits.py --report reports/arxiv_hybrid --out bench/results/threshold_limits_arxiv.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployment.predictor import tuned_decisions  # noqa: E402
from papertasks.evaluate import (RELATIVE_GRID, SHRINK_GRID, THRESHOLD_GRID, _f1, _micro_macro,  # noqa: E402
                                 _own_thresholds, counts_at_thresholds, shrunk_cut)
from papertasks.io import write_json  # noqa: E402
from papertasks.test_scores import read_test_scores  # noqa: E402

LAMBDAS = (0.1, 0.2, 0.3, 0.5, 1.0)
SPLITS = 3
SLACK = 0.005  # the 0.5 point, on both metrics


def ascend_thresholds(y: np.ndarray, probs: np.ndarray, lam: float, start: float, rounds: int = 3) -> np.ndarray:
    """Per-label thresholds of THRESHOLD_GRID maximizing micro-F1 + lam x macro-F1 (over the labels
    present in `y`) one label at a time, from `start` for all: each step can only raise the objective."""
    tp, denominator = counts_at_thresholds(y, probs)  # (grid, labels)
    present = y.sum(axis=0) > 0
    n_present = max(int(present.sum()), 1)
    chosen = np.full(y.shape[1], int(np.abs(THRESHOLD_GRID - start).argmin()))
    columns = np.arange(y.shape[1])
    for _ in range(rounds):
        for j in columns:
            others = columns != j
            tp_rest, den_rest = tp[chosen[others], columns[others]], denominator[chosen[others], columns[others]]
            macro = (_f1(tp_rest, den_rest)[present[others]].sum() + present[j] * _f1(tp[:, j], denominator[:, j])) / n_present
            micro = _f1(tp_rest.sum() + tp[:, j], den_rest.sum() + denominator[:, j])
            chosen[j] = int(np.argmax(micro + lam * macro))
    return THRESHOLD_GRID[chosen]


def rules(y: np.ndarray, probs: np.ndarray, min_positives: int) -> dict[str, tuple[np.ndarray, float]]:
    """Every rule's per-label cut and relative cut, tuned on these papers."""
    global_t, _, own = _own_thresholds(y, probs, min_positives)
    out = {"global threshold": (np.full(y.shape[1], global_t), 0.0)}
    for shrink in SHRINK_GRID[:-1]:
        cut = shrunk_cut(global_t, own, y.sum(axis=0), shrink)
        for r in RELATIVE_GRID:
            out[f"per-label, shrink {shrink}, relative cut {r}"] = (cut, r)
    for lam in LAMBDAS:
        out[f"coordinate ascent on micro-F1 + {lam} x macro-F1"] = (ascend_thresholds(y, probs, lam, global_t), 0.0)
    return out


def held_out(y: np.ndarray, probs: np.ndarray, min_positives: int, splits: int = SPLITS) -> dict[str, list[float]]:
    """Mean held-out (micro-F1, macro-F1) of each rule over `splits` random halvings, both ways."""
    scores: dict[str, np.ndarray] = {}
    for seed in range(splits):
        halves = np.array_split(np.random.default_rng(seed).permutation(len(y)), 2)
        for tune, score in (halves, halves[::-1]):
            for name, (cut, relative) in rules(y[tune], probs[tune], min_positives // 2).items():
                scores[name] = scores.get(name, 0) + np.array(_micro_macro(y[score], tuned_decisions(probs[score], cut, relative)))
    return {name: [round(float(v), 4) for v in total / (2 * splits)] for name, total in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="a report folder of `evaluate` or `baseline` (its test_scores.npz)")
    parser.add_argument("--min-positives", type=int, default=10, help="as `evaluate --min-positives`")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()

    scores = read_test_scores(args.report)
    if scores is None:
        raise SystemExit(f"{args.report} has no test_scores.npz; evaluate the model again to keep its scores")
    table = held_out(scores["y"], scores["probs"], args.min_positives)
    micro_floor = table["global threshold"][0] - SLACK
    macro_floor = table["per-label, shrink 0, relative cut 0.0"][1] - SLACK
    meeting = [name for name, (micro, macro) in table.items() if micro >= micro_floor and macro >= macro_floor]
    within_micro = [name for name in table if table[name][0] >= micro_floor]
    best = max(within_micro, key=lambda name: table[name][1])
    for name, (micro, macro) in table.items():
        print(f"{micro:.4f}  {macro:.4f}  {name}")
    print(f"needed: micro-F1 >= {micro_floor:.4f} and macro-F1 >= {macro_floor:.4f}; "
          f"best macro-F1 within the micro-F1 bound: {table[best][1]:.4f} ({best}); rules meeting both: {len(meeting)}")
    if args.out:
        write_json(args.out, {"report": args.report, "test_rows": len(scores["y"]), "splits": SPLITS,
                              "micro_macro_held_out": table, "micro_f1_floor": round(micro_floor, 4),
                              "macro_f1_floor": round(macro_floor, 4), "best_within_micro": best,
                              "meeting_both": meeting})


if __name__ == "__main__":
    main()
