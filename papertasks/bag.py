"""Fit the bag-of-n-grams half of a hybrid bundle (served by deployment/bag.py) and choose its mix
with the encoder on validation.

The features are built by the served code itself (deployment.bag.BagOfNgrams.features), so what is
fitted is what is served; scikit-learn only fits the per-label logistic regressions (liblinear,
C=4, as the TF-IDF baseline), and their weights are written to bag.npz as plain arrays.
"""
from __future__ import annotations

import logging

import numpy as np

from deployment.bag import BagOfNgrams, ngram_keys, text_ids
from deployment.predictor import normalize_whitespace

log = logging.getLogger(__name__)

MAX_FEATURES = 50_000  # n-grams kept (most frequent first): 50k x labels float16 weights in bag.npz
# at most this many float16 weights (about 5 MB in bag.npz), so a bundle stays under 30 MB: 38 arXiv
# labels keep 50k n-grams, 145 Papers with Code tasks 17k
MAX_WEIGHTS = 2_500_000
MIN_DF = 2
MIX_GRID = np.round(np.arange(0.0, 1.0001, 0.05), 2)  # encoder weights tried on validation


def vocabulary(token_ids: list[list[int]], vocab: int, max_features: int = MAX_FEATURES):
    """The n-gram keys seen in at least MIN_DF texts, the `max_features` most frequent (sorted),
    and their smoothed idf."""
    per_text = [np.unique(ngram_keys(ids, vocab)) for ids in token_ids]
    keys, df = np.unique(np.concatenate(per_text), return_counts=True)
    keep = df >= MIN_DF
    keys, df = keys[keep], df[keep]
    if len(keys) > max_features:
        top = np.sort(np.argsort(-df, kind="stable")[:max_features])
        keys, df = keys[top], df[top]
    idf = np.log((1 + len(token_ids)) / (1 + df)) + 1.0
    return keys, idf


def feature_matrix(bag: BagOfNgrams, token_ids: list[list[int]]):
    from scipy.sparse import csr_matrix

    rows = [bag.features(ids) for ids in token_ids]
    indptr = np.cumsum([0] + [len(cols) for cols, _ in rows])
    cols = np.concatenate([c for c, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
    values = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, dtype=np.float32)
    return csr_matrix((values, cols, indptr), shape=(len(token_ids), len(bag.keys)))


def fit_bag(tokenizer, texts: list[str], y: np.ndarray, max_features: int = MAX_FEATURES) -> BagOfNgrams:
    """A bag-of-n-grams model over the bundle tokenizer's word pieces (`tokenizer`: tokenizers.Tokenizer)."""
    from papertasks.baseline import logistic_regression

    vocab = tokenizer.get_vocab_size()
    token_ids = text_ids(tokenizer, [normalize_whitespace(t) for t in texts])
    keys, idf = vocabulary(token_ids, vocab, min(max_features, MAX_WEIGHTS // y.shape[1]))
    bag = BagOfNgrams(keys, idf, vocab)
    x = feature_matrix(bag, token_ids)
    log.info("bag of n-grams: %d texts, %d features; fitting %d logistic regressions", len(texts), len(keys), y.shape[1])
    model = logistic_regression(False, C=4.0, max_iter=1000, solver="liblinear").fit(x, y)
    weights = np.zeros((len(keys), y.shape[1]), dtype=np.float32)
    intercept = np.zeros(y.shape[1], dtype=np.float32)
    for j, estimator in enumerate(model.estimators_):
        if hasattr(estimator, "coef_"):
            weights[:, j], intercept[j] = estimator.coef_[0], estimator.intercept_[0]
        else:  # a label that is always or never there in training: a constant
            p = float(np.clip(y[:, j].mean(), 1e-6, 1 - 1e-6))
            intercept[j] = np.log(p / (1 - p))
    bag.weights = weights.astype(np.float16).astype(np.float32)  # as served: bag.npz keeps float16
    bag.intercept = intercept
    return bag


def save_bag(bag: BagOfNgrams, path) -> None:
    from papertasks.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, keys=bag.keys, idf=bag.idf, weights=bag.weights.astype(np.float16),
                            intercept=bag.intercept)


def choose_mix(y_valid: np.ndarray, encoder: np.ndarray, bag: np.ndarray) -> tuple[float, dict]:
    """The encoder weight whose mix has the best validation micro-F1 at its best global threshold;
    and the scores of every weight tried (weight 1: the encoder alone, 0: the bag alone)."""
    from papertasks.evaluate import best_global_threshold

    scores = {float(w): best_global_threshold(y_valid, w * encoder + (1 - w) * bag)[1] for w in MIX_GRID}
    best = max(scores, key=lambda w: (scores[w], w))  # ties: more encoder
    return best, scores
