"""`papertasks export`, registered by this stage (each stage adds its own commands)."""
from __future__ import annotations

import argparse

from export import WEIGHT_TYPES
from papertasks.cli_support import use_defaults
from papertasks.paths import DEFAULT_BUNDLE


def _export(args):
    from export.onnx_export import export_bundle

    export_bundle(args.model, args.out, data_dir=args.data, parity_texts=args.parity_texts,
                  max_prob_diff=args.max_prob_diff, min_same_set=args.min_same_set,
                  work_dir=args.work_dir, reduce_range=args.reduce_range, weights=args.weights, hybrid=args.hybrid)


def _hybrid(args):
    from export.hybrid import make_hybrid

    make_hybrid(args.bundle, args.data, args.out)


def register(subparsers) -> None:
    from export.onnx_export import export_bundle

    p = subparsers.add_parser("export", help="ONNX export, int8 quantization, parity check, deployment bundle",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="folder written by `train`")
    p.add_argument("--out", default=DEFAULT_BUNDLE,
                   help="bundle folder (the Space serves those listed in deployment/models/models.json)")
    p.add_argument("--data", help="prepared data folder: parity texts come from its validation split")
    p.add_argument("--parity-texts", type=int)
    p.add_argument("--max-prob-diff", type=float, help="fail if int8 and torch differ more than this")
    p.add_argument("--min-same-set", type=float,
                   help="fail if fewer texts than this share get the same label set in int8 and torch")
    p.add_argument("--work-dir", help="keep the fp32 ONNX here (default: <model>/onnx)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit int8 weights: no overflow in the int8 kernels of x86 CPUs without VNNI (AVX2 only)")
    p.add_argument("--weights", choices=sorted(WEIGHT_TYPES),
                   help="signed int8 weights (fastest kernels; they saturate on x86 CPUs without VNNI) or unsigned "
                        "ones (no saturation on any CPU)")
    p.add_argument("--hybrid", action="store_true",
                   help="add a bag of word-piece n-grams beside the encoder, mixed with it as validation chooses "
                        "(needs --data)")
    use_defaults(p, export_bundle, data="data_dir")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("hybrid", help="add the bag of n-grams to a bundle already exported (as export --hybrid)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              epilog="then run `papertasks evaluate` on the result to tune its thresholds")
    p.add_argument("--bundle", required=True, help="an encoder-only bundle folder")
    p.add_argument("--data", required=True, help="the prepared data it was trained on (train: fit; valid: mix)")
    p.add_argument("--out", help="write the hybrid here (default: replace --bundle)")
    p.set_defaults(func=_hybrid)
