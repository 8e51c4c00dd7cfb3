"""bench/time_shift.py on a small time split: its reference variant is the TF-IDF baseline's own report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = str(REPO / "bench" / "time_shift.py")


def test_time_shift_reference_is_the_baseline_report(arxiv_file, tmp_path):
    from papertasks.baseline import run_baseline
    from papertasks.data import PrepareConfig, prepare, read_split

    data = tmp_path / "data"
    prepare(PrepareConfig(inputs=[str(arxiv_file)], out=str(data), max_rows=1500, min_count=15,
                          split_by="listing_date", test_from="2026-03-01", labels_json=str(tmp_path / "vocab.json")))
    out = tmp_path / "time_shift.json"
    result = subprocess.run([sys.executable, BENCH, "--data", str(data), "--rows", "100", "--folds", "3",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    variants = json.loads(out.read_text())["variants"]
    assert list(variants) == ["all training rows", "random 100 training rows", "latest 100 training rows",
                              "all training rows, the latest 100 twice", "100 rows of the test months, 3-fold"]
    assert "| latest 100 training rows | 100 |" in result.stdout

    dates = read_split(data, "train")["date"].sort_values()
    assert variants["latest 100 training rows"]["from_date"] == dates.iloc[-100]

    report = run_baseline(str(data), str(tmp_path / "tfidf"))
    for metric, value in variants["all training rows"]["per-label thresholds"].items():
        assert value == pytest.approx(report["test"][metric], abs=1e-4), metric
    for metric, value in variants["all training rows"]["global threshold"].items():
        assert value == pytest.approx(report["test_global_threshold"][metric], abs=1e-4), metric


def test_time_shift_needs_dated_rows(tiny_data, tmp_path):
    result = subprocess.run([sys.executable, BENCH, "--data", str(tiny_data), "--out", str(tmp_path / "x.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"time_shift: {tiny_data}: rows have no date; prepare it with "
                                                  "--split-by DATE_FIELD --test-from DATE"]
    assert not (tmp_path / "x.json").exists()
