"""Imbalance options of `papertasks train`, measured on a linear probe over frozen MiniLM embeddings.

Fine-tuning the encoder five times is out of reach on a CPU, so each option is applied to a linear
head (torch nn.Linear, minibatch Adam, the same epochs and seed for all) over the cached sentence
embeddings of the embeddings baseline (`papertasks.embeddings`). The options go through exactly
the functions `train` uses: `make_loss` (BCE / cross-entropy, focal), `positive_weights`
(--pos-weight-clip) and `oversample_rows` (--oversample-to). Each head is then measured like the
fine-tuned model (`papertasks.evaluate`: thresholds tuned per label on valid, metrics on test),
plus macro-F1 over the rare labels (fewer than --oversample-to training examples; those in test),
the ones these options are for. A probe shows the direction and rough size of each option's effect, not what it
does to the fine-tuned model. The oversampled head takes more steps per epoch (shown).

    python bench/imbalance.py --data data/arxiv --max-train 20000
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from papertasks.baseline import split_embeddings
    from papertasks.data import label_matrix, read_labels, read_problem, read_split
    from papertasks.evaluate import evaluate_probs
    from papertasks.io import write_json
    from papertasks.kfold import sample_rows
    from papertasks.learner import make_loss, positive_weights
    from papertasks.refit import fit_linear_head, head_probabilities
    from papertasks.train import oversample_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder written by `papertasks prepare`")
    ap.add_argument("--max-train", type=int, default=None, help="seeded sample of the training rows (as train's)")
    ap.add_argument("--pos-weight-clip", type=float, default=10.0)
    ap.add_argument("--focal-gamma", type=float, default=2.0)
    ap.add_argument("--oversample-to", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--min-positives", type=int, default=10, help="as `papertasks evaluate --min-positives`")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "imbalance.json"))
    args = ap.parse_args()

    labels, problem = read_labels(args.data), read_problem(args.data)
    single_label = problem != "multi-label"
    full_train = read_split(args.data, "train")
    frames = {"train": sample_rows(full_train, args.max_train, args.seed),
              "valid": read_split(args.data, "valid"), "test": read_split(args.data, "test")}
    features = split_embeddings(args.data, frames, len(frames["train"]) < len(full_train), args.max_train,
                                args.seed, None)
    x, y = {}, {}
    start = 0
    for name, df in frames.items():
        x[name], y[name] = features[start:start + len(df)], label_matrix(df["labels"], labels)
        start += len(df)
    train_counts = y["train"].sum(axis=0)
    rare = [lab for lab, n in zip(labels, train_counts) if n < args.oversample_to]
    weights = positive_weights(y["train"], args.pos_weight_clip)
    oversampled = oversample_rows(y["train"], args.oversample_to, args.seed)
    variants = {  # name: (train options, loss, positive weights, training rows)
        "plain": ("", "bce", None, None),
        "pos-weight": (f"--pos-weight-clip {args.pos_weight_clip:g}", "bce", weights, None),
        "focal": (f"--loss focal --focal-gamma {args.focal_gamma:g}", "focal", None, None),
        "oversample": (f"--oversample-to {args.oversample_to}", "bce", None, oversampled),
        "pos-weight + focal": (f"--pos-weight-clip {args.pos_weight_clip:g} --loss focal", "focal", weights, None),
    }
    results = {"data": args.data, "problem": problem, "labels": len(labels),
               "rows": {name: len(df) for name, df in frames.items()}, "rows_oversampled": len(oversampled),
               "rare_labels": rare, "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
               "variants": {}}
    for name, (options, loss, w, rows) in variants.items():
        x_fit, y_fit = (x["train"], y["train"]) if rows is None else (x["train"][rows], y["train"][rows])
        t0 = time.time()
        head, steps = fit_linear_head(x_fit, y_fit, make_loss(single_label, loss, args.focal_gamma, w), single_label,
                                      args.epochs, args.lr, args.batch_size, args.seed)
        weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
        report = evaluate_probs(name, labels, y["valid"], head_probabilities(weight, bias, x["valid"], single_label),
                                y["test"], head_probabilities(weight, bias, x["test"], single_label),
                                args.min_positives, problem)
        test = report["test"]
        keys = ("accuracy", "f1_macro", "f1_weighted", "roc_auc") if single_label else \
            ("f1_micro", "f1_macro", "precision_at_1", "roc_auc_macro")
        metrics = {k: test[k] for k in keys}
        rare_f1 = [test["per_label"][lab]["f1"] for lab in rare if test["per_label"][lab]["support"]]
        metrics["f1_macro_rare"] = float(np.mean(rare_f1)) if rare_f1 else None
        results["variants"][name] = {"train_options": options, "steps": steps, "seconds": round(time.time() - t0, 1),
                                     "metrics": metrics}

    print(f"{problem}, {len(labels)} labels ({len(rare)} with fewer than {args.oversample_to} training examples); "
          f"linear probe on frozen embeddings, train/valid/test {'/'.join(str(n) for n in results['rows'].values())}")
    names = list(next(iter(results["variants"].values()))["metrics"]) + ["steps"]
    print(f"{'variant':<20}" + "".join(f"{n:>16}" for n in names))
    for name, row in results["variants"].items():
        cells = [row["metrics"][n] for n in names[:-1]] + [row["steps"]]
        print(f"{name:<20}" + "".join(f"{'n/a':>16}" if v is None else f"{v:>16.4f}" if isinstance(v, float)
                                     else f"{v:>16}" for v in cells))
    write_json(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
