"""The bundle committed in deployment/models/arxiv: complete, small, consistent with json_files/, and good on
papers it has never seen (scored live here, not read from a file)."""
from __future__ import annotations

import gzip
import json

import numpy as np
from sklearn.metrics import f1_score

from conftest import REPO, require
from deployment.predictor import Predictor, compose_text
from papertasks.data import ARXIV_ALIASES, label_matrix

BUNDLE = REPO / "deployment" / "models" / "arxiv"


def test_bundle_is_complete_small_and_matches_json_files():
    for name in ("model.onnx", "tokenizer.json", "labels.json", "thresholds.json", "config.json", "MODEL_CARD.md"):
        assert (BUNDLE / name).is_file(), name
    assert sum(p.stat().st_size for p in BUNDLE.iterdir()) <= 30 * 2**20
    assert json.loads((BUNDLE / "labels.json").read_text()) == json.loads((REPO / "json_files/arxiv/labels.json").read_text())
    assert json.loads((BUNDLE / "thresholds.json").read_text()) == json.loads(
        (REPO / "json_files/arxiv/thresholds.json").read_text())
    card = (BUNDLE / "MODEL_CARD.md").read_text()
    assert "## Test metrics" in card and "## Parity" in card


def test_shipped_model_tags_unseen_papers(arxiv_file):
    """300 papers from the test months (listed from 2026-03-01 on, never trained on)."""
    predictor = Predictor(BUNDLE)
    papers = []
    with gzip.open(require(arxiv_file), "rt", encoding="utf-8") as f:
        for line in f:
            paper = json.loads(line)
            if paper["listing_date"] >= "2026-03-01":
                papers.append(paper)
            if len(papers) == 300:
                break
    texts = [compose_text(p["title"], p["abstract"]) for p in papers]
    truth = label_matrix([[ARXIV_ALIASES.get(c, c) for c in p["categories"]] for p in papers], predictor.labels)
    probs = predictor.predict_proba(texts)
    assert f1_score(truth, predictor.decide(probs), average="micro") > 0.6
    top1 = probs.argmax(axis=1)
    assert truth[np.arange(len(top1)), top1].mean() > 0.8  # precision@1
