"""Feedback as people send it: POST /feedback stores a correction in SQLite, concurrent writers and a
killed server lose nothing acknowledged, bad input leaves the database untouched, and
`feedback export` -> `prepare --extra` puts the corrected labels into training."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from unittest import mock

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import REPO, assert_clean_error, run_cli, write_jsonl
from deployment.feedback import DB_ENV, FeedbackStore
from deployment.manifest import bundle_fingerprint
from deployment.predictor import Predictor
from serverutil import api_server
from serving.api import create_app

ARXIV = REPO / "deployment" / "models" / "arxiv"
EXAMPLES = [ex["text"] for ex in json.loads((REPO / "deployment" / "examples.json").read_text())]


def count(db) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


@pytest.fixture(scope="module")
def arxiv():
    return Predictor(ARXIV)


@pytest.fixture
def client(tmp_path):
    db = tmp_path / "feedback.sqlite3"
    with TestClient(create_app(str(ARXIV), feedback_db=str(db))) as c:
        c.db = db
        yield c


def test_a_correction_is_stored_with_what_was_predicted(client, arxiv):
    predicted = arxiv.predict([EXAMPLES[0]])[0]
    wrong, missing = predicted["labels"][:1], ["cs.MM"]
    r = client.post("/feedback", json={"text": EXAMPLES[0], "id": "2602.23523", "wrong": wrong, "missing": missing})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["predicted"] == predicted["labels"] and body["corrected"] == predicted["labels"][1:] + ["cs.MM"]
    assert body["model"] == "arxiv" and body["model_version"] == bundle_fingerprint(ARXIV)
    [stored] = FeedbackStore(client.db).records()
    assert stored["id"] == body["id"] and stored["paper_id"] == "2602.23523" and stored["text"] == EXAMPLES[0]
    assert stored["scores"] == predicted["scores"] and stored["corrected"] == body["corrected"]
    assert (datetime.now(timezone.utc) - datetime.fromisoformat(stored["created"])).total_seconds() < 60
    with sqlite3.connect(client.db) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("body, status, fragment", [
    ({"text": EXAMPLES[0], "missing": ["cs.XX"]}, 422, "missing: unknown label 'cs.XX'"),
    ({"text": EXAMPLES[0], "wrong": ["cs.XX"]}, 422, "wrong: unknown label 'cs.XX'"),
    ({"text": EXAMPLES[0]}, 422, "empty correction"),
    ({"text": EXAMPLES[0], "wrong": [], "missing": []}, 422, "empty correction"),
    ({"text": EXAMPLES[0], "wrong": ["cs.MM"]}, 422, "'cs.MM' was not predicted"),
    ({"text": EXAMPLES[0], "missing": "cs.MM"}, 422, "missing: send a list of label names"),
    ({"text": "x" * 30_000, "missing": ["cs.MM"]}, 422, "30,000 characters; the limit is 20,000"),
    ({"text": "  ", "missing": ["cs.MM"]}, 422, "'text' is empty"),
    ({"text": EXAMPLES[0], "missing": ["cs.MM"], "model": "nope"}, 422, "unknown model"),
    ({"text": EXAMPLES[0], "missing": ["cs.MM"], "extra": 1}, 422, "extra"),
])
def test_bad_feedback_is_a_clear_4xx_and_stores_nothing(client, body, status, fragment):
    r = client.post("/feedback", json=body)
    assert r.status_code == status and fragment in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"] and count(client.db) == 0


def test_a_body_that_is_not_json_stores_nothing(client):
    for content in (b"not json", b"\xff\xfe", b"[1, 2]"):
        r = client.post("/feedback", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422) and "JSON" in r.json()["detail"], r.text
    assert count(client.db) == 0


def test_an_unwritable_database_is_a_one_line_503(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with TestClient(create_app(str(ARXIV), feedback_db=str(blocker / "feedback.sqlite3"))) as c:
        r = c.post("/feedback", json={"text": EXAMPLES[0], "missing": ["cs.MM"]})
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert str(blocker / "feedback.sqlite3") in detail and "cannot be written" in detail and "\n" not in detail
        assert c.post("/predict", json={"text": EXAMPLES[0]}).status_code == 200  # the rest keeps serving
    assert blocker.read_text() == "not a folder"


def _post(url: str, n: int) -> int:
    r = httpx.post(f"{url}/feedback", json={"text": EXAMPLES[n % len(EXAMPLES)], "id": f"p{n}", "missing": ["cs.MM"]},
                   timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_sixteen_concurrent_writers_lose_no_record_and_a_killed_server_keeps_what_it_acknowledged(tmp_path):
    db = tmp_path / "feedback.sqlite3"
    with mock.patch.dict(os.environ, {DB_ENV: str(db)}), api_server(ARXIV, tmp_path) as (url, proc):
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda n: _post(url, n), range(64)))
        assert len(set(ids)) == 64 and count(db) == 64
        assert sorted(r["paper_id"] for r in FeedbackStore(db).records()) == sorted(f"p{n}" for n in range(64))

        acknowledged, stop = [], threading.Event()

        def keep_posting(worker: int):
            n = 1000 + worker * 1000
            while not stop.is_set():
                try:
                    acknowledged.append(_post(url, n))
                except (httpx.HTTPError, AssertionError):
                    return
                n += 1

        threads = [threading.Thread(target=keep_posting, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        while len(acknowledged) < 20:
            threading.Event().wait(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, no shutdown
        proc.proc.wait()
        stop.set()
        for t in threads:
            t.join()
    stored = {r["id"] for r in FeedbackStore(db).records()}
    assert set(ids) | set(acknowledged) <= stored
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_export_then_prepare_extra_trains_on_the_corrections(arxiv_file, arxiv, tmp_path):
    import gzip

    with gzip.open(arxiv_file, "rt", encoding="utf-8") as f:
        papers = [json.loads(line) for line, _ in zip(f, range(300))]
    raw = write_jsonl(tmp_path / "raw.jsonl", papers)
    target = papers[0]
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    text = f"{target['title']}. {target['abstract']}"
    prediction = {"labels": ["cs.CV"], "scores": {"cs.CV": 0.9}}
    from deployment.feedback import record

    store.add(record(arxiv, "arxiv", text, prediction, ["cs.AI"], paper_id=target["id"]))
    store.add(record(arxiv, "arxiv", text, prediction, ["cs.LG", "cs.CL"], paper_id=target["id"]))  # the last wins
    store.add(record(arxiv, "arxiv", "A new paper about graph learning. We learn graphs.", prediction, ["cs.LG"]))
    out = tmp_path / "corrections.jsonl"
    result = run_cli("feedback", "export", "--db", store.path, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["labels"] for r in rows] == [["cs.AI"], ["cs.LG", "cs.CL"], ["cs.LG"]]
    assert rows[2]["id"] == "feedback:3" and rows[0]["predicted"] == ["cs.CV"]

    data = tmp_path / "data"
    result = run_cli("prepare", raw, "--out", data, "--min-count", "1", "--extra", out,
                     "--labels-json", tmp_path / "vocab.json")
    assert result.returncode == 0, result.stderr[-2000:]
    prepared = {r["id"]: r for part in ("train", "valid", "test")
                for r in map(json.loads, (data / f"{part}.jsonl").read_text().splitlines())}
    assert len(prepared) == 301
    assert prepared[target["id"]]["labels"] == ["cs.CL", "cs.LG"] and prepared["feedback:3"]["labels"] == ["cs.LG"]
    cleaning = json.loads((data / "report.json").read_text())["cleaning"]
    assert (cleaning["extra_rows"], cleaning["extra_relabeled"], cleaning["extra_added"]) == (2, 1, 1)


def test_export_errors_are_one_line(tmp_path):
    result = run_cli("feedback", "export", "--db", tmp_path / "none.sqlite3", "--out", tmp_path / "out.jsonl")
    assert_clean_error(result, "feedback", "none.sqlite3: no such file")
    (tmp_path / "junk.sqlite3").write_text("this is not a database")
    result = run_cli("feedback", "export", "--db", tmp_path / "junk.sqlite3", "--out", tmp_path / "out.jsonl")
    assert_clean_error(result, "feedback", "cannot be read")
    assert not (tmp_path / "out.jsonl").exists()
