"""The bag-of-n-grams half of a hybrid bundle: TF-IDF over the encoder's own word pieces, one
logistic regression per label, served with numpy and tokenizers only (no scikit-learn, no pickle).

A fine-tuned encoder and a bag of n-grams make different mistakes: the encoder reads a window of the
abstract in context, the bag counts every word piece of the whole abstract. Averaging their
probabilities beat both on the arXiv test months (bench/ensemble.py), so a bundle may carry
`bag.npz` beside `model.onnx`; the Predictor then serves `w * encoder + (1 - w) * bag`, with `w`
(config.json `hybrid.encoder_weight`) chosen on validation by `papertasks export --hybrid`.

bag.npz holds, for F features and L labels:
- `keys` (F,) int64, sorted: a unigram is its token id, a bigram is `vocab + a * vocab + b`;
- `idf` (F,) float32: smoothed inverse document frequency, as scikit-learn's TfidfVectorizer;
- `weights` (F, L) float16 and `intercept` (L,) float32: the per-label logistic regressions.
A text's features are sublinear term frequencies (1 + log count) times idf, L2-normalized.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BAG_FILE = "bag.npz"


def ngram_keys(ids: list[int], vocab: int) -> np.ndarray:
    """Unigram and bigram keys of one text's word-piece ids (special tokens already left out)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.concatenate([ids, vocab + ids[:-1] * vocab + ids[1:]]) if len(ids) > 1 else ids


def text_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Word-piece ids of the whole text (no window, no special tokens): the bag sees every word."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


class BagOfNgrams:
    """TF-IDF features and per-label probabilities for texts tokenized with the bundle's tokenizer;
    `weights` and `intercept` may be None while the model is being fitted (papertasks/bag.py)."""

    def __init__(self, keys: np.ndarray, idf: np.ndarray, vocab: int, weights=None, intercept=None):
        self.keys, self.idf, self.vocab = keys, idf.astype(np.float32), vocab
        self.weights = None if weights is None else weights.astype(np.float32)
        self.intercept = None if intercept is None else intercept.astype(np.float32)

    @classmethod
    def load(cls, path: Path, vocab: int) -> "BagOfNgrams":
        with np.load(path) as data:
            return cls(data["keys"], data["idf"], vocab, data["weights"], data["intercept"])

    def features(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and TF-IDF values of one text's known n-grams."""
        keys, counts = np.unique(ngram_keys(ids, self.vocab), return_counts=True)
        at = np.searchsorted(self.keys, keys)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == keys[known]
        cols = at[known]
        values = (1.0 + np.log(counts[known])) * self.idf[cols]
        norm = np.linalg.norm(values)
        return cols, (values / norm if norm else values).astype(np.float32)

    def probabilities(self, token_ids: list[list[int]]) -> np.ndarray:
        logits = np.tile(self.intercept, (len(token_ids), 1))
        for row, ids in enumerate(token_ids):
            cols, values = self.features(ids)
            logits[row] += values @ self.weights[cols]
        return 1.0 / (1.0 + np.exp(-logits))
