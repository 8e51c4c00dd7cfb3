"""`papertasks baseline`: TF-IDF + one-vs-rest logistic regression, on the same split, thresholds and
metrics as the fine-tuned model (via `papertasks.evaluate`), so reports can be read side by side."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from papertasks.data import label_matrix, read_labels, read_split
from papertasks.evaluate import evaluate_probs, write_report

log = logging.getLogger(__name__)


def run_tfidf_baseline(data: str, out: str, max_features: int = 100_000, min_positives: int = 10) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    labels = read_labels(data)
    splits = {name: read_split(data, name) for name in ("train", "valid", "test")}
    y = {name: label_matrix(df["labels"], labels) for name, df in splits.items()}
    t0 = time.time()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=max_features,
                                 strip_accents="unicode")
    x_train = vectorizer.fit_transform(splits["train"]["text"])
    classifier = OneVsRestClassifier(LogisticRegression(C=4.0, max_iter=1000, solver="liblinear"))
    classifier.fit(x_train, y["train"])
    probs = {name: classifier.predict_proba(vectorizer.transform(splits[name]["text"])) for name in ("valid", "test")}
    log.info("TF-IDF baseline trained and scored in %.1fs", time.time() - t0)
    report = evaluate_probs("TF-IDF + logistic regression", labels, y["valid"], probs["valid"], y["test"],
                            probs["test"], min_positives)
    write_report(report, Path(out), probs["test"], y["test"], labels)
    return report
