"""Make a bundle a hybrid: add the bag of n-grams (bag.npz) beside its ONNX encoder and the mix
chosen on validation (`papertasks export --hybrid`, or `papertasks hybrid` for a bundle already built).

The bag is fitted on the prepared data's training split with the bundle's own tokenizer; the encoder
weight is the one whose mix scores best on validation (micro-F1 at its best global threshold), and
that threshold becomes the bundle's until `papertasks evaluate` tunes the thresholds of the hybrid.
A check then loads the folder as the Space would and compares its scores with the mix computed here.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from deployment.bag import BAG_FILE, text_ids
from deployment.predictor import BundleError, Predictor, normalize_whitespace
from export.bundle import seal_bundle
from papertasks.errors import UserError
from papertasks.io import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

CHECK_TEXTS = 64
SERVED_TOLERANCE = 1e-4  # the served mix against the one computed here: float rounding only


def add_bag(folder: Path, data_dir: str) -> dict:
    """Fit and write bag.npz into `folder` (a bundle whose config has no hybrid yet), record the mix
    in config.json and a global threshold in thresholds.json; returns what export_report.json keeps."""
    from papertasks.bag import choose_mix, fit_bag, save_bag
    from papertasks.data import label_matrix, read_split
    from papertasks.evaluate import best_global_threshold

    encoder = Predictor(folder, allow_unsigned=True)  # a bundle being built: sealed when it is done
    if encoder.single_label:
        raise UserError("--hybrid: the bag of n-grams is for multi-label bundles (sigmoid scores)")
    train, valid = read_split(data_dir, "train"), read_split(data_dir, "valid")
    bag = fit_bag(encoder.tokenizer, train["text"].tolist(), label_matrix(train["labels"], encoder.labels))
    texts, y_valid = valid["text"].tolist(), label_matrix(valid["labels"], encoder.labels)
    log.info("hybrid: scoring %d validation texts with the encoder and the bag", len(texts))
    encoder_probs = encoder.predict_proba(texts)
    bag_probs = bag.probabilities(text_ids(encoder.tokenizer, [normalize_whitespace(t) for t in texts]))
    weight, scores = choose_mix(y_valid, encoder_probs, bag_probs)
    threshold = best_global_threshold(y_valid, weight * encoder_probs + (1 - weight) * bag_probs)[0]
    log.info("hybrid: encoder weight %.2f (validation micro-F1 %.4f; encoder alone %.4f, bag alone %.4f)",
             weight, scores[weight], scores[1.0], scores[0.0])

    save_bag(bag, folder / BAG_FILE)
    config = read_json(folder / "config.json")
    write_json(folder / "config.json", {**config, "hybrid": {"file": BAG_FILE, "encoder_weight": weight,
                                                             "features": len(bag.keys)}})
    write_json(folder / "thresholds.json", {"global": threshold, "per_label": {}, "chosen_by": "papertasks hybrid"})

    check = texts[:CHECK_TEXTS]
    expected = (weight * encoder.predict_proba(check)
                + (1 - weight) * bag.probabilities(text_ids(encoder.tokenizer, [normalize_whitespace(t) for t in check])))
    served_diff = float(np.abs(Predictor(folder, allow_unsigned=True).predict_proba(check) - expected).max())
    if served_diff > SERVED_TOLERANCE:
        raise UserError(f"hybrid check failed, bundle not written: the served scores differ from the fitted mix "
                        f"by {served_diff:.2e} (> {SERVED_TOLERANCE})")
    return {"encoder_weight": weight, "features": len(bag.keys), "train_rows": len(train),
            "valid_rows": len(valid), "valid_micro_f1_by_encoder_weight": scores,
            "served_vs_fitted_max_prob_diff": served_diff, "bag_mb": round((folder / BAG_FILE).stat().st_size / 2**20, 2)}


def make_hybrid(bundle: str, data_dir: str, out: str | None = None) -> dict:
    """`papertasks hybrid`: a copy of `bundle` (at `out`, or in its place) with the bag added."""
    source, target = Path(bundle), Path(out or bundle)
    try:
        config = Predictor(source, allow_unsigned=True).config  # e.g. a model's fp32 onnx/ folder
    except BundleError as e:
        raise UserError(str(e)) from None
    if config.get("hybrid"):
        raise UserError(f"{source} is a hybrid already; hybridize the encoder-only bundle it was made from")
    with atomic_dir(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        (staging / "metrics.json").unlink(missing_ok=True)  # the encoder's: `evaluate` measures the hybrid
        (staging / "manifest.json").unlink(missing_ok=True)  # rewritten by seal_bundle once the folder is final
        record = add_bag(staging, data_dir)
        report_path = staging / "export_report.json"
        if report_path.is_file():
            write_json(report_path, {**read_json(report_path), "hybrid": record})
        seal_bundle(staging, name=target.name)
    log.info("hybrid bundle written to %s; run `papertasks evaluate` on it to tune its thresholds", target)
    return record
