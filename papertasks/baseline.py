"""`papertasks baseline`: simple models on the same split, thresholds and metrics as the fine-tuned
model (via `papertasks.evaluate`), so reports can be read side by side.

- `tfidf`: TF-IDF of words and bigrams + logistic regression.
- `embeddings`: frozen sentence embeddings of the base model (`papertasks.embeddings`, cached) +
  logistic regression: what a linear head gets out of the encoder before any fine-tuning.
- `fasttext`: fastText's supervised bag of word n-grams (the `fasttext-community` binding): the
  fast baseline one would pick instead of fine-tuning an encoder.

Multi-label data gets one binary logistic regression per label (one-vs-rest), single-label data
one multinomial model (fastText: one-vs-all sigmoids, or a softmax). With `--folds K`, k-fold
cross-validation over train + valid (`papertasks.kfold`) replaces the split evaluation: mean and
standard deviation per metric.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from papertasks.data import label_matrix, read_labels, read_problem, read_split
from papertasks.errors import UserError
from papertasks.evaluate import evaluate_probs, write_report
from papertasks.kfold import FitPredict, cross_validate, sample_rows

log = logging.getLogger(__name__)

BASELINES = ("tfidf", "embeddings", "fasttext")

# fastText's settings for abstracts (a few hundred words, tens of labels), fixed for every data
# folder: the recipes of fastText's own text-classification tutorial (word bigrams, 25 epochs; lr 1.0
# for the softmax, 0.5 for one-vs-all), with 100 dimensions and words seen at least twice (else a
# vocabulary of typos and one-off numbers). Checked for one-vs-all on validation only (10,000
# data/arxiv training rows, scored on its valid split; no autotune, the test split never looked at):
# 10 or 50 epochs, lr 0.25 or 1.0, unigrams, dim 50, minCount 1 or 5 moved P@1 by at most a point
# and macro ROC-AUC by at most 0.002 upward; 10 epochs gained 2 points of micro-F1 and lost 2 of
# macro ROC-AUC. The softmax keeps the tutorial's lr 1.0 (at 0.5 it gave every paper of the tests'
# 145-row Papers with Code slice the same class).
FASTTEXT_PARAMS = dict(dim=100, epoch=25, wordNgrams=2, minCount=2)
FASTTEXT_LR = {"ova": 0.5, "softmax": 1.0}
# fastText splits on whitespace only: words and punctuation become separate tokens, lowercased.
FASTTEXT_TOKEN = re.compile(r"\w+|[^\w\s]")


def fit_probabilities(classifier, x_train, y_train: np.ndarray, x_heldout, single_label: bool) -> np.ndarray:
    """Fit on the training rows; probabilities of every label for the held-out rows, including the
    labels none of the training rows has (a subsample or a fold can miss rare ones)."""
    if single_label:
        classes = y_train.argmax(axis=1)
        if len(np.unique(classes)) < 2:
            raise UserError("the training rows hold a single class; use more of them (--max-train, --folds)")
        classifier.fit(x_train, classes)
        probs = np.zeros((x_heldout.shape[0], y_train.shape[1]))
        probs[:, classifier.classes_] = classifier.predict_proba(x_heldout)
        return probs
    missing = int((y_train.sum(axis=0) == 0).sum())
    if missing:
        log.info("%d labels have no training rows: they score 0", missing)
    with warnings.catch_warnings():  # one-vs-rest fits a constant for such labels, and says so per label
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        classifier.fit(x_train, y_train)
    return classifier.predict_proba(x_heldout)


def logistic_regression(single_label: bool, **options):
    """One multinomial model over the classes, or one binary model per label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    return LogisticRegression(**options) if single_label else OneVsRestClassifier(LogisticRegression(**options))


def tfidf_model(labels: list[str], single_label: bool, max_features: int = 100_000) -> FitPredict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    def fit_predict(train_df: pd.DataFrame, heldout_df: pd.DataFrame) -> np.ndarray:
        vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=max_features,
                                     strip_accents="unicode")
        x_train = vectorizer.fit_transform(train_df["text"])
        # liblinear for the per-label models (the numbers reported so far); lbfgs for the multinomial one
        options = dict(C=4.0, max_iter=1000) if single_label else dict(C=4.0, max_iter=1000, solver="liblinear")
        return fit_probabilities(logistic_regression(single_label, **options), x_train,
                                 label_matrix(train_df["labels"], labels), vectorizer.transform(heldout_df["text"]),
                                 single_label)

    return fit_predict


def embeddings_model(labels: list[str], single_label: bool, features: np.ndarray) -> FitPredict:
    """`features[i]` is the embedding of the row whose frame index is i."""

    def fit_predict(train_df: pd.DataFrame, heldout_df: pd.DataFrame) -> np.ndarray:
        # C as for TF-IDF: on validation (data/pwc, a 600-row arXiv slice) C 1..4 beat 10..100
        return fit_probabilities(logistic_regression(single_label, C=4.0, max_iter=2000),
                                 features[train_df.index], label_matrix(train_df["labels"], labels),
                                 features[heldout_df.index], single_label)

    return fit_predict


def fasttext_text(text: str) -> str:
    """One line for fastText: lowercased words and punctuation marks, separated by single spaces."""
    return " ".join(FASTTEXT_TOKEN.findall(text.lower()))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class FastTextClassifier:
    """fastText's supervised model behind the calls `fit_probabilities` makes: `fit(texts, y)` with the
    class of each row (single-label: softmax) or the 0/1 label matrix (multi-label: one-vs-all
    sigmoids), then `predict_proba(texts)`, columns in `classes_` order or in label order. Labels go to
    fastText as `__label__<column>` (task names hold spaces and commas); a label no training row has
    is unknown to the model and scores 0. Training runs on every available core with a fixed seed:
    fastText's threads update shared weights without locks (Hogwild), so a run with more than one
    thread is not reproducible bit for bit (one thread is, and is that much slower)."""

    def __init__(self, single_label: bool, seed: int, **params):
        self.single_label, self.seed, self.params = single_label, seed, params

    def fit(self, texts, y) -> FastTextClassifier:
        try:
            import fasttext
        except ImportError:
            raise UserError("--model fasttext needs the fastText binding: pip install fasttext-community "
                            "(pinned in requirements.txt)") from None
        y = np.asarray(y)
        if self.single_label:
            self.classes_ = np.unique(y)
            label_sets = [[c] for c in y]
        else:
            label_sets = [np.flatnonzero(row) for row in y]  # a row with none is skipped by fastText
        self.columns_ = ({f"__label__{c}": i for i, c in enumerate(self.classes_)} if self.single_label else
                         {f"__label__{c}": c for c in range(y.shape[1])})
        self.n_columns_ = len(self.columns_)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", prefix="papertasks-fasttext-",
                                         delete=False) as f:
            for text, labs in zip(texts, label_sets):
                f.write(" ".join(f"__label__{c}" for c in labs) + " " + fasttext_text(text) + "\n")
        try:
            self.model_ = fasttext.train_supervised(f.name, loss="softmax" if self.single_label else "ova",
                                                    seed=self.seed, thread=available_cores(), verbose=0,
                                                    **self.params)
        finally:
            os.remove(f.name)
        return self

    def predict_proba(self, texts) -> np.ndarray:
        names, scores = self.model_.predict([fasttext_text(t) for t in texts], k=-1, threshold=0.0)
        probs = np.zeros((len(names), self.n_columns_))
        for row, (labs, p) in enumerate(zip(names, scores)):
            probs[row, [self.columns_[lab] for lab in labs]] = p
        # fastText reports each probability plus 1e-5 (it takes log(p + 1e-5) and gives back its exp)
        return np.clip(probs - 1e-5, 0.0, 1.0)


def fasttext_model(labels: list[str], single_label: bool, seed: int) -> FitPredict:
    def fit_predict(train_df: pd.DataFrame, heldout_df: pd.DataFrame) -> np.ndarray:
        classifier = FastTextClassifier(single_label, seed, lr=FASTTEXT_LR["softmax" if single_label else "ova"],
                                        **FASTTEXT_PARAMS)
        heldout = np.asarray(heldout_df["text"].tolist(), dtype=object)  # fit_probabilities reads its shape
        return fit_probabilities(classifier, train_df["text"].tolist(), label_matrix(train_df["labels"], labels),
                                 heldout, single_label)

    return fit_predict


def split_embeddings(data: str, frames: dict[str, pd.DataFrame], sampled: bool, max_train: int | None, seed: int,
                     base_model: str | None) -> np.ndarray:
    """Embeddings of the frames' rows stacked in order; a training sample is cached under its own name."""
    from papertasks.embeddings import cached_embeddings

    names = {name: f"train-max{max_train}-seed{seed}" if name == "train" and sampled else name for name in frames}
    return np.concatenate([cached_embeddings(data, names[name], df["text"].tolist(), base_model)
                           for name, df in frames.items()])


def baseline_name(model: str, single_label: bool, base_model: str | None, train_rows: int | None) -> str:
    from papertasks.paths import OFFLINE_BASE_NAME

    if model == "fasttext":
        p, loss = FASTTEXT_PARAMS, "softmax" if single_label else "ova"
        name = (f"fastText {'softmax' if single_label else 'one-vs-all'} (word {p['wordNgrams']}-grams, "
                f"dim {p['dim']}, {p['epoch']} epochs, lr {FASTTEXT_LR[loss]})")
        return f"{name} ({train_rows} train rows)" if train_rows else name
    features = "TF-IDF" if model == "tfidf" else f"{Path(base_model or OFFLINE_BASE_NAME).name} embeddings (frozen)"
    name = f"{features} + {'multinomial ' if single_label else ''}logistic regression"
    return f"{name} ({train_rows} train rows)" if train_rows else name


def run_baseline(data: str, out: str, model: str = "tfidf", max_train: int | None = None, folds: int = 0,
                 base_model: str | None = None, max_features: int = 100_000, min_positives: int = 10,
                 seed: int = 42) -> dict:
    """Fit on train, tune on valid, measure on test, and write the same report as `evaluate`;
    or, with `folds`, cross-validate on train + valid and write cv.json / cv.md."""
    if model not in BASELINES:
        raise UserError(f"--model must be one of {', '.join(BASELINES)}, not {model!r}")
    if folds == 1 or folds < 0:
        raise UserError(f"--folds {folds}: use 0 (off) or at least 2")
    if max_train is not None and max_train < 1:
        raise UserError(f"--max-train {max_train}: use a positive number of rows")
    if base_model and model != "embeddings":
        raise UserError("--base-model is for --model embeddings")
    labels, problem = read_labels(data), read_problem(data)
    single_label = problem != "multi-label"
    full_train = read_split(data, "train")
    train = sample_rows(full_train, max_train, seed)
    sampled = len(train) < len(full_train)
    name = baseline_name(model, single_label, base_model, len(train) if sampled else None)
    log.info("%s baseline on %s data: %s", model, problem, name)

    # Cross-validation pools train then valid (`kfold.pooled_rows`); the split evaluation adds test.
    frames = {"train": train, "valid": read_split(data, "valid")} | ({} if folds else {"test": read_split(data, "test")})
    fit_predict = (tfidf_model(labels, single_label, max_features) if model == "tfidf" else
                   fasttext_model(labels, single_label, seed) if model == "fasttext" else
                   embeddings_model(labels, single_label,
                                    split_embeddings(data, frames, sampled, max_train, seed, base_model)))
    if folds:
        return cross_validate(data, fit_predict, folds, name, max_train=max_train, seed=seed, out=out)

    rows = pd.concat(frames.values(), ignore_index=True)
    t0 = time.time()
    probs = fit_predict(rows.iloc[:len(train)], rows.iloc[len(train):])
    log.info("%s trained on %d rows and scored in %.1fs", name, len(train), time.time() - t0)
    n_valid = len(frames["valid"])
    y = {split: label_matrix(df["labels"], labels) for split, df in frames.items()}
    report = evaluate_probs(name, labels, y["valid"], probs[:n_valid], y["test"], probs[n_valid:], min_positives,
                            problem)
    write_report(report, Path(out), probs[n_valid:], y["test"], labels)
    return report

