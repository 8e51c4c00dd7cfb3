"""What the bag of n-grams adds to serving: a hybrid bundle against its encoder alone (the same
bundle with the bag left out, or the encoder-only bundle it was made from), through the one
predictor (`predict_proba`, as the app, the API and `predict` call it), on the same validation
texts, the two timed in alternation so both see the same machine.

    python bench/hybrid_cost.py --hybrid deployment/models/pwc --data data/pwc --texts 512 \\
        --out bench/results/hybrid_cost_pwc.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployment.predictor import Predictor  # noqa: E402
from papertasks.data import read_split  # noqa: E402
from papertasks.io import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None,
                        help="the encoder-only bundle the hybrid was made from (default: the hybrid without its bag)")
    parser.add_argument("--hybrid", required=True, help="the hybrid bundle made from it")
    parser.add_argument("--data", required=True, help="prepared data: texts from its validation split")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds of each bundle")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()

    valid = read_split(args.data, "valid")
    texts = valid["text"].sample(min(args.texts, len(valid)), random_state=0).tolist()
    hybrid = Predictor(args.hybrid)
    if hybrid.bag is None:
        raise SystemExit(f"{args.hybrid} is not a hybrid bundle (no bag in its config)")
    encoder = Predictor(args.encoder) if args.encoder else Predictor(args.hybrid).encoder_only()
    bundles = {"encoder": encoder, "hybrid": hybrid}
    seconds = {name: [] for name in bundles}
    for name, predictor in bundles.items():
        predictor.predict_proba(texts[:args.batch_size], batch_size=args.batch_size)  # warm-up
    for _ in range(args.rounds):
        for name, predictor in bundles.items():
            start = time.perf_counter()
            predictor.predict_proba(texts, batch_size=args.batch_size)
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(s) for name, s in seconds.items()}
    bag_start = time.perf_counter()
    bundles["hybrid"].bag_probabilities(texts)
    result = {"texts": len(texts), "batch_size": args.batch_size, "rounds": args.rounds,
              "texts_per_s": {name: round(len(texts) / s, 1) for name, s in best.items()},
              "bag_alone_texts_per_s": round(len(texts) / (time.perf_counter() - bag_start), 1),
              "hybrid_cost_over_encoder": round(best["hybrid"] / best["encoder"] - 1, 4), "seconds": seconds}
    print(f"{len(texts)} texts, batch {args.batch_size}, best of {args.rounds}: encoder "
          f"{result['texts_per_s']['encoder']} texts/s, hybrid {result['texts_per_s']['hybrid']} texts/s "
          f"(+{100 * result['hybrid_cost_over_encoder']:.1f}%); the bag alone {result['bag_alone_texts_per_s']} texts/s")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
