"""The one writer of bundle folders: `export` builds them, and `evaluate`'s results are recorded into
them here (through the CLI), so the model card and the manifest are always rewritten with the files
they describe."""
from __future__ import annotations

import shutil
from pathlib import Path

from deployment.manifest import write_manifest
from export.model_card import write_model_card
from export.taxonomy import write_label_names
from papertasks.io import read_json, write_json

BUNDLE_FILES = ("tokenizer.json", "labels.json", "config.json", "thresholds.json")  # beside model.onnx


def copy_bundle_files(source: Path, folder: Path, names=BUNDLE_FILES) -> Path:
    """Make `folder` a bundle for another model.onnx: `source`'s tokenizer, labels, config, thresholds
    (those it has), and a hybrid's bag of n-grams when its config names one."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    if "config.json" in names and (source / "config.json").is_file():
        bag = (read_json(source / "config.json").get("hybrid") or {}).get("file")
        if bag and (source / bag).is_file():
            shutil.copy(source / bag, folder / bag)
    return folder


def seal_bundle(folder: Path, name: str | None = None) -> None:
    """The label names, the model card, then the manifest last: its checksums cover every file, the
    card included, and the Predictor checks them at start."""
    write_label_names(folder)
    write_model_card(folder, name=name)
    write_manifest(folder)


def record_evaluation(bundle, thresholds: dict, metrics: dict, labels_json: str | None = None) -> None:
    """Write what `evaluate` chose and measured into a bundle: thresholds.json (and a copy beside the
    vocabulary in json_files/), metrics.json, then the card and manifest again."""
    bundle = Path(bundle)
    write_json(bundle / "thresholds.json", thresholds)
    write_json(bundle / "metrics.json", metrics)
    if labels_json:
        write_json(Path(labels_json).with_name("thresholds.json"), thresholds)
    seal_bundle(bundle)
