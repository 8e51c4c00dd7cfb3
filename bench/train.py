"""Training-throughput benchmark: the fastai loop (papertasks.learner) vs a plain PyTorch loop, same
model, same batches, same optimizer settings, at 128 and 256 tokens, measured side by side in one run.

Only the training phase is timed (validation is excluded from both), so the ratio is what fastai's
callbacks, hooks and bookkeeping cost per step.

    python bench/train.py --data data/arxiv --batches 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fresh_model(base, labels, seed):
    import torch

    from papertasks.modeling import load_base

    torch.manual_seed(seed)
    return load_base(base, labels)


def fastai_seconds(hf_model, dls, lr) -> float:
    from fastai.callback.core import Callback

    from papertasks.learner import classifier_learner, make_loss

    class TrainTimer(Callback):
        def before_train(self):
            self.start = time.perf_counter()

        def after_train(self):
            self.seconds = time.perf_counter() - self.start

    timer = TrainTimer()
    learn = classifier_learner(hf_model, dls, path="/tmp", loss_func=make_loss(single_label=False))
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr, cbs=[timer])
    return timer.seconds


def plain_seconds(hf_model, dls, lr) -> float:
    import torch

    from papertasks.modeling import HFSequenceClassifier

    model = HFSequenceClassifier(hf_model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for input_ids, attention_mask, targets in dls.train:
        loss = loss_fn(model(input_ids, attention_mask), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main():
    import numpy as np
    import torch

    from papertasks.data import label_matrix, read_labels, read_split
    from papertasks.learner import tokenized_dataloaders
    from papertasks.paths import offline_base_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/arxiv")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--batches", type=int, default=8, help="training batches timed per loop and length")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args()

    labels = read_labels(args.data)
    train = read_split(args.data, "train").sample(args.batches * args.batch_size, random_state=0)
    texts, y = train["text"].tolist(), label_matrix(train["labels"], labels)
    base = args.base_model or offline_base_model()
    rows = []
    for max_length in args.lengths:
        tokenizer, _ = fresh_model(base, labels, 0)
        dls = tokenized_dataloaders(tokenizer, (texts, y), (texts[:args.batch_size], y[:args.batch_size]),
                                    max_length=max_length, batch_size=args.batch_size)
        dls.train.shuffle = False  # both loops see the same batches in the same order
        timings = {}
        # warm-up first (allocator, kernels), then plain / fastai / plain to bracket any drift
        for loop, run in (("warm-up", plain_seconds), ("plain", plain_seconds), ("fastai", fastai_seconds),
                          ("plain", plain_seconds)):
            torch.manual_seed(0)
            timings.setdefault(loop, []).append(run(fresh_model(base, labels, 0)[1], dls, 1e-4))
        n = args.batches * args.batch_size
        plain, fastai = np.mean(timings["plain"]), timings["fastai"][0]
        rows.append({"max_length": max_length, "abstracts": n, "plain_per_s": n / plain, "fastai_per_s": n / fastai,
                     "fastai_overhead_pct": 100 * (fastai / plain - 1)})
        print(f"measured {max_length} tokens", file=sys.stderr)
    print(f"{args.batches} batches of {args.batch_size} per loop, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    print("| tokens | plain PyTorch abstracts/s | fastai abstracts/s | fastai overhead |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['max_length']} | {r['plain_per_s']:.1f} | {r['fastai_per_s']:.1f} | {r['fastai_overhead_pct']:+.1f}% |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batches": args.batches, "batch_size": args.batch_size, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
