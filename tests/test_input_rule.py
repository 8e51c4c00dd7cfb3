"""One rule for an input row (deployment.inputs.read_row), in all five entry points.

The same rows (good ones, and every way a row can be unusable) go through the Gradio app's file upload,
POST /predict/batch, an RQ job, `papertasks predict` and `papertasks predict-dask`: every row comes back,
in input order, with the same id, and the same error wording or the same labels and scores. Whole-file
problems (a malformed JSON line, a CSV header without the text columns) fail the file everywhere, and
the single-text requests (POST /predict, the app's text box) refuse bad text with the rows' messages.
One set of servers (redis-server, `papertasks serve`, one worker, the app) and one local Dask cluster
serve the whole module."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from apputil import free_port, running_app
from conftest import REPO
from deployment.inputs import read_row
from deployment.predictor import Predictor, compose_text
from serverutil import REDIS_SERVER, api_server, redis_server, wait_until, worker


EMPTY = "'text' is empty; send a paper's title and abstract"
LONG = "25,000 characters; the limit is 20,000 (a title and abstract is far shorter)"
NUMBER = "'text' is a number, not a string; send a paper's title and abstract as text"
LIST = "'text' is a list, not a string; send a paper's title and abstract as text"
NUL = "'text' contains a NUL character (U+0000); remove it"
NO_TEXT = "needs a 'text' field or 'title' and 'abstract' fields (found: id)"

GRAPHS = "Graph neural networks for molecules. We predict molecular properties with message passing networks."
DETECT = "Object detection with transformers. We detect objects in images with an attention-based detector."
SPEECH = "Speech recognition at scale. We transcribe audio in many languages with a single sequence model."
PARSE = "Parsing with language models. We parse sentences into syntax trees by prompting a pretrained model."

# (row, expected id, expected error); the 25,000-character row comes first, so predict-dask's 8 KiB blocks
# hold it alone, then an empty block, then all the other rows: those must count their position from 1.
CASES = [
    ({"id": "long", "text": "x" * 25_000}, "long", LONG),
    ({"id": "p1", "text": GRAPHS}, "p1", None),
    ({"id": "blank", "text": ""}, "blank", EMPTY),
    ({"id": "spaces", "text": "  \n\t  "}, "spaces", EMPTY),
    ({"id": "null", "text": None}, "null", EMPTY),
    ({"text": DETECT}, 5, None),  # no id: its position
    ({"id": "", "text": SPEECH}, 6, None),
    ({"id": "   ", "text": PARSE}, 7, None),
    ({"id": "dup", "text": "  Graph   neural networks\nfor  molecules. "}, "dup", None),  # whitespace normalized
    ({"id": "dup", "text": DETECT}, "dup", None),
    ({"id": "number", "text": 42}, "number", NUMBER),
    ({"id": "list", "text": ["Graph networks", "for molecules"]}, "list", LIST),
    ({"id": "nul", "text": "Graph networks\x00 for molecules."}, "nul", NUL),
    ({"id": 1234, "title": "Vision transformers", "abstract": "We detect objects in images."}, 1234, None),
    ({"id": "none"}, "none", NO_TEXT),
    ({"id": None, "arxiv_id": "2401.00001", "text": SPEECH}, "2401.00001", None),
]
ROWS = [row for row, _, _ in CASES]
IDS = [i for _, i, _ in CASES]
ERRORS = [e for _, _, e in CASES]
GOOD = [n for n, e in enumerate(ERRORS) if e is None]
ENTRY_POINTS = ("app", "api", "jobs", "predict", "dask")


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_the_rule_itself():
    """read_row on the cases, and the text it keeps for the good ones."""
    records = [read_row(row, n) for n, row in enumerate(ROWS)]
    assert [r["id"] for r in records] == IDS and [r.get("error") for r in records] == ERRORS
    assert all(r["text"] == "" for r in records if "error" in r)
    assert records[8]["text"] == "Graph neural networks for molecules."
    assert records[13]["text"] == compose_text("Vision transformers", "We detect objects in images.")
    assert read_row({"body": "  "}, 3, text_field="body") == {
        "id": 3, "text": "", "error": "'body' is empty; send a paper's title and abstract"}
    assert read_row({"text": "a"}, 0, text_field="body")["error"] == "no 'body' field (fields: text)"
    assert read_row({"title": "T", "abstract": {"a": 1}}, 0)["error"] == (
        "'abstract' is an object, not a string; send a paper's title and abstract as text")
    assert read_row({"paper_id": 0, "text": "a"}, 5)["id"] == 0  # 0 is an id, not a blank


@pytest.fixture(scope="module")
def servers(tiny_bundle, tmp_path_factory):
    """redis-server, the API (with jobs), one worker and the app; yields (API client, app client)."""
    from gradio_client import Client

    if not shutil.which("redis-server") and not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    logs = tmp_path_factory.mktemp("rule-servers")
    port = free_port()
    app_command = [sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(tiny_bundle),
                   "--host", "127.0.0.1", "--port", str(port)]
    with contextlib.ExitStack() as stack:
        redis_url, _ = stack.enter_context(redis_server(logs))
        api_url, api_proc = stack.enter_context(api_server(tiny_bundle, logs, "--redis-url", redis_url))
        stack.enter_context(worker(tiny_bundle, redis_url, logs))
        app_url = stack.enter_context(running_app(app_command, port))
        api = stack.enter_context(httpx.Client(base_url=api_url, timeout=60))
        yield api, Client(app_url, verbose=False)
        assert "Traceback" not in api_proc.output(), api_proc.output()[-3000:]


@pytest.fixture(scope="module")
def dask_scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def run_job(api, name: str, data: bytes, **form) -> httpx.Response:
    """Submit a file to POST /jobs and wait for its end (any answer but 202)."""
    r = api.post("/jobs", files={"file": (name, data, "application/octet-stream")},
                 data={k: str(v) for k, v in form.items()})
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    return wait_until(lambda: (lambda g: g if g.status_code != 202 else None)(api.get(location)), 60,
                      f"job {location}", interval=0.1)


def from_results_csv(text: str) -> list[dict]:
    """The app's downloadable CSV back to result records (ids are strings there)."""
    records = []
    for row in csv.DictReader(io.StringIO(text)):
        record = {"id": row["id"], "labels": row["labels"].split(";") if row["labels"] else [],
                  "scores": json.loads(row["scores"]) if row["scores"] else {}}
        if row["error"]:
            record["error"] = row["error"]
        records.append(record)
    return records


@pytest.fixture(scope="module")
def outputs(servers, dask_scheduler, tiny_bundle, tmp_path_factory):
    """The cases through each entry point: {entry point: result records}, plus what else each returned."""
    from gradio_client import handle_file

    from serving.batch import predict_file
    from serving.distributed import predict_with_dask

    api, app = servers
    work = tmp_path_factory.mktemp("rule")
    src = work / "rows.jsonl"
    src.write_text(jsonl(ROWS), encoding="utf-8")
    out, extra = {}, {}

    table, download, summary = app.predict(handle_file(str(src)), api_name="/classify_file")
    out["app"] = from_results_csv(Path(download).read_text(encoding="utf-8"))
    extra["app"] = (table, summary)

    r = api.post("/predict/batch", json={"items": ROWS})
    assert r.status_code == 200, r.text
    out["api"] = r.json()["results"]
    extra["api"] = r.json()

    r = run_job(api, "rows.jsonl", src.read_bytes(), top_k=0)
    assert r.status_code == 200, r.text
    out["jobs"] = r.json()["results"]
    extra["jobs"] = r.json()

    assert predict_file(str(src), str(work / "predict.jsonl"), str(tiny_bundle)) == len(ROWS)
    out["predict"] = [json.loads(line) for line in (work / "predict.jsonl").read_text().splitlines()]

    parts = predict_with_dask(str(src), str(work / "dask"), str(tiny_bundle), scheduler=dask_scheduler,
                              blocksize="8KiB")
    extra["dask"] = [[json.loads(line) for line in Path(p).read_text().splitlines()] for p in parts]
    out["dask"] = [record for part in extra["dask"] for record in part]
    return out, extra


def test_every_entry_point_keeps_every_row_in_order_with_the_same_ids(outputs):
    out, extra = outputs
    assert [len(p) for p in extra["dask"]] == [1, 0, len(ROWS) - 1]  # the cases really spanned blocks
    for name in ENTRY_POINTS:
        ids = [r["id"] for r in out[name]]
        assert ids == ([str(i) for i in IDS] if name == "app" else IDS), name  # the app's CSV holds strings
    assert type(out["api"][13]["id"]) is type(out["predict"][13]["id"]) is int  # a number stays a number


def test_every_entry_point_gives_the_same_errors(outputs):
    out, extra = outputs
    for name in ENTRY_POINTS:
        assert [r.get("error") for r in out[name]] == ERRORS, name
        for n, record in enumerate(out[name]):
            if ERRORS[n]:
                assert record["labels"] == [] and record["scores"] == {} and "warnings" not in record, (name, n)
    table, summary = extra["app"]
    assert [row[3] for n, row in enumerate(table["data"]) if ERRORS[n]] == [e for e in ERRORS if e]
    bad = sum(e is not None for e in ERRORS)
    assert f"Scored **{len(GOOD)}** papers; {bad} rows had no usable text" in summary
    assert extra["api"]["errors"] == extra["jobs"]["errors"] == bad
    assert extra["api"]["count"] == extra["jobs"]["count"] == len(ROWS)


def test_good_rows_get_the_same_labels_and_scores(outputs, tiny_bundle):
    """The good rows are scored together in one batch everywhere (predict-dask: all in one block), so
    even int8 scores, whose activation scales depend on the batch, are equal; the app keeps the 10 best."""
    out, _ = outputs
    texts = [read_row(ROWS[n], n)["text"] for n in GOOD]
    expected = Predictor(tiny_bundle).predict(texts)
    for name in ENTRY_POINTS:
        for n, want in zip(GOOD, expected):
            got = out[name][n]
            assert got["labels"] == want["labels"], (name, n)
            top = list(got["scores"])
            assert top == list(want["scores"])[:len(top)] and len(top) >= min(10, len(want["scores"])), (name, n)
            assert got["scores"] == {k: want["scores"][k] for k in top}, (name, n)
    for name in ("app", "api", "jobs"):  # warnings as before: the app, the API and the jobs give them
        assert all(out[name][n].get("warnings", []) == [] for n in GOOD), name
    for name in ("predict", "dask"):
        assert all(set(out[name][n]) == {"id", "labels", "scores"} for n in GOOD), name


def test_single_text_requests_refuse_bad_text_with_the_rows_messages(servers):
    api, app = servers
    for n, error in enumerate(ERRORS):
        if error is None or error == NO_TEXT:  # POST /predict without text fields: an empty text (below)
            continue
        text_fields = {k: v for k, v in ROWS[n].items() if k in ("text", "title", "abstract")}
        r = api.post("/predict", json=text_fields)
        assert (r.status_code, r.json()["detail"]) == (422, error), (n, r.text[:300])
        if isinstance(ROWS[n]["text"], str):  # the app's text box holds strings
            with pytest.raises(Exception, match=re.escape(error)):
                app.predict(ROWS[n]["text"], 0.5, True, api_name="/classify")
    assert api.post("/predict", json={}).json()["detail"] == EMPTY
    assert api.post("/predict", json={"text": ROWS[1]["text"]}).status_code == 200


def test_whole_file_problems_fail_the_file_everywhere(servers, dask_scheduler, tiny_bundle, tmp_path):
    """A malformed JSON line stops the file with its file:line (past a long line and a blank one, and in
    predict-dask past a block boundary); a CSV header without the text columns stops it at once."""
    from gradio_client import handle_file

    from papertasks.errors import UserError
    from serving.batch import predict_file
    from serving.distributed import predict_with_dask

    api, app = servers
    broken = tmp_path / "broken.jsonl"
    broken.write_text(jsonl(ROWS[:2]) + "\n" + '{"id": "b", "text": broken\n' + jsonl(ROWS[2:4]), encoding="utf-8")
    message = "broken.jsonl:4: not valid JSON"
    with pytest.raises(Exception, match=re.escape(message)):
        app.predict(handle_file(str(broken)), api_name="/classify_file")
    r = run_job(api, "broken.jsonl", broken.read_bytes())
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(message), r.text
    with pytest.raises(UserError, match=re.escape(f"{broken}:4: not valid JSON")):
        predict_file(str(broken), str(tmp_path / "out.jsonl"), str(tiny_bundle))
    with pytest.raises(UserError, match=re.escape(f"{broken}:4: not valid JSON")):
        predict_with_dask(str(broken), str(tmp_path / "parts"), str(tiny_bundle), scheduler=dask_scheduler,
                          blocksize="8KiB")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "parts").exists()
    assert not list(tmp_path.glob(".parts*")) and not list(tmp_path.glob("out.jsonl*"))

    no_text = tmp_path / "notext.csv"
    no_text.write_text("id,body\n1,x\n", encoding="utf-8")
    message = "notext.csv: needs a 'text' column or 'title' and 'abstract' columns (found: id, body)"
    with pytest.raises(Exception, match=re.escape(message)):
        app.predict(handle_file(str(no_text)), api_name="/classify_file")
    r = api.post("/jobs", files={"file": ("notext.csv", no_text.read_bytes(), "text/csv")})
    assert r.status_code == 422 and r.json()["detail"] == message
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}/{message}")):
        predict_file(str(no_text), str(tmp_path / "out.jsonl"), str(tiny_bundle))
