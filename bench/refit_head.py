"""`papertasks refit-head` with each imbalance option, side by side on validation, to choose one.

Every variant refits the last layer of the same trained model on the same cached features (the first
run computes them: one forward pass over the training rows), then scores the old and the new head on
the validation split with thresholds tuned on it, as `refit-head` logs them. Validation, not test,
picks the variant; the chosen model then goes through `export` and `evaluate` like any other.

    python bench/refit_head.py --model models/arxiv --data data/arxiv --oversample-to 500 1000 --epochs 30 120 \
        --out bench/results/refit_head_arxiv.json
    python bench/refit_head.py --model models/arxiv --data data/arxiv --epochs 120 480 \
        --only "plain loss" "oversampling to 500" --out bench/results/refit_head_arxiv_passes.json
    python bench/refit_head.py --model models/pwc --data data/pwc --oversample-to 100 --epochs 30 \
        --out bench/results/refit_head_pwc.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from papertasks.io import read_json, write_json  # noqa: E402
from papertasks.refit import RefitConfig, refit_head  # noqa: E402


def variants(oversample_to: list[int], epochs: int) -> dict[str, dict]:
    """name: refit-head options (positive weights are class weights for single-label data)."""
    options = {"plain loss": dict(pos_weight_clip=0.0),
               "positive weights, clip 3": dict(pos_weight_clip=3.0),
               "positive weights, clip 10": dict(pos_weight_clip=10.0),
               "focal loss": dict(pos_weight_clip=0.0, loss="focal"),
               "positive weights 10 + focal": dict(pos_weight_clip=10.0, loss="focal")}
    options |= {f"oversampling to {n}": dict(pos_weight_clip=0.0, oversample_to=n) for n in oversample_to}
    return {f"{name}, {epochs} epochs": {**o, "epochs": epochs} for name, o in options.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="folder written by `papertasks train`")
    ap.add_argument("--data", required=True, help="the `prepare` folder it was trained on")
    ap.add_argument("--oversample-to", type=int, nargs="+", default=[500], help="the oversampling variants' targets")
    ap.add_argument("--epochs", type=int, nargs="+", default=[RefitConfig.epochs],
                    help="passes over the features; every variant is run with each")
    ap.add_argument("--only", nargs="+", metavar="TEXT",
                    help="run only the variants whose name contains one of these (e.g. 'oversampling to 500')")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "refit_head.json"))
    args = ap.parse_args()
    runs = {name: options for epochs in args.epochs for name, options in variants(args.oversample_to, epochs).items()
            if not args.only or any(text in name for text in args.only)}
    if not runs:
        sys.exit(f"no variant's name contains any of {args.only}; names: {list(variants(args.oversample_to, 1))}")

    results = {"model": args.model, "data": args.data, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        for i, (name, options) in enumerate(runs.items()):
            out = refit_head(RefitConfig(model=args.model, data=args.data, out=f"{tmp}/{i}", **options))
            refit = read_json(out / "training_config.json")["head_refit"]
            if i == 0:
                results["variants"]["fine-tuned head (as trained)"] = {"options": None,
                                                                       "valid": refit["valid"]["fine-tuned head"]}
            results["variants"][name] = {"options": options, "valid": refit["valid"]["refitted head"],
                                         "train_rows": refit["train_rows"], "seconds": refit["seconds"]}
    metrics = list(next(iter(results["variants"].values()))["valid"])
    print(f"validation ({args.data}), thresholds tuned on it")
    print(f"{'head':<44}" + "".join(f"{m:>16}" for m in metrics))
    for name, row in results["variants"].items():
        print(f"{name:<44}" + "".join(f"{row['valid'][m]:>16.4f}" for m in metrics))
    write_json(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
