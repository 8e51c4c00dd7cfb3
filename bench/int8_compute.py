"""What int8 arithmetic costs on this CPU: the served int8 bundle against the same int8 weights computed in fp32.

Dynamic int8 has two sources of error: weights rounded to 8 bits (the same on every CPU) and the
arithmetic: activations quantized to u8 per text and multiplied with s8 weights by onnxruntime's
kernels, which differ between CPUs (on x86 without VNNI the u8 x s8 products can overflow; see
`export --reduce-range`). The fp32 ONNX stays beside the trained model, not in the bundle, so this
bench rebuilds float arithmetic from the bundle itself (`export.onnx_export.dequantized_graph`): each
MatMulInteger becomes a float MatMul over the same dequantized weights. Both graphs are scored exactly as `evaluate` scores a bundle
(thresholds tuned on validation, metrics on test); their gap is the arithmetic's share on this CPU.
A third graph quantizes the float one again with 7-bit weights (`reduce_range`, what
`export --reduce-range` does from the true fp32 model): whether that arithmetic tracks fp32 better.

    python bench/int8_compute.py --bundle deployment/models/arxiv --data data/arxiv --out bench/results/int8_compute_arxiv.json
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployment.predictor import BundleError, Predictor  # noqa: E402
from export.bundle import copy_bundle_files  # noqa: E402
from export.onnx_export import dequantized_graph, quantize_int8  # noqa: E402
from papertasks.errors import UserError  # noqa: E402
from papertasks.evaluate import evaluate_probs, load_eval_data, score_texts  # noqa: E402
from papertasks.io import write_json  # noqa: E402
from bench.split_metrics import print_table, summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="a dynamic int8 bundle written by `papertasks export`")
    ap.add_argument("--data", required=True, help="the `prepare` folder it was trained on")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--min-positives", type=int, default=10, help="as evaluate's")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "int8_compute.json"))
    args = ap.parse_args()
    try:
        bundle = Predictor(args.bundle, allow_unsigned=True)  # a measurement: any folder, its errors its own
        if bundle.single_label:
            raise UserError(f"{args.bundle}: this bench is for multi-label bundles")
        x_valid, y_valid, x_test, y_test = load_eval_data(args.data, bundle.labels)
        with tempfile.TemporaryDirectory(prefix="int8-compute-") as tmp:
            floated = copy_bundle_files(Path(args.bundle), Path(tmp) / "fp32_arithmetic")
            rewritten = dequantized_graph(Path(args.bundle) / "model.onnx", floated / "model.onnx")
            reduced = copy_bundle_files(floated, Path(tmp) / "reduce_range")
            quantize_int8(floated / "model.onnx", reduced / "model.onnx", reduce_range=True)
            engines = {"int8 arithmetic (the bundle as served)": bundle,
                       "fp32 arithmetic, same int8 weights": Predictor(floated, allow_unsigned=True),
                       "int8 arithmetic, the same weights re-quantized to 7 bits": Predictor(reduced,
                                                                                               allow_unsigned=True)}
            scores = {name: (score_texts(p, x_valid, args.batch_size, "valid"), score_texts(p, x_test, args.batch_size, "test"))
                      for name, p in engines.items()}
    except (UserError, BundleError) as e:
        sys.exit(f"int8_compute: {e}")

    served, float_scores, reduced_scores = scores.values()
    diffs = {name: np.abs(s[1] - float_scores[1]) for name, s in (("served", served), ("7-bit", reduced_scores))}
    results = {"bundle": args.bundle, "data": args.data, "cpu": platform.processor() or platform.machine(),
               "matmuls_rewritten": rewritten,
               "test_prob_diff_vs_fp32_arithmetic": {name: {"max": float(d.max()), "mean": float(d.mean())}
                                                     for name, d in diffs.items()},
               "engines": {name: summary(evaluate_probs(name, bundle.labels, y_valid, v, y_test, t, args.min_positives,
                                                        "multi-label"))
                           for name, (v, t) in scores.items()}}
    print(f"{len(x_test)} test papers, {rewritten} MatMuls; test probabilities against fp32 arithmetic: "
          + "; ".join(f"{name} {d.mean():.5f} on average, {d.max():.3f} at most" for name, d in diffs.items()))
    print_table("arithmetic", results["engines"])
    write_json(args.out, results)


if __name__ == "__main__":
    main()
