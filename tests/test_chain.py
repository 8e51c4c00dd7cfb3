"""The whole workflow as a user runs it, one CLI call per stage, on a tiny slice of real data:
prepare -> train -> export -> evaluate -> predict -> the app answering through gradio_client."""
from __future__ import annotations

import json
import sys

from apputil import free_port, running_app
from conftest import run_cli, write_jsonl


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_prepare_train_export_predict_app(arxiv_file, tmp_path):
    data, model, bundle = tmp_path / "data", tmp_path / "model", tmp_path / "bundle"
    _ok(run_cli("prepare", arxiv_file, "--out", data, "--max-rows", "600", "--min-count", "15",
                "--labels-json", tmp_path / "json_files" / "labels.json"))
    _ok(run_cli("train", "--data", data, "--out", model, "--max-train", "48", "--max-valid", "24",
                "--max-length", "64", "--batch-size", "16", "--frozen-epochs", "0", "--epochs", "1"))
    _ok(run_cli("export", "--model", model, "--data", data, "--out", bundle, "--parity-texts", "8",
                "--max-prob-diff", "0.5", "--min-same-set", "0"))
    _ok(run_cli("evaluate", "--model", bundle, "--data", data, "--out", tmp_path / "report",
                "--labels-json", tmp_path / "json_files" / "labels.json", "--min-positives", "3", "--update-bundle"))
    assert (tmp_path / "json_files" / "thresholds.json").is_file()

    papers = [json.loads(line) for line in open(data / "test.jsonl")][:10]
    src = write_jsonl(tmp_path / "papers.jsonl", [{"id": p["id"], "text": p["text"]} for p in papers])
    _ok(run_cli("predict", src, "-o", tmp_path / "predictions.jsonl", "--model", bundle))
    predictions = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert [p["id"] for p in predictions] == [p["id"] for p in papers]

    from gradio_client import Client

    port = free_port()
    command = [sys.executable, "-m", "papertasks.cli", "app", "--model", str(bundle), "--port", str(port)]
    with running_app(command, port) as url:
        top, _ = Client(url, verbose=False).predict(papers[0]["text"], 0.5, True, api_name="/classify")
    from deployment.predictor import Predictor

    served = {c["label"]: c["confidence"] for c in top["confidences"]}
    expected = Predictor(bundle).predict([papers[0]["text"]], top_k=10)[0]["scores"]
    assert served == expected  # the app serves exactly what the shared predictor computes
