"""Explanations by sentence occlusion through the served predictor: the contributions are the served
probabilities' differences, computed in one batched run, and the faithfulness bench runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from deployment.explain import MAX_UNITS, WORD_SENTENCES, explain, highlights, sentence_spans
from deployment.inputs import InputError
from deployment.predictor import Predictor

ARXIV = REPO / "deployment" / "models" / "arxiv"
EXAMPLE = json.loads((REPO / "deployment" / "examples.json").read_text())[0]["text"]


@pytest.fixture(scope="module")
def arxiv():
    return Predictor(ARXIV)


def test_sentences_split_at_full_stops_but_not_after_abbreviations():
    text = ("Deep nets, e.g. transformers, fail. We fix them (i.e. Fig. 2 shows it). Results hold "
            "for e.g. ResNet et al. Code: https://x.org/a.b. Done!")
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "Deep nets, e.g. transformers, fail.", "We fix them (i.e. Fig. 2 shows it).",
        "Results hold for e.g. ResNet et al. Code: https://x.org/a.b.", "Done!"]
    assert sentence_spans("no full stop at all") == [(0, 19)]


def test_contributions_are_the_served_probability_without_each_sentence(arxiv):
    runs = []
    original = arxiv.logits_of_windows
    arxiv.logits_of_windows = lambda windows: runs.append(len(windows)) or original(windows)
    try:
        result = explain(arxiv, EXAMPLE, labels=["cs.CR"])
    finally:
        del arxiv.logits_of_windows
    sentences = result["sentences"]
    assert len(runs) == 1 and 1 < runs[0] <= len(sentences) + 1  # one run; windows the same are run once
    assert len(sentences) == 10 and sentences[-1]["text"].startswith("The code is available")
    assert all(result["text"][s["start"]:s["end"]] == s["text"] for s in sentences)

    served = arxiv.predict([EXAMPLE])[0]
    explained = [e["label"] for e in result["labels"]]
    assert explained == served["labels"] + ["cs.CR"]  # the predicted labels, best first, then the one asked
    assert [e["predicted"] for e in result["labels"]] == [True] * len(served["labels"]) + [False]
    for entry in result["labels"]:
        column = arxiv.labels.index(entry["label"])
        full = arxiv.predict_proba([result["text"]])[0, column]
        assert entry["probability"] == pytest.approx(full, abs=0.01)
        for k in (0, 4, 9):  # the text without sentence k, scored alone
            s = sentences[k]
            rest = result["text"][:s["start"]] + result["text"][s["end"]:]
            assert entry["sentences"][k] == pytest.approx(full - arxiv.predict_proba([rest])[0, column], abs=0.01)


def test_word_refinement_covers_the_top_sentences(arxiv):
    result = explain(arxiv, EXAMPLE, words=True)
    words = result["words"]
    assert words and all(len(e["words"]) == len(words) for e in result["labels"])
    effect = np.abs(np.array([e["sentences"] for e in result["labels"]])).max(axis=0)
    assert {w["sentence"] for w in words} == set(np.argsort(-effect)[:WORD_SENTENCES].tolist())
    assert all(result["text"][w["start"]:w["end"]] == w["text"] for w in words)


def test_highlights_rebuild_the_text_with_scores_in_range(arxiv):
    result = explain(arxiv, EXAMPLE)
    label = result["labels"][0]["label"]
    pieces = highlights(result, label)
    assert "".join(text for text, _ in pieces) == result["text"]
    scores = [score for _, score in pieces if score is not None]
    assert len(scores) == len(result["sentences"]) and max(abs(s) for s in scores) == pytest.approx(1.0)
    assert highlights(result, "not.a.label") == []


def test_long_texts_are_grouped_and_unknown_labels_refused(arxiv):
    long_text = " ".join(f"Sentence number {i} is about graphs." for i in range(200))
    assert len(explain(arxiv, long_text)["sentences"]) <= MAX_UNITS
    for bad in (["cs.XX"], "cs.CV", [3]):
        with pytest.raises(InputError, match="explain_labels"):
            explain(arxiv, EXAMPLE, labels=bad)


def test_faithfulness_bench_runs_on_a_few_papers(tmp_path):
    rows = json.loads((REPO / "deployment" / "examples.json").read_text())
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows[:3]))
    out = tmp_path / "explain.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "explain_faithfulness.py"), "--data", str(data),
                             "--papers", "3", "--resamples", "200", "--word-papers", "1",
                             "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["papers"] == 3 and report["rows"]
    for key in ("top1_vs_random", "top3_vs_random3"):
        low, high = report[key]["ci95"]
        assert low <= report[key]["mean_difference"] <= high
    # the first-ranked sentence's removal, re-scored alone, lowers the label at least as much as a random one's
    assert all(r["top_drop"] >= r["random_drop"] - 0.01 for r in report["rows"])
    assert report["explain_seconds"]["median"] > 0


def test_predict_explain_adds_each_rows_explanation(arxiv, tmp_path):
    from conftest import run_cli, write_jsonl

    papers = write_jsonl(tmp_path / "papers.jsonl", [{"id": "a", "text": EXAMPLE}, {"id": "b", "text": "  "}])
    out = tmp_path / "out.jsonl"
    result = run_cli("predict", papers, "-o", out, "--model", ARXIV, "--explain")
    assert result.returncode == 0, result.stderr[-2000:]
    good, bad = [json.loads(line) for line in out.read_text().splitlines()]
    expected = explain(arxiv, EXAMPLE)
    assert [e["label"] for e in good["explanation"]["labels"]] == good["labels"]
    assert good["explanation"]["labels"][0]["sentences"] == pytest.approx(expected["labels"][0]["sentences"], abs=1e-4)
    assert "error" in bad and "explanation" not in bad


def test_a_job_with_explain_adds_each_rows_explanation(arxiv, tmp_path):
    """POST /jobs with explain=true: a worker explains each scored row as /predict's `explain: true` does."""
    import shutil

    import httpx

    from serverutil import REDIS_SERVER, api_server, redis_server, wait_until, worker

    if not shutil.which("redis-server") and not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    rows = [{"id": "a", "text": EXAMPLE}, {"id": "b", "text": ""}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with redis_server(tmp_path) as (redis_url, _), api_server(ARXIV, tmp_path, "--redis-url", redis_url) as (url, _), \
            worker(ARXIV, redis_url, tmp_path), httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/jobs", files={"file": ("papers.jsonl", data)}, data={"explain": "true"})
        assert r.status_code == 202, r.text
        location = r.headers["Location"]

        def finished():
            answer = client.get(location)
            return answer if answer.status_code != 202 else None

        done = wait_until(finished, 120, "the job")
    assert done.status_code == 200, done.text
    good, bad = done.json()["results"]
    expected = explain(arxiv, EXAMPLE)
    assert good["explanation"]["sentences"] == expected["sentences"]
    assert good["explanation"]["labels"][0]["sentences"] == pytest.approx(expected["labels"][0]["sentences"], abs=1e-4)
    assert "error" in bad and "explanation" not in bad
