"""`papertasks baseline` (TF-IDF, frozen embeddings, fastText), the embeddings cache and k-fold CV, on tiny
slices."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import PWC, assert_clean_error, require, run_cli

EMBEDDING_ROWS = {"train": 40, "valid": 30, "test": 30}
FASTTEXT_NAME = {"ova": "fastText one-vs-all (word 2-grams, dim 100, 25 epochs, lr 0.5)",
                 "softmax": "fastText softmax (word 2-grams, dim 100, 25 epochs, lr 1.0)"}


@pytest.fixture(scope="session")
def small_data(tiny_data, tmp_path_factory) -> Path:
    """tiny_data cut to 100 rows in all, so embedding it takes seconds."""
    out = tmp_path_factory.mktemp("small_data")
    for split, n in EMBEDDING_ROWS.items():
        lines = (tiny_data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    for name in ("labels.json", "report.json"):
        shutil.copy(tiny_data / name, out / name)
    return out


@pytest.fixture(scope="session")
def pwc_data(tmp_path_factory) -> Path:
    """A tiny single-label folder (one Papers with Code task per paper), prepared through the CLI."""
    out = tmp_path_factory.mktemp("pwc_data") / "pwc"
    result = run_cli("prepare", require(PWC), "--out", out, "--max-rows", "600", "--min-count", "15",
                     "--labels-json", out.parent / "labels.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["problem"] == "multi-class"
    return out


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_tfidf_baseline_cli(tiny_data, tmp_path):
    result = run_cli("baseline", "--data", tiny_data, "--out", tmp_path, "--min-positives", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["model"] == "TF-IDF + logistic regression" and metrics["problem"] == "multi-label"
    assert metrics["test"]["precision_at_1"] > 0.3
    for name in ("report.md", "per_label_f1.png", "precision_recall.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| TF-IDF + logistic regression |" in (tmp_path / "report.md").read_text()


def test_tfidf_baseline_max_train_is_a_seeded_sample(tiny_data, tmp_path):
    runs = [run_cli("baseline", "--data", tiny_data, "--out", tmp_path / name, "--max-train", "200",
                    "--min-positives", "3") for name in ("a", "b")]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-3000:]
    first, second = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert first["model"] == "TF-IDF + logistic regression (200 train rows)"
    assert first["test"] == second["test"]


@pytest.mark.parametrize("model, name", [("tfidf", "TF-IDF + multinomial logistic regression"),
                                         ("fasttext", FASTTEXT_NAME["softmax"])])
def test_single_label_baseline_cli(model, name, pwc_data, tmp_path):
    result = run_cli("baseline", "--data", pwc_data, "--out", tmp_path, "--model", model)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["model"] == name and metrics["problem"] == "multi-class"
    test = metrics["test"]
    n_test = len((pwc_data / "test.jsonl").read_text().splitlines())
    assert np.array(test["confusion_matrix"]).sum() == n_test == metrics["test_rows"]
    assert np.trace(np.array(test["confusion_matrix"])) / n_test == pytest.approx(test["accuracy"])
    assert test["accuracy"] > 0.3  # six Papers with Code tasks, a fifth of them guessed by chance
    assert 0.0 <= test["f1_macro"] <= 1.0 and 0.0 <= test["top3_accuracy"] <= 1.0 and test["roc_auc"] > 0.5
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    assert "| model | accuracy | macro-F1 |" in (tmp_path / "report.md").read_text()


def test_fasttext_baseline_cli(tiny_data, tmp_path):
    result = run_cli("baseline", "--data", tiny_data, "--out", tmp_path, "--model", "fasttext", "--min-positives", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["model"] == FASTTEXT_NAME["ova"] and metrics["problem"] == "multi-label"
    for name in ("report.md", "test_scores.npz", "per_label_f1.png", "precision_recall.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert f"| {metrics['model']} |" in (tmp_path / "report.md").read_text()
    scores = np.load(tmp_path / "test_scores.npz")
    labels = list(json.loads((tiny_data / "labels.json").read_text()))
    assert scores["labels"].tolist() == labels and scores["probs"].shape == (metrics["test_rows"], len(labels))
    assert scores["probs"].min() >= 0.0 and scores["probs"].max() <= 1.0
    # chance: the most frequent label ranked first for every paper (0.54 on this slice)
    chance = scores["y"].mean(axis=0).max()
    assert metrics["test"]["precision_at_1"] > max(0.3, chance + 0.15), (metrics["test"]["precision_at_1"], chance)
    assert metrics["test"]["roc_auc_macro"] > 0.6  # 0.66 here (TF-IDF 0.82): 627 training rows are few for fastText


def test_fasttext_probabilities_are_in_label_order():
    """Labels with spaces and commas, columns in labels.json order, a label no training row has scores 0;
    the same through the softmax model for single-label data."""
    import pandas as pd

    from papertasks.baseline import fasttext_model, fasttext_text

    labels = ["Object Detection", "Speech, Audio", "Never Seen", "graph neural networks"]
    words = {0: "bounding boxes detector", 1: "waveform speaker audio", 3: "graph nodes message passing"}
    rng = np.random.default_rng(0)
    rows = [(f"{words[c]} {rng.choice(['we', 'propose', 'a', 'new', 'method'])}.", [labels[c]])
            for c in (0, 1, 3) * 20]
    train = pd.DataFrame(rows, columns=["text", "labels"])
    heldout = pd.DataFrame([("A Detector of BOUNDING boxes!", [labels[0]]), ("speaker waveform, audio", [labels[1]]),
                            ("Message passing on graph nodes", [labels[3]])], columns=["text", "labels"])
    assert fasttext_text("A Detector of BOUNDING boxes!\nNew") == "a detector of bounding boxes ! new"
    for single_label in (False, True):
        probs = fasttext_model(labels, single_label, seed=0)(train, heldout)
        assert probs.shape == (3, 4) and probs.min() >= 0.0 and probs.max() <= 1.0
        assert probs.argmax(axis=1).tolist() == [0, 1, 3]
        assert (probs[:, 2] == 0).all()
        if single_label:
            assert probs.sum(axis=1) == pytest.approx(1.0, abs=1e-3)


def test_fasttext_missing_binding_is_a_clean_error(monkeypatch):
    import sys

    import pandas as pd

    from papertasks.baseline import fasttext_model
    from papertasks.errors import UserError

    monkeypatch.setitem(sys.modules, "fasttext", None)  # import fasttext raises ImportError
    frame = pd.DataFrame([("a b", ["x"]), ("c d", ["y"])], columns=["text", "labels"])
    with pytest.raises(UserError, match="pip install fasttext-community"):
        fasttext_model(["x", "y"], False, seed=0)(frame, frame)


def test_embeddings_baseline_cli_reuses_its_cache(small_data, tmp_path):
    from papertasks.embeddings import cache_dir
    from papertasks.paths import offline_base_model

    data = shutil.copytree(small_data, tmp_path / "data")
    args = ("baseline", "--data", data, "--out", tmp_path / "report", "--model", "embeddings", "--min-positives", "3")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    cache = cache_dir(data, offline_base_model(), 128, "head_tail")
    assert cache.parent == data / "embeddings"
    for split, n in EMBEDDING_ROWS.items():
        vectors = np.load(cache / f"{split}.npy")
        assert vectors.shape == (n, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert json.loads((cache / f"{split}.json").read_text())["rows"] == n
    assert first.stderr.count("embeddings: computing") == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    metrics = read_metrics(tmp_path / "report")
    assert metrics["model"] == "all-MiniLM-L6-v2 embeddings (frozen) + logistic regression"
    assert (tmp_path / "report" / "report.md").stat().st_size > 0

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "embeddings: computing" not in second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == mtimes
    assert read_metrics(tmp_path / "report")["test"] == metrics["test"]


def test_embeddings_cache_recomputed_when_the_split_changes(small_data, tmp_path, monkeypatch):
    import papertasks.embeddings as embeddings

    calls = []

    def fake_embed(texts, *args):
        calls.append(len(texts))
        return np.random.default_rng(len(calls)).normal(size=(len(texts), 8)).astype(np.float32)

    monkeypatch.setattr(embeddings, "embed_texts", fake_embed)
    data = shutil.copytree(small_data, tmp_path / "data")
    texts = [json.loads(line)["text"] for line in (data / "valid.jsonl").read_text().splitlines()]
    first = embeddings.cached_embeddings(data, "valid", texts)
    assert np.array_equal(embeddings.cached_embeddings(data, "valid", texts), first) and calls == [30]
    edited = texts[:-1] + [texts[-1] + " Revised."]
    assert not np.array_equal(embeddings.cached_embeddings(data, "valid", edited), first) and calls == [30, 30]
    assert embeddings.cached_embeddings(data, "valid", texts[:20]).shape == (20, 8) and calls == [30, 30, 20]
    embeddings.cached_embeddings(data, "valid", texts[:20], truncation="head")  # another window: its own cache
    assert calls == [30, 30, 20, 20]
    assert embeddings.cached_embeddings(data, "valid", texts[:20]).shape == (20, 8) and len(calls) == 4


def test_embeddings_are_the_sentence_transformers_ones(small_data):
    """Mean pooling + normalization as sentence-transformers does it (texts short enough that no
    window fitting differs)."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from papertasks.embeddings import embed_texts
    from papertasks.paths import offline_base_model

    texts = [json.loads(line)["text"][:300] for line in (small_data / "test.jsonl").read_text().splitlines()][:16]
    expected = sentence_transformers.SentenceTransformer(offline_base_model(), device="cpu").encode(
        texts, normalize_embeddings=True)
    assert np.abs(embed_texts(texts, offline_base_model(), batch_size=5) - expected).max() < 1e-5


@pytest.mark.parametrize("folder, model, folds", [("tiny_data", "tfidf", 3), ("pwc_data", "tfidf", 3),
                                                  ("small_data", "embeddings", 3), ("tiny_data", "fasttext", 2),
                                                  ("pwc_data", "fasttext", 2)])
def test_folds_report_mean_and_std_per_metric(folder, model, folds, request, tmp_path):
    data = request.getfixturevalue(folder)
    result = run_cli("baseline", "--data", data, "--out", tmp_path, "--folds", str(folds), "--model", model)
    assert result.returncode == 0, result.stderr[-3000:]
    cv = json.loads((tmp_path / "cv.json").read_text())
    expected = ({"accuracy", "f1_macro", "f1_weighted", "top3_accuracy", "roc_auc"} if folder == "pwc_data"
                else {"f1_micro", "f1_macro", "precision_at_1", "roc_auc_macro"})
    assert expected <= set(cv["mean"]) and set(cv["mean"]) == set(cv["std"])
    assert cv["folds"] == folds and len(cv["per_fold"]) == folds
    assert cv["model"].startswith("fastText ") == (model == "fasttext")
    assert sum(f["heldout_rows"] for f in cv["per_fold"]) == cv["rows"]
    for metric in expected:
        values = [f["metrics"][metric] for f in cv["per_fold"]]
        assert cv["mean"][metric] == pytest.approx(np.mean(values))
        assert cv["std"][metric] == pytest.approx(np.std(values, ddof=1))
    assert not (tmp_path / "metrics.json").exists()  # the test split is left alone
    assert "| f1_macro |" in (tmp_path / "cv.md").read_text()


def test_fold_splits_survive_rare_classes():
    from papertasks.errors import UserError
    from papertasks.kfold import fold_splits

    one_hot = np.eye(3, dtype=int)[[0] * 10 + [1] * 5 + [2]]  # class c has one member, fewer than 3 folds
    multi = one_hot.copy()
    multi[:4, 1] = 1
    for y, single in ((one_hot, True), (multi, False), (one_hot[[0, 1, 10, 15]], True)):  # last: no class has 3
        folds = fold_splits(y, 3, single, ["a", "b", "c"])
        held = np.concatenate([h for _, h in folds])
        assert len(folds) == 3 and sorted(held) == list(range(len(y)))
        assert all(set(fit).isdisjoint(h) for fit, h in folds)
    with pytest.raises(UserError, match="only 16"):
        fold_splits(one_hot, 20, True, ["a", "b", "c"])


@pytest.mark.parametrize("args, fragment", [
    (("--folds", "1"), "--folds 1"),
    (("--folds", "-2"), "--folds -2"),
    (("--model", "bert"), "--model"),
    (("--base-model", "some/model"), "--base-model"),
    (("--max-train", "0"), "--max-train"),
])
def test_bad_input_is_a_clean_error(args, fragment, tiny_data, tmp_path):
    assert_clean_error(run_cli("baseline", "--data", tiny_data, "--out", tmp_path, *args), "baseline", fragment)


def test_missing_data_is_a_clean_error(tmp_path):
    assert_clean_error(run_cli("baseline", "--data", tmp_path / "nowhere", "--out", tmp_path / "out"), "baseline",
                       "nowhere")


def test_compare_puts_reports_side_by_side_with_the_lead(tiny_data, pwc_data, tmp_path):
    runs = [run_cli("baseline", "--data", tiny_data, "--out", tmp_path / "tfidf", "--min-positives", "3"),
            run_cli("baseline", "--data", tiny_data, "--out", tmp_path / "small", "--max-train", "150",
                    "--min-positives", "3")]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-3000:]
    result = run_cli("compare", tmp_path / "tfidf", tmp_path / "small", "--out", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr[-3000:]
    full, small = read_metrics(tmp_path / "tfidf"), read_metrics(tmp_path / "small")
    compared = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["setting"] for r in compared["rows"]] == ["tuned (default)", "global threshold"] * 2
    per_label = compared["lead"][0]
    assert per_label["against"] == small["model"] and per_label["setting"] == "tuned (default)"
    for metric in ("f1_micro", "f1_macro", "precision_at_1"):
        assert per_label[metric] == pytest.approx(full["test"][metric] - small["test"][metric])
    assert compared["lead"][1]["f1_micro"] == pytest.approx(
        full["test_global_threshold"]["f1_micro"] - small["test_global_threshold"]["f1_micro"])
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert f"| {small['model']} | global threshold | {small['test_global_threshold']['f1_micro']:.3f} |" in table
    assert table in result.stdout

    other = run_cli("baseline", "--data", pwc_data, "--out", tmp_path / "pwc")
    assert other.returncode == 0, other.stderr[-3000:]
    assert_clean_error(run_cli("compare", tmp_path / "tfidf", tmp_path / "pwc"), "compare", "other data")
    assert_clean_error(run_cli("compare", tmp_path / "tfidf", tmp_path / "nowhere"), "compare", "no metrics.json")
    assert_clean_error(run_cli("compare", tmp_path / "tfidf"), "compare", "at least two")


def test_compare_gives_each_lead_a_bootstrap_interval(tiny_data, pwc_data, tmp_path):
    runs = [run_cli("baseline", "--data", tiny_data, "--out", tmp_path / "tfidf", "--min-positives", "3"),
            run_cli("baseline", "--data", tiny_data, "--out", tmp_path / "small", "--max-train", "150",
                    "--min-positives", "3"),
            run_cli("baseline", "--data", pwc_data, "--out", tmp_path / "pwc"),
            run_cli("baseline", "--data", pwc_data, "--out", tmp_path / "pwc_small", "--max-train", "80")]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    for first, other, metric in (("tfidf", "small", "f1_micro"), ("pwc", "pwc_small", "accuracy")):
        result = run_cli("compare", tmp_path / first, tmp_path / other, "--out", tmp_path / f"cmp_{first}",
                         "--bootstrap", "300")
        assert result.returncode == 0, result.stderr[-3000:]
        compared = json.loads((tmp_path / f"cmp_{first}" / "compare.json").read_text())
        assert compared["bootstrap"] == {"resamples": 300, "seed": 0, "without_scores": []}
        for lead in compared["lead"]:
            interval = lead["interval_95"][metric]
            assert interval["low"] <= lead[metric] <= interval["high"] and interval["low"] < interval["high"]
            assert 0 <= interval["first_leads"] <= 1
        cell = f"{100 * lead[metric]:+.1f} ({100 * interval['low']:+.1f} .. {100 * interval['high']:+.1f})"
        assert cell in result.stdout and "paired bootstrap" in result.stdout

    same = run_cli("compare", tmp_path / "tfidf", tmp_path / "tfidf", "--out", tmp_path / "cmp_same")
    assert same.returncode == 0, same.stderr[-3000:]
    for lead in json.loads((tmp_path / "cmp_same" / "compare.json").read_text())["lead"]:
        assert all(v == {"low": 0.0, "high": 0.0, "first_leads": 0.0} for v in lead["interval_95"].values())

    no_intervals = run_cli("compare", tmp_path / "tfidf", tmp_path / "small", "--bootstrap", "0")
    assert no_intervals.returncode == 0 and " .. " not in no_intervals.stdout and "bootstrap" not in no_intervals.stdout

    shutil.copy(tmp_path / "small" / "test_scores.npz", tmp_path / "tfidf" / "test_scores.npz")
    assert_clean_error(run_cli("compare", tmp_path / "tfidf", tmp_path / "small"), "compare", "does not match")
    (tmp_path / "tfidf" / "test_scores.npz").unlink()
    older = run_cli("compare", tmp_path / "tfidf", tmp_path / "small")
    assert older.returncode == 0, older.stderr[-3000:]
    assert " .. " not in older.stdout and "without test_scores.npz" in older.stdout
    assert str(tmp_path / "tfidf") in older.stdout
    assert_clean_error(run_cli("compare", tmp_path / "pwc", tmp_path / "small", "--bootstrap", "-1"), "compare",
                       "--bootstrap -1")


def test_fine_tune_folds_report_mean_and_std(pwc_data, tmp_path):
    """`train --folds 2` on a single-label slice: one small fine-tune per fold, the held-out rows scored."""
    result = run_cli("train", "--data", pwc_data, "--out", tmp_path, "--folds", "2", "--max-train", "60",
                     "--max-length", "32", "--batch-size", "16", "--frozen-epochs", "0", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    cv = json.loads((tmp_path / "cv.json").read_text())
    n_valid = len((pwc_data / "valid.jsonl").read_text().splitlines())
    assert cv["model"] == "fine-tuned all-MiniLM-L6-v2" and cv["problem"] == "multi-class"
    assert cv["rows"] == 60 + n_valid == sum(f["heldout_rows"] for f in cv["per_fold"])
    accuracies = [f["metrics"]["accuracy"] for f in cv["per_fold"]]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert cv["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert cv["std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert not (tmp_path / "model.safetensors").exists()  # cross-validation trains no model to keep
    assert_clean_error(run_cli("train", "--data", pwc_data, "--out", tmp_path, "--folds", "1"), "train", "--folds 1")
