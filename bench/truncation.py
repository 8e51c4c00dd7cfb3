"""Long abstracts: plain truncation (`head`), first + last half of the window (`head_tail`), and
chunking (`chunks-max`: the whole text in consecutive windows, each scored, scores max-pooled).

Scores the same validation abstracts with one bundle under each strategy (the served predictor,
with only its `truncation` switched; chunks through the same ONNX session), and prints
threshold-free metrics (ROC-AUC, mean average precision, precision@1) and micro/macro-F1 at the
bundle's global threshold, side by side, with the share of abstracts that do not fit the window
and the time each took. Validation, not test: this picks a setting.

    python bench/truncation.py --bundle deployment/models/arxiv --data data/arxiv --rows 2000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def chunk_windows(encoding, max_length: int) -> list[list[int]]:
    """The text's tokens between its special tokens, cut into consecutive windows that each get
    the special tokens again; a text that fits is one window."""
    ids, special = encoding.ids, encoding.special_tokens_mask
    if len(ids) <= max_length:
        return [list(ids)]
    lead = next(i for i, s in enumerate(special) if not s)
    trail = next(i for i, s in enumerate(reversed(special)) if not s)
    body, room = ids[lead:len(ids) - trail], max_length - lead - trail
    return [list(ids[:lead]) + body[i:i + room] + list(ids[len(ids) - trail:]) for i in range(0, len(body), room)]


def chunked_probabilities(predictor, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, int]:
    """Each window scored on its own, then the maximum per label over a text's windows; and the
    number of windows scored."""
    predictor.tokenizer.no_truncation()
    windows, owner = [], []
    for row, encoding in enumerate(predictor.tokenizer.encode_batch(texts)):
        for window in chunk_windows(encoding, predictor.max_length):
            windows.append(window)
            owner.append(row)
    order = np.argsort([len(w) for w in windows], kind="stable")
    probs = np.zeros((len(texts), len(predictor.labels)), dtype=np.float32)
    owner = np.array(owner)
    for start in range(0, len(windows), batch_size):
        idx = order[start:start + batch_size]
        scored = predictor.probabilities(predictor.logits_of_windows([windows[i] for i in idx]))
        np.maximum.at(probs, owner[idx], scored)
    return probs, len(windows)


def main() -> None:
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    from deployment.predictor import Predictor
    from deployment.truncation import STRATEGIES
    from papertasks.data import label_matrix, read_split
    from papertasks.evaluate import precision_at_k

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "deployment" / "models" / "arxiv"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--max-length", type=int, help="override the bundle's window")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()

    predictor = Predictor(args.bundle)
    if args.max_length:
        predictor.max_length = args.max_length
    valid = read_split(args.data, "valid")
    valid = valid.sample(min(args.rows, len(valid)), random_state=0)
    texts, y = valid["text"].tolist(), label_matrix(valid["labels"], predictor.labels)
    present = y.sum(axis=0) > 0
    predictor.tokenizer.no_padding()  # a tokenizer.json may pad every batch to its longest text
    predictor.tokenizer.no_truncation()
    lengths = np.array([len(e.ids) for e in predictor.tokenizer.encode_batch(texts)])
    results = {"bundle": args.bundle, "rows": len(texts), "max_length": predictor.max_length,
               "longer_than_window": float((lengths > predictor.max_length).mean()),
               "median_tokens": float(np.median(lengths)), "strategies": {}}
    for strategy in (*STRATEGIES, "chunks-max"):
        t0 = time.time()
        if strategy == "chunks-max":
            probs, results["chunk_windows"] = chunked_probabilities(predictor, texts)
        else:
            predictor.truncation = strategy
            probs = predictor.predict_proba(texts)
        pred = probs >= predictor.global_threshold
        results["strategies"][strategy] = {
            "roc_auc_macro": roc_auc_score(y[:, present], probs[:, present], average="macro"),
            "map_macro": average_precision_score(y[:, present], probs[:, present], average="macro"),
            "p_at_1": precision_at_k(y, probs, 1),
            "f1_micro": f1_score(y, pred, average="micro", zero_division=0),
            "f1_macro": f1_score(y[:, present], pred[:, present], average="macro", zero_division=0),
            "seconds": round(time.time() - t0, 1)}
    print(f"{len(texts)} validation abstracts; {100 * results['longer_than_window']:.0f}% longer than "
          f"{predictor.max_length} tokens (median {results['median_tokens']:.0f}); chunks-max scores "
          f"{results['chunk_windows']} windows")
    names = list(results["strategies"]["head"])
    print(f"{'strategy':<10}" + "".join(f"{n:>15}" for n in names))
    for strategy, row in results["strategies"].items():
        print(f"{strategy:<10}" + "".join(f"{row[n]:>15.4f}" for n in names))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
