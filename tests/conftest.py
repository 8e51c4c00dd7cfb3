"""Shared fixtures: tiny slices of the real data in ../shared, and one tiny model trained and
exported once per session (library calls; the chain test runs the same stages through the CLI)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ARXIV = SHARED / "data" / "arxiv_cs.jsonl.gz"
PWC = SHARED / "data" / "pwc_tasks.jsonl"  # one task a paper: the single-label tests
PWC_LEADERBOARD = SHARED / "data" / "pwc_leaderboard_tasks.jsonl.gz"  # several: the shipped pwc bundle

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TRAIN = dict(max_length=64, batch_size=16, lr=2e-4, frozen_epochs=0, epochs=1, max_train=64, max_valid=32)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the real data in ../shared beside the repo")
    return path


@pytest.fixture(scope="session")
def arxiv_file() -> Path:
    return require(ARXIV)


@pytest.fixture(scope="session")
def tiny_data(arxiv_file, tmp_path_factory) -> Path:
    from papertasks.data import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("data")
    prepare(PrepareConfig(inputs=[str(arxiv_file)], out=str(out), max_rows=800, min_count=15,
                          labels_json=str(out / "vocab.json")))
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    from papertasks.train import TrainConfig, train

    return train(TrainConfig(data=str(tiny_data), out=str(tmp_path_factory.mktemp("model")), **TINY_TRAIN))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tiny_data, tmp_path_factory) -> Path:
    """A 64-example model is nearly constant, so int8 parity is checked on the shipped model and
    with real tolerances in test_export; here the tolerances are loose."""
    from export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "model"
    export_bundle(str(tiny_model), str(out), data_dir=str(tiny_data), parity_texts=16,
                  max_prob_diff=0.5, min_same_set=0.0)
    return out


@pytest.fixture(scope="session")
def tiny_pwc_bundle(tmp_path_factory) -> Path:
    """A tiny single-label bundle (one Papers with Code task per paper), built through the CLI as a user
    would: `prepare` finds the data multi-class, `train`, `export` and `evaluate` (which writes the
    top-class thresholds.json the shipped bundle has) follow it."""
    work = tmp_path_factory.mktemp("pwc")
    data, model, bundle = work / "data", work / "model", work / "bundle" / "pwc"
    stages = [("prepare", require(PWC), "--out", data, "--max-rows", "800", "--min-count", "15",
               "--labels-json", work / "labels.json"),
              ("train", "--data", data, "--out", model, "--max-train", "64", "--max-valid", "32", "--max-length", "64",
               "--batch-size", "16", "--lr", "2e-4", "--frozen-epochs", "0", "--epochs", "1"),
              ("export", "--model", model, "--data", data, "--out", bundle, "--parity-texts", "16",
               "--max-prob-diff", "0.5", "--min-same-set", "0"),
              ("evaluate", "--model", bundle, "--data", data, "--out", work / "report",
               "--update-bundle", "--labels-json", work / "labels.json")]
    for stage in stages:
        result = run_cli(*stage)
        assert result.returncode == 0, result.stderr[-3000:]
    return bundle


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """`papertasks ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "papertasks.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def assert_clean_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """Exit 2, no traceback, and one line `papertasks COMMAND: error: ...` naming the problem."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"papertasks {command}: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
