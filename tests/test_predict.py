"""`papertasks predict` and the shared predictor."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from conftest import REPO, assert_clean_error, run_cli, write_jsonl
from deployment.predictor import Predictor, compose_text, tuned_decisions

MODELS = REPO / "deployment" / "models"
EXAMPLES = REPO / "deployment" / "examples.json"


def test_predict_jsonl_keeps_ids_and_order(tiny_bundle, tiny_data, tmp_path):
    rows = [json.loads(line) for line in open(tiny_data / "test.jsonl")][:40]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    result = run_cli("predict", src, "-o", tmp_path / "out.jsonl", "--model", tiny_bundle, "--top-k", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    labels = set(json.loads((tiny_bundle / "labels.json").read_text()))
    for o in out:
        assert len(o["scores"]) == 5 and set(o["scores"]) <= labels
        assert set(o["labels"]) <= labels
        assert list(o["scores"].values()) == sorted(o["scores"].values(), reverse=True)


def test_predict_csv_with_title_and_abstract(tiny_bundle, tmp_path):
    frame = pd.DataFrame({"title": ["Vision transformers for detection", "Parsing with LLMs"],
                          "abstract": ["We detect objects in images.", "We parse sentences."]})
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = run_cli("predict", tmp_path / "in.csv", "-o", tmp_path / "out.jsonl", "--model", tiny_bundle)
    assert result.returncode == 0, result.stderr[-2000:]
    out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [o["id"] for o in out] == [0, 1]
    direct = Predictor(tiny_bundle).predict([compose_text(t, a) for t, a in zip(frame.title, frame.abstract)])
    assert [o["scores"] for o in out] == [d["scores"] for d in direct]


def test_policy_picks_the_bundles_tuned_or_global_thresholds(tiny_bundle, tmp_path):
    """Tuned thresholds that no score reaches and a global one every score passes: `--policy` decides."""
    import shutil

    from export.bundle import record_evaluation

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    labels = Predictor(bundle).labels
    metrics = json.loads((bundle / "metrics.json").read_text()) if (bundle / "metrics.json").is_file() else {}
    record_evaluation(bundle, {"global": 0.0, "per_label": dict.fromkeys(labels, 1.01), "relative_to_top": 0.0}, metrics)
    predictor = Predictor(bundle)
    text = "Vision transformers for object detection. We detect objects in images."
    assert predictor.predict([text])[0]["labels"] == []
    assert sorted(predictor.predict([text], policy="global")[0]["labels"]) == sorted(labels)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": text}])
    for policy, expected in (("tuned", 0), ("global", len(labels))):
        out = tmp_path / f"{policy}.jsonl"
        result = run_cli("predict", src, "-o", out, "--model", bundle, "--policy", policy)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(json.loads(out.read_text())["labels"]) == expected
    assert_clean_error(run_cli("predict", src, "-o", tmp_path / "x.jsonl", "--model", bundle, "--policy", "best"),
                       "predict", "invalid choice: 'best'")


def test_relative_cut_drops_labels_far_below_the_papers_best(tiny_bundle):
    predictor = Predictor(tiny_bundle)
    probs = np.array([[0.9, 0.3, 0.2], [0.25, 0.2, 0.1]], dtype=np.float32)
    cut = np.full(3, 0.15, dtype=np.float32)
    assert tuned_decisions(probs, cut).tolist() == [[True, True, True], [True, True, False]]
    assert tuned_decisions(probs, cut, 0.3).tolist() == [[True, True, False], [True, True, False]]
    assert predictor.relative_to_top == json.loads((tiny_bundle / "thresholds.json").read_text()).get("relative_to_top", 0.0)


def test_a_papers_scores_do_not_depend_on_its_batch():
    """Dynamic int8 quantizes activations with the range of the tensor they are in: the served
    predictor runs each text alone, so a paper gets the same scores, bit for bit, whatever it is sent
    with (the shipped arXiv bundle, whose batched scores moved by up to 0.03)."""
    predictor = Predictor(MODELS / "arxiv")
    texts = [e["text"] for e in json.loads(EXAMPLES.read_text())][:6]
    texts += ["short", "a much longer text about reinforcement learning for robots " * 30]
    alone = np.vstack([predictor.predict_proba([t]) for t in texts])
    for batch_size in (2, 3, 32):
        assert np.array_equal(predictor.predict_proba(texts, batch_size=batch_size), alone)
    assert np.array_equal(predictor.predict_proba(texts[::-1])[::-1], alone)


def test_bad_predict_input_is_clean_and_writes_nothing(tiny_bundle, tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": broken\n')
    assert_clean_error(run_cli("predict", bad_json, "-o", tmp_path / "o1.jsonl", "--model", tiny_bundle),
                       "predict", "bad.jsonl:2: not valid JSON")
    no_text = tmp_path / "notext.csv"  # a header without the text columns: every row would fail
    no_text.write_text("id,body\n1,x\n")
    assert_clean_error(run_cli("predict", no_text, "-o", tmp_path / "o2.jsonl", "--model", tiny_bundle), "predict",
                       "notext.csv: needs a 'text' column or 'title' and 'abstract' columns (found: id, body)")
    assert_clean_error(run_cli("predict", no_text, "-o", tmp_path / "o3.jsonl", "--model", tmp_path / "nomodel"),
                       "predict", "no such model folder")
    assert not list(tmp_path.glob("o*.jsonl")) and not list(tmp_path.glob(".o*"))


def _papers(tiny_data, tmp_path, n=70):
    rows = [json.loads(line) for line in open(tiny_data / "test.jsonl")][:n]
    assert len(rows) == n
    return write_jsonl(tmp_path / "papers.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])


def test_interrupted_predict_resumes_without_redoing_or_duplicating(tiny_bundle, tiny_data, tmp_path, monkeypatch):
    import pytest

    from serving import batch

    src = _papers(tiny_data, tmp_path)
    monkeypatch.setattr(batch, "CHUNK_ROWS", 16)
    batch.predict_file(str(src), str(tmp_path / "clean.jsonl"), str(tiny_bundle))

    real_score, calls = batch._score_chunk, []

    def interrupted(job):
        calls.append(job[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_score(job)

    monkeypatch.setattr(batch, "_score_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.predict_file(str(src), str(tmp_path / "out.jsonl"), str(tiny_bundle))
    assert not (tmp_path / "out.jsonl").exists()
    assert len((tmp_path / "out.jsonl.partial").read_text().splitlines()) == 32
    with open(tmp_path / "out.jsonl.partial", "a") as f:
        f.write('{"id": "torn')  # a kill mid-write leaves a torn line

    calls.clear()
    monkeypatch.setattr(batch, "_score_chunk", lambda job: calls.append(job[0]) or real_score(job))
    assert batch.predict_file(str(src), str(tmp_path / "out.jsonl"), str(tiny_bundle)) == 70
    assert calls == [32, 48, 64]  # only the chunks not done before
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "clean.jsonl").read_text()
    assert not list(tmp_path.glob("out.jsonl.partial*"))


def test_workers_give_the_same_output(tiny_bundle, tiny_data, tmp_path, monkeypatch):
    from serving import batch

    src = _papers(tiny_data, tmp_path, n=64)
    monkeypatch.setattr(batch, "CHUNK_ROWS", 16)
    batch.predict_file(str(src), str(tmp_path / "one.jsonl"), str(tiny_bundle))
    batch.predict_file(str(src), str(tmp_path / "two.jsonl"), str(tiny_bundle), workers=2)
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()


def test_dask_local_cluster_runs_the_same_predictor(tiny_bundle, tiny_data, tmp_path):
    src = _papers(tiny_data, tmp_path, n=60)
    result = run_cli("predict-dask", src, "-o", tmp_path / "parts", "--model", tiny_bundle, "--blocksize", "20KiB",
                     "--local-workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    parts = sorted((tmp_path / "parts").glob("part-*.jsonl"))
    assert len(parts) > 1  # the input was really split
    lines = [json.loads(line) for part in parts for line in part.read_text().splitlines()]
    expected = [json.loads(line) for line in src.read_text().splitlines()]
    assert [line["id"] for line in lines] == [e["id"] for e in expected]
    direct = Predictor(tiny_bundle).predict([e["text"] for e in expected])
    for got, want in zip(lines, direct):  # int8 scales depend on batch-mates: close, not bit-equal
        assert max(abs(got["scores"][k] - want["scores"][k]) for k in want["scores"]) < 0.02
    assert_clean_error(run_cli("predict-dask", src, "-o", tmp_path / "parts", "--model", tiny_bundle),
                       "predict-dask", "not empty")


def test_predict_takes_a_served_model_by_name(tmp_path):
    """`--model pwc` is deployment/models/pwc, as the API's "model": "pwc"."""
    from conftest import REPO

    text = "Deep residual learning. Residual networks for ImageNet classification and COCO object detection."
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "resnet", "text": text}])
    result = run_cli("predict", src, "-o", tmp_path / "out.jsonl", "--model", "pwc")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads((tmp_path / "out.jsonl").read_text())
    expected = Predictor(REPO / "deployment" / "models" / "pwc").predict([text])[0]
    assert out["labels"] == expected["labels"] and out["scores"] == expected["scores"]
