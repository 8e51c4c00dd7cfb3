"""A hybrid bundle: encoder + bag of word-piece n-grams, fitted on training rows, mixed as validation
chooses, served by the one predictor with numpy and tokenizers only."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from deployment.bag import BagOfNgrams, ngram_keys, text_ids
from deployment.predictor import Predictor
from papertasks.cli import main
from papertasks.errors import UserError


@pytest.fixture(scope="module")
def hybrid_bundle(tiny_bundle, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid") / "model"
    assert main(["hybrid", "--bundle", str(tiny_bundle), "--data", str(tiny_data), "--out", str(out)]) == 0
    return out


def test_bag_features_are_scikit_learns_tfidf():
    """Sublinear tf x smoothed idf, L2-normalized: what TfidfVectorizer computes on the same n-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from papertasks.bag import feature_matrix, vocabulary

    docs = [[5, 6, 7, 5, 6], [5, 6, 8], [7, 8, 9, 9], [6, 7, 8, 9, 5, 6]]
    vocab = 10
    keys, idf = vocabulary(docs, vocab, max_features=1000)
    ours = feature_matrix(BagOfNgrams(keys, idf, vocab), docs).toarray()
    sklearn = TfidfVectorizer(analyzer=lambda ids: [str(k) for k in ngram_keys(ids, vocab)], sublinear_tf=True,
                              min_df=2)
    theirs = sklearn.fit_transform(docs).toarray()
    order = [sklearn.vocabulary_[str(k)] for k in keys]  # our columns are the sorted keys
    np.testing.assert_allclose(ours, theirs[:, order], rtol=1e-5, atol=1e-6)


def test_hybrid_serves_the_mix_chosen_on_validation(hybrid_bundle, tiny_bundle):
    config = json.loads((hybrid_bundle / "config.json").read_text())
    weight = config["hybrid"]["encoder_weight"]
    report = json.loads((hybrid_bundle / "export_report.json").read_text())["hybrid"]
    scores = report["valid_micro_f1_by_encoder_weight"]
    assert scores[str(weight)] == max(scores.values()) and report["served_vs_fitted_max_prob_diff"] < 1e-4

    hybrid, encoder = Predictor(hybrid_bundle), Predictor(tiny_bundle)
    assert hybrid.integrity.startswith("verified") and hybrid.bag is not None and encoder.bag is None
    texts = ["Object detection with transformers in aerial images.", "A survey of large language models " * 40]
    bag = hybrid.bag.probabilities(text_ids(hybrid.tokenizer, texts))
    np.testing.assert_allclose(hybrid.predict_proba(texts), weight * encoder.predict_proba(texts) + (1 - weight) * bag,
                               atol=1e-6)
    # the bag reads the whole abstract: a text longer than the encoder's window still moves its score
    long_text = texts[0] + " " + "speech recognition acoustic model " * 120
    assert len(text_ids(hybrid.tokenizer, [long_text])[0]) > 4 * hybrid.max_length
    assert not np.allclose(hybrid.bag.probabilities(text_ids(hybrid.tokenizer, [long_text])), bag[:1])
    assert "A hybrid:" in (hybrid_bundle / "MODEL_CARD.md").read_text()
    assert "--hybrid" in (hybrid_bundle / "MODEL_CARD.md").read_text()


def test_evaluate_tunes_the_hybrids_thresholds(hybrid_bundle, tiny_data, tmp_path):
    assert main(["evaluate", "--model", str(hybrid_bundle), "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                 "--min-positives", "3"]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["f1_micro"] > 0


def test_evaluate_encoder_only_scores_the_hybrids_encoder_as_the_plain_bundle(hybrid_bundle, tiny_bundle, tiny_data,
                                                                              tmp_path):
    """`--encoder-only` drops the bag: the report is the plain bundle's (same encoder), under its name."""
    for folder, out, extra in ((hybrid_bundle, "encoder", ["--encoder-only"]), (tiny_bundle, "plain", [])):
        assert main(["evaluate", "--model", str(folder), "--data", str(tiny_data), "--out", str(tmp_path / out),
                     "--min-positives", "3", *extra]) == 0
    encoder, plain = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("encoder", "plain"))
    assert encoder["test"] == plain["test"] and encoder["model"] == plain["model"] and "bag" not in encoder["model"]
    assert main(["evaluate", "--model", str(tiny_bundle), "--data", str(tiny_data), "--out", str(tmp_path / "x"),
                 "--encoder-only"]) == 2
    assert main(["evaluate", "--model", str(hybrid_bundle), "--data", str(tiny_data), "--out", str(tmp_path / "y"),
                 "--encoder-only", "--update-bundle"]) == 2


def test_hybrid_runs_in_the_space_without_torch_or_sklearn(hybrid_bundle):
    code = f"""
import sys
for name in ("torch", "transformers", "sklearn", "scipy"):
    sys.modules[name] = None
sys.path.insert(0, {str(REPO / 'deployment')!r})
from predictor import Predictor
p = Predictor({str(hybrid_bundle)!r})
assert p.bag is not None and p.predict(["Object detection with transformers."])[0]["scores"]
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_hybrid_refuses_what_it_cannot_mix(hybrid_bundle, tiny_pwc_bundle, tiny_data, tmp_path, capsys):
    from export.hybrid import make_hybrid

    with pytest.raises(UserError, match="a hybrid already"):
        make_hybrid(str(hybrid_bundle), str(tiny_data), str(tmp_path / "again"))
    data = tiny_pwc_bundle.parents[1] / "data"
    with pytest.raises(UserError, match="multi-label bundles"):
        make_hybrid(str(tiny_pwc_bundle), str(data), str(tmp_path / "single"))
    assert not (tmp_path / "single").exists() and not (tmp_path / "again").exists()
    assert main(["export", "--model", "nowhere", "--hybrid"]) == 2
    assert "--hybrid needs --data" in capsys.readouterr().err
