"""`papertasks refit-head` with each imbalance option, side by side on validation, to choose one.

Every variant refits the last layer of the same trained model on the same cached features (the first
run computes them: one forward pass over the training rows), then scores the old and the new head on
the validation split with thresholds tuned on it, as `refit-head` logs them. Validation, not test,
picks the variant; the chosen model then goes through `export` and `evaluate` like any other.

    python bench/refit_head.py --model models/arxiv --data data/arxiv --out bench/results/refit_head_arxiv.json
    python bench/refit_head.py --model models/pwc --data data/pwc --oversample-to 100 \
        --out bench/results/refit_head_pwc.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def variants(oversample_to: int) -> dict[str, dict]:
    """name: refit-head options (positive weights are class weights for single-label data)."""
    return {"plain loss": dict(pos_weight_clip=0.0),
            "positive weights, clip 3": dict(pos_weight_clip=3.0),
            "positive weights, clip 10": dict(pos_weight_clip=10.0),
            "focal loss": dict(pos_weight_clip=0.0, loss="focal"),
            "positive weights 10 + focal": dict(pos_weight_clip=10.0, loss="focal"),
            f"oversampling to {oversample_to}": dict(pos_weight_clip=0.0, oversample_to=oversample_to)}


def main() -> None:
    from papertasks.io import read_json, write_json
    from papertasks.refit import RefitConfig, refit_head

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="folder written by `papertasks train`")
    ap.add_argument("--data", required=True, help="the `prepare` folder it was trained on")
    ap.add_argument("--oversample-to", type=int, default=500, help="the oversampling variant's target")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "refit_head.json"))
    args = ap.parse_args()

    results = {"model": args.model, "data": args.data, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        for i, (name, options) in enumerate(variants(args.oversample_to).items()):
            out = refit_head(RefitConfig(model=args.model, data=args.data, out=f"{tmp}/{i}", **options))
            refit = read_json(out / "training_config.json")["head_refit"]
            if i == 0:
                results["variants"]["fine-tuned head (as trained)"] = {"options": None,
                                                                       "valid": refit["valid"]["fine-tuned head"]}
            results["variants"][name] = {"options": options, "valid": refit["valid"]["refitted head"],
                                         "train_rows": refit["train_rows"], "seconds": refit["seconds"]}
    metrics = list(next(iter(results["variants"].values()))["valid"])
    print(f"validation ({args.data}), thresholds tuned on it")
    print(f"{'head':<32}" + "".join(f"{m:>16}" for m in metrics))
    for name, row in results["variants"].items():
        print(f"{name:<32}" + "".join(f"{row['valid'][m]:>16.4f}" for m in metrics))
    write_json(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
