"""The test scores behind a report (test_scores.npz), kept by `evaluate` and `baseline` so that
`compare` can resample the same papers for two models (papertasks.bootstrap)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from papertasks.io import atomic_path

SCORES_FILE = "test_scores.npz"


def write_test_scores(out: Path, probs: np.ndarray, y: np.ndarray, labels: list[str]) -> None:
    """Probabilities in their own precision: rounding could move one across a threshold."""
    with atomic_path(Path(out) / SCORES_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, probs=np.asarray(probs), y=y.astype(bool), labels=np.array(labels))


def read_test_scores(folder) -> dict | None:
    """The scores a report was computed from, or None for a report written before they were kept."""
    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {"probs": data["probs"], "y": data["y"], "labels": data["labels"].tolist()}
