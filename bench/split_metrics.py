"""The headline metrics of an `evaluate` report, kept and printed the same way by the benches that
score several models on one split (time_shift.py, int8_compute.py; ensemble.py uses METRICS)."""
from __future__ import annotations

METRICS = ("f1_micro", "f1_macro", "precision_at_1", "roc_auc_macro")
HEADER = "micro-F1 | macro-F1 | P@1 | ROC-AUC macro | micro-F1 (global) | macro-F1 (global) |"


def summary(report: dict) -> dict:
    """Test metrics with per-label thresholds, and F1 with the global one."""
    return {"per-label thresholds": {m: report["test"][m] for m in METRICS},
            "global threshold": {m: report["test_global_threshold"][m] for m in METRICS[:2]}}


def print_table(first: str, rows: dict[str, dict], extra: str | None = None) -> None:
    """A markdown table: one row per summary, after an optional `extra` column (a key of the row)."""
    print(f"| {first} |" + (f" {extra} |" if extra else "") + f" {HEADER}")
    print("|---|" + "---:|" * (6 + bool(extra)))
    for name, row in rows.items():
        p, g = row["per-label thresholds"], row["global threshold"]
        print(f"| {name} |" + (f" {row[extra]} |" if extra else "") +
              f" {p['f1_micro']:.3f} | {p['f1_macro']:.3f} | {p['precision_at_1']:.3f} | {p['roc_auc_macro']:.3f} | "
              f"{g['f1_micro']:.3f} | {g['f1_macro']:.3f} |")
