"""`papertasks prepare` on slices of the real data: formats, pruning, splits, aliases, bad input."""
from __future__ import annotations

import gzip
import json
import re

import pandas as pd
import pytest

from conftest import PWC, assert_clean_error, require, run_cli, write_jsonl
from papertasks.data import ARXIV_ALIASES, PrepareConfig, parse_labels, prepare, read_split


@pytest.fixture(scope="module")
def arxiv_rows(arxiv_file):
    with gzip.open(arxiv_file, "rt", encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(3000)]


def _splits(out):
    return {name: read_split(out, name) for name in ("train", "valid", "test")}


def test_time_split_prunes_on_past_rows_and_folds_aliases(arxiv_file, tmp_path):
    report = prepare(PrepareConfig(inputs=[str(arxiv_file)], out=str(tmp_path), min_count=50, split_by="listing_date",
                                   test_from="2026-03-01", labels_json=str(tmp_path / "vocab.json")))
    parts = _splits(tmp_path)
    assert (parts["test"]["date"] >= "2026-03-01").all()
    assert (parts["train"]["date"] < "2026-03-01").all() and (parts["valid"]["date"] < "2026-03-01").all()
    vocab = json.loads((tmp_path / "labels.json").read_text())
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert json.loads((tmp_path / "vocab.json").read_text()) == vocab
    past = pd.concat([parts["train"], parts["valid"]])
    counts = past["labels"].explode().value_counts()
    assert counts.min() >= 50 and set(counts.index) == set(vocab)
    assert not set(vocab) & set(ARXIV_ALIASES), "aliases must be folded into one name"
    assert report["labels_before"] > report["labels_after"] == len(vocab)
    for part in parts.values():
        assert part["labels"].map(lambda labs: 0 < len(labs) and set(labs) <= set(vocab)).all()
    assert (tmp_path / "label_frequency.png").stat().st_size > 5000
    assert "| cs.CV |" in (tmp_path / "report.md").read_text()


def test_valid_from_holds_out_the_latest_training_months(arxiv_file, tmp_path):
    report = prepare(PrepareConfig(inputs=[str(arxiv_file)], out=str(tmp_path), min_count=20, max_rows=6000,
                                   split_by="listing_date", test_from="2026-03-01", valid_from="2026-02-01"))
    parts = _splits(tmp_path)
    assert (parts["train"]["date"] < "2026-02-01").all()
    assert parts["valid"]["date"].between("2026-02-01", "2026-02-31").all()
    assert (parts["test"]["date"] >= "2026-03-01").all()
    train_counts = parts["train"]["labels"].explode().value_counts()
    assert train_counts.min() >= 20, "labels are pruned on the training rows alone"
    assert report["config"]["valid_from"] == "2026-02-01"


@pytest.mark.parametrize("args, expect", [
    (["--valid-from", "2026-02-01"], "--valid-from needs --split-by"),
    (["--split-by", "listing_date", "--test-from", "2026-03-01", "--valid-from", "2026-03-15"], "must come before"),
    (["--split-by", "listing_date", "--test-from", "2026-03-01", "--valid-from", "2001-01-01"], "leaves no training rows"),
])
def test_bad_valid_from_is_one_clean_line(args, expect, arxiv_rows, tmp_path):
    months = ("2026-01-10", "2026-02-10", "2026-03-10")
    src = write_jsonl(tmp_path / "raw.jsonl", [{**row, "listing_date": months[i % 3]} for i, row in enumerate(arxiv_rows[:300])])
    assert_clean_error(run_cli("prepare", src, "--out", tmp_path / "out", "--labels-json", tmp_path / "vocab.json",
                               *args), "prepare", expect)
    assert not (tmp_path / "out").exists() and not (tmp_path / "vocab.json").exists()


def test_ids_stay_strings_and_rows_are_deduplicated(arxiv_rows, tmp_path):
    rows = arxiv_rows[:400]
    trailing_zero = [r["id"] for r in rows if str(r["id"]).endswith("0")]
    assert trailing_zero, "the slice should hold an id like 2503.11730"
    src = write_jsonl(tmp_path / "raw.jsonl", rows + rows[:50])  # 50 exact duplicates
    out = tmp_path / "out"
    report = prepare(PrepareConfig(inputs=[str(src)], out=str(out), labels_json=None))
    assert report["cleaning"]["duplicates_dropped"] == 50
    ids = set(pd.concat(_splits(out).values())["id"])
    assert ids <= {str(r["id"]) for r in rows}
    assert set(trailing_zero) & ids


def test_random_split_is_stratified(arxiv_rows, tmp_path):
    src = write_jsonl(tmp_path / "raw.jsonl", arxiv_rows)
    prepare(PrepareConfig(inputs=[str(src)], out=str(tmp_path / "out"), min_count=30, valid_frac=0.1, test_frac=0.2,
                          labels_json=None))
    parts = _splits(tmp_path / "out")
    total = sum(len(p) for p in parts.values())
    assert abs(len(parts["test"]) / total - 0.2) < 0.02
    for label in json.loads((tmp_path / "out" / "labels.json").read_text()):
        n = {name: part["labels"].map(lambda labs: label in labs).sum() for name, part in parts.items()}
        assert n["train"] > 0 and n["test"] > 0, (label, n)


def test_csv_with_delimited_labels_and_top_k(arxiv_rows, tmp_path):
    frame = pd.DataFrame({"paper_id": [str(r["id"]) for r in arxiv_rows], "title": [r["title"] for r in arxiv_rows],
                          "abstract": [r["abstract"] for r in arxiv_rows],
                          "tags": ["; ".join(r["categories"]) for r in arxiv_rows]})
    frame.to_csv(tmp_path / "raw.csv.gz", index=False)
    prepare(PrepareConfig(inputs=[str(tmp_path / "raw.csv.gz")], out=str(tmp_path / "out"), label_field="tags",
                          top_k=5, labels_json=None))
    vocab = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert len(vocab) == 5 and "cs.CV" in vocab
    train = read_split(tmp_path / "out", "train")
    assert train["text"].iloc[0].count(". ") >= 1  # 'Title. Abstract'


def test_parquet_and_single_label_pwc(tmp_path):
    rows = [json.loads(line) for line in require(PWC).read_text().splitlines()[:600]]
    pd.DataFrame(rows).to_parquet(tmp_path / "pwc.parquet")
    prepare(PrepareConfig(inputs=[str(tmp_path / "pwc.parquet")], out=str(tmp_path / "out"), min_count=10,
                          labels_json=None))
    train = read_split(tmp_path / "out", "train")
    assert train["labels"].map(len).eq(1).all()  # task_id: one task per paper
    assert set(train["id"]) <= {r["arxiv_id"] for r in rows}


def test_parse_labels_forms():
    assert parse_labels("cs.CL, cs.LG") == ["cs.CL", "cs.LG"]
    assert parse_labels("a|b") == ["a", "b"]
    assert parse_labels('["x", "y"]') == ["x", "y"]
    assert parse_labels(["x", " "]) == ["x"]
    assert parse_labels(None) == []


@pytest.mark.parametrize("case", ["missing_columns", "no_labels_left", "unreadable", "missing_file"])
def test_bad_input_is_one_clean_line_and_writes_nothing(case, arxiv_rows, tmp_path):
    out = tmp_path / "out"
    if case == "missing_columns":
        src = write_jsonl(tmp_path / "raw.jsonl", [{"id": 1, "body": "x", "categories": ["cs.CL"]}])
        expect = "no 'text' column"
    elif case == "no_labels_left":
        src = write_jsonl(tmp_path / "raw.jsonl", arxiv_rows[:200])
        expect = "no label has at least --min-count 100000"
    elif case == "unreadable":
        src = tmp_path / "raw.jsonl"
        src.write_bytes(b"\x00\xff\xfe binary \x89PNG")
        expect = "cannot read it as JSONL"
    else:
        src = tmp_path / "nope.jsonl"
        expect = "no such file"
    args = ["prepare", src, "--out", out, "--labels-json", tmp_path / "vocab.json"]
    if case == "no_labels_left":
        args += ["--min-count", "100000"]
    assert_clean_error(run_cli(*args), "prepare", expect)
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "vocab.json").exists()


def test_papers_with_code_leaderboard_file_as_it_is(tmp_path):
    """The multi-label Papers with Code file read as it is: `tasks` the labels, `arxiv_id` the id,
    `yymm` the time split; rows whose tasks are all pruned are counted, and the arithmetic adds up."""
    from conftest import PWC_LEADERBOARD

    out = tmp_path / "pwc"
    result = run_cli("prepare", require(PWC_LEADERBOARD), "--out", out, "--min-count", "16", "--split-by", "yymm",
                     "--test-from", "2022-01", "--labels-json", tmp_path / "labels.json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["problem"] == "multi-label" and 120 <= report["labels_after"] <= 170
    rows = {name: [json.loads(line) for line in open(out / f"{name}.jsonl")] for name in ("train", "valid", "test")}
    assert all(r["date"] >= "2022-01" for r in rows["test"])
    assert all(r["date"] < "2022-01" for r in rows["train"] + rows["valid"])
    assert all(re.fullmatch(r"\d{4}\.\d{4,5}|[a-z\-]+(\.[A-Z]{2})?/\d{7}", str(r["id"])) for r in rows["test"][:50])
    kept = sum(map(len, rows.values()))
    assert report["rows_dropped_no_label_left"] == report["rows_before_pruning"] - kept > 0
    assert "rows left with no label after pruning (dropped): " in (out / "report.md").read_text()
    assert (out / "label_frequency.png").stat().st_size > 1000
    assert sum(len(r["labels"]) > 1 for r in rows["train"]) > 500  # several tasks a paper
