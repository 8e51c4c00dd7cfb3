"""Issue 21, as a user or an attacker meets it: input that used to give silently wrong answers, one row
that stopped a whole run, outputs that destroyed inputs, formula cells, and count flags that hung or
returned garbage. Each is answered by one clear line (exit 2), a 4xx, or an error row with the rest scored."""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil

import httpx
import pytest

from conftest import assert_clean_error, run_cli, write_jsonl
from deployment.inputs import read_batch_file, read_row, results_to_csv
from serverutil import REDIS_SERVER, api_server, redis_server, wait_until, worker

GOOD = "Graph neural networks for molecules. We predict molecular properties with message passing networks."
SPEECH = "Speech recognition at scale. We transcribe audio in many languages with a single sequence model."
SURROGATE = "contains a lone UTF-16 surrogate (such as \\ud800 in JSON), which is not a character"
EXTRA_CELLS = "line 2: 4 cells but the header has 3 columns; put double quotes around a cell that contains a comma"
# an unquoted comma in the first data row: pandas took the ids for an index and shifted every column
SHIFTED_CSV = "id,title,abstract\np1,Vision, transformers,We detect objects in images.\np2,Speech,We transcribe audio.\n"
# JSON Lines as a client writes them: "\ud800" is a valid JSON escape, but no character
SURROGATE_LINES = ('{"id": "a", "text": "%s"}\n' % GOOD + '{"id": "b", "text": "Graph \\ud800 networks"}\n'
                   + '{"id": "c", "title": "Speech \\udc00", "abstract": "We transcribe."}\n'
                   + '{"id": "d\\ud800", "text": "%s"}\n' % SPEECH + '{"id": "e", "text": "%s"}\n' % SPEECH)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# ---------------------------------------------------------------- A: silent wrong data

def test_the_shared_reader_makes_a_line_with_extra_cells_an_error_row():
    """Uploads (app, /jobs) read it as `predict` does: the line is an error row, never shifted columns."""
    rows = read_batch_file(SHIFTED_CSV.encode(), "papers.csv")
    assert rows == [{"id": "p1", "text": "", "error": EXTRA_CELLS}, {"id": "p2", "text": "Speech. We transcribe audio."}]
    tsv = read_batch_file(b"id\ttext\nx\tone\ttwo\n", "papers.tsv")
    assert tsv[0]["error"].endswith("a cell that contains a tab")


def test_predict_makes_a_line_with_extra_cells_an_error_row(tiny_bundle, tmp_path):
    src = tmp_path / "papers.csv"
    src.write_text(SHIFTED_CSV, encoding="utf-8")
    result = run_cli("predict", src, "-o", tmp_path / "out.jsonl", "--model", tiny_bundle)
    assert result.returncode == 0, result.stderr[-2000:]
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o["id"] for o in out] == ["p1", "p2"]
    assert out[0] == {"id": "p1", "labels": [], "scores": {}, "error": EXTRA_CELLS} and out[1]["scores"]


def test_prepare_stops_at_a_line_with_extra_cells(tmp_path):
    src = tmp_path / "raw.csv"
    src.write_text("id,text,labels\n1,Graph networks,cs.LG\n2,Vision, transformers,cs.CV\n", encoding="utf-8")
    out = tmp_path / "data"
    assert_clean_error(run_cli("prepare", src, "--out", out, "--labels-json", tmp_path / "labels.json"), "prepare",
                       f"{src}:3: 4 cells but the header has 3 columns")
    assert not out.exists() and not (tmp_path / "labels.json").exists()


@pytest.mark.parametrize("command", ["predict", "predict-dask", "evaluate"])
@pytest.mark.parametrize("size", ["0", "-4"])
def test_batch_size_below_one_is_one_line(command, size, tmp_path):
    """-4 used to return uninitialised memory as probabilities, 0 a traceback."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": GOOD}])
    args = {"predict": [src, "-o", tmp_path / "out.jsonl"], "predict-dask": [src, "-o", tmp_path / "parts"],
            "evaluate": ["--data", tmp_path, "--out", tmp_path / "report"]}[command]
    assert_clean_error(run_cli(command, *args, "--batch-size", size), command, f"--batch-size {size}: give at least 1")
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "parts").exists()


def test_non_string_texts_are_error_rows_not_str():
    """One rule (read_row): a number, a list, an object in text / title / abstract is refused, never str()-ed."""
    for field in ("text", "title", "abstract"):
        for value, kind in ((42, "a number"), (["a", "b"], "a list"), ({"a": 1}, "an object"), (True, "a boolean")):
            record = read_row({"id": "x", field: value, **({"title": "T"} if field == "abstract" else {})}, 0)
            assert record["text"] == "" and record["error"].startswith(f"'{field}' is {kind}, not a string"), record


# ---------------------------------------------------------------- B: one bad row does not poison a run

def test_lone_surrogates_make_error_rows():
    rows = [read_row(json.loads(line), n) for n, line in enumerate(SURROGATE_LINES.splitlines())]
    assert [r["id"] for r in rows] == ["a", "b", "c", 3, "e"]  # an id that cannot be written back: its position
    assert [r.get("error", "").split(" contains")[0] for r in rows] == ["", "'text'", "'title'", "the id", ""]
    assert all(SURROGATE in r["error"] for r in rows[1:4])
    assert json.dumps(rows, ensure_ascii=False).encode("utf-8")  # everything kept can be written
    named = read_row(json.loads('{"body\\ud800": "x"}'), 0)  # a field name echoed in the message
    assert named["error"].endswith("(found: body\ufffd)") and named["error"].encode("utf-8")


def test_predict_scores_the_rows_around_a_lone_surrogate(tiny_bundle, tmp_path):
    """It used to crash at the same chunk on every rerun."""
    src = tmp_path / "in.jsonl"
    src.write_text(SURROGATE_LINES, encoding="utf-8")
    result = run_cli("predict", src, "-o", tmp_path / "out.jsonl", "--model", tiny_bundle)
    assert result.returncode == 0, result.stderr[-2000:]
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o["id"] for o in out] == ["a", "b", "c", 3, "e"]
    assert [bool(o["scores"]) for o in out] == [True, False, False, False, True]
    assert all(SURROGATE in o["error"] for o in out[1:4])


@pytest.fixture(scope="module")
def api(tiny_bundle, tmp_path_factory):
    with api_server(tiny_bundle, tmp_path_factory.mktemp("api")) as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


def _post(api, path: str, body: str) -> httpx.Response:
    """A body as a client's JSON encoder writes it, with the escape "\\ud800" kept as it is."""
    return api.post(path, content=body.encode(), headers={"Content-Type": "application/json"})


def test_api_answers_a_lone_surrogate_with_422_and_scores_the_rest_of_a_batch(api):
    r = _post(api, "/predict", '{"text": "Graph \\ud800 networks"}')
    assert r.status_code == 422 and r.json()["detail"] == f"'text' {SURROGATE}; remove it or send the whole character"
    items = ",".join(line for line in SURROGATE_LINES.splitlines())
    r = _post(api, "/predict/batch", f'{{"items": [{items}, "Graph \\udfff"]}}')
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 6 and body["errors"] == 4
    assert [x["id"] for x in body["results"]] == ["a", "b", "c", 3, "e", 5]
    assert [bool(x["scores"]) for x in body["results"]] == [True, False, False, False, True, False]


needs_redis = pytest.mark.skipif(not shutil.which("redis-server") and not os.path.exists(REDIS_SERVER),
                                 reason="redis-server is not installed")


@needs_redis
def test_a_job_scores_the_rows_around_a_lone_surrogate_and_escapes_formula_cells(tiny_bundle, tmp_path):
    """/jobs used to fail the whole job; its CSV wrote `=...` ids verbatim (formula injection)."""
    lines = SURROGATE_LINES + '{"id": "=HYPERLINK(\\"http://x\\")", "text": "%s"}\n' % GOOD
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as (redis_url, _), \
            api_server(tiny_bundle, tmp_path, "--redis-url", redis_url) as (url, proc), \
            worker(tiny_bundle, redis_url, tmp_path), httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/jobs", files={"file": ("papers.jsonl", lines.encode(), "application/octet-stream")})
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        done = wait_until(lambda: (lambda r: r if r.status_code != 202 else None)(client.get(location)), 60, location)
        assert done.status_code == 200, done.text
        assert [x["id"] for x in done.json()["results"]] == ["a", "b", "c", 3, "e", '=HYPERLINK("http://x")']
        assert done.json()["errors"] == 3
        rows = list(csv.DictReader(io.StringIO(client.get(location, params={"format": "csv"}).text)))
        assert [row["id"] for row in rows][-1] == '\'=HYPERLINK("http://x")'
        assert SURROGATE in rows[1]["error"]
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


# ---------------------------------------------------------------- C: outputs that destroy inputs

def test_predict_refuses_outputs_that_would_destroy_something(tiny_bundle, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": GOOD}])
    before = src.read_bytes()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    (tmp_path / "folder").mkdir()
    cases = [(src, "is the input itself"), (link, "is a symbolic link"), ("/dev/null", "is not a regular file"),
             (tmp_path / "folder", "is not a regular file"), (tmp_path / "in.jsonl" / "x.jsonl", "cannot write there")]
    for out, fragment in cases:
        assert_clean_error(run_cli("predict", src, "-o", out, "--model", tiny_bundle), "predict", fragment)
    assert src.read_bytes() == before and target.read_text() == "keep me" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.jsonl", "link.jsonl", "precious.txt"]


def test_a_second_predict_to_the_same_output_is_refused(tiny_bundle, tmp_path):
    """While a run holds the output's lock (as the scrapers lock theirs), another run is refused, not merged."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": GOOD}])
    out = tmp_path / "out.jsonl"
    with open(tmp_path / "out.jsonl.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_clean_error(run_cli("predict", src, "-o", out, "--model", tiny_bundle), "predict",
                           f"{out} is being written by another `papertasks predict`")
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()
    result = run_cli("predict", src, "-o", out, "--model", tiny_bundle)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [o["id"] for o in read_jsonl(out)] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # the lock is gone


def test_prepare_refuses_an_out_folder_holding_its_input(tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl", [{"id": str(i), "text": GOOD, "labels": ["cs.LG"]} for i in range(20)])
    before = src.read_bytes()
    assert_clean_error(run_cli("prepare", src, "--out", tmp_path, "--labels-json", tmp_path / "other" / "labels.json"),
                       "prepare", f"--out {tmp_path} holds the input {src}")
    assert_clean_error(run_cli("prepare", src, "--out", tmp_path / "data", "--labels-json", src), "prepare",
                       f"--labels-json {src} is the input")
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


# ---------------------------------------------------------------- D: CSV formula injection

def test_results_csv_escapes_cells_a_spreadsheet_would_run():
    results = [{"id": "=1+1", "labels": ["-x", "@y"], "scores": {"-x": 0.9, "@y": 0.5}, "warnings": ["+w"]},
               {"id": 7, "labels": [], "scores": {}, "error": "@SUM(A1)"}, {"id": "\tcmd", "labels": [], "scores": {}},
               {"id": "plain", "labels": ["cs.LG"], "scores": {"cs.LG": 0.7}}]
    rows = list(csv.DictReader(io.StringIO(results_to_csv(results))))
    assert [r["id"] for r in rows] == ["'=1+1", "7", "'\tcmd", "plain"]
    assert (rows[0]["labels"], rows[0]["top_label"], rows[0]["warnings"]) == ("'-x;@y", "'-x", "'+w")
    assert rows[1]["error"] == "'@SUM(A1)" and rows[3]["labels"] == "cs.LG" and rows[0]["top_score"] == "0.9"


# ---------------------------------------------------------------- E: a bundle without a manifest

def test_a_bundle_without_a_manifest_is_refused_unless_allowed(tiny_bundle, tiny_data, tmp_path):
    """A deleted manifest.json used to turn the integrity check off silently."""
    from deployment.predictor import BundleError, Predictor

    bare = tmp_path / "bare"
    shutil.copytree(tiny_bundle, bare)
    (bare / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json, so its files cannot be checked"):
        Predictor(bare)
    assert Predictor(bare, allow_unsigned=True).integrity == "unchecked: no manifest.json"
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": GOOD}])
    out = tmp_path / "out.jsonl"
    for command, args in (("predict", [src, "-o", out]), ("serve", []), ("worker", ["--redis-url", "redis://x:1"]),
                          ("evaluate", ["--data", tiny_data, "--out", tmp_path / "report", "--update-bundle"])):
        assert_clean_error(run_cli(command, *args, "--model", bare), command, f"{bare}: no manifest.json")
    assert not out.exists() and not (tmp_path / "report").exists()
    result = run_cli("predict", src, "-o", out, "--model", bare, "--allow-unsigned")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [o["id"] for o in read_jsonl(out)] == ["a"]


# ---------------------------------------------------------------- F: counts, and predict-dask's own inputs

@pytest.mark.parametrize("command, flag, value, fragment", [
    ("predict-dask", "--local-workers", "0", "--local-workers 0: give at least 1"),
    ("predict-dask", "--local-workers", "4096", "--local-workers 4096: this machine has"),
    ("predict", "--workers", "4096", "--workers 4096: this machine has"),
    ("predict", "--workers", "0", "--workers 0: give at least 1"),
    ("predict", "--top-k", "-3", "--top-k -3: give at least 1"),
    ("predict-dask", "--top-k", "0", "--top-k 0: give at least 1"),
    ("predict-dask", "--blocksize", "abc", "--blocksize abc: give a size such as 16MiB")])
def test_counts_and_sizes_out_of_range_are_one_line(command, flag, value, fragment, tmp_path):
    """--local-workers 0 used to wait forever for a worker, --top-k -3 cut the best scores, a bad --blocksize
    was a traceback."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": GOOD}])
    assert_clean_error(run_cli(command, src, "-o", tmp_path / "out", flag, value), command, fragment)
    assert not (tmp_path / "out").exists()


def test_predict_dask_refuses_a_file_as_its_folder_and_a_binary_input(tiny_bundle, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": GOOD}])
    (tmp_path / "taken").write_text("keep me")
    assert_clean_error(run_cli("predict-dask", src, "-o", tmp_path / "taken", "--model", tiny_bundle), "predict-dask",
                       "taken exists and is not a folder")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x00\xff\xfe\x89PNG")
    assert_clean_error(run_cli("predict-dask", binary, "-o", tmp_path / "parts", "--model", tiny_bundle,
                               "--local-workers", "1"), "predict-dask", f"{binary}: a binary file, not JSON Lines")
    assert (tmp_path / "taken").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.jsonl", "in.jsonl", "taken"]


# ---------------------------------------------------------------- G: prepare's edge cases

def _papers(n: int, **fields) -> list[dict]:
    """`n` distinct labeled papers, two labels in turn."""
    return [{"id": str(i), "text": f"{GOOD} Paper {i}.", "labels": [("cs.LG", "cs.CL")[i % 2]], **fields}
            for i in range(n)]


@pytest.mark.parametrize("rows, args, fragment", [
    (_papers(1), [], "1 labeled row left of 1 read"),
    (_papers(2), [], "2 labeled rows left of 2 read"),
    (_papers(40, id="same"), [], "1 labeled row left of 40 read (0 with an unusable text, 39 duplicate ids or texts"),
    (_papers(3), ["--test-frac", "0.8"], "too few labeled rows (3) to hold out --test-frac"),
    (_papers(40), ["--valid-frac", "0"], "--valid-frac 0.0: give a fraction between 0 and 1"),
    (_papers(40), ["--valid-frac", "1"], "--valid-frac 1.0: give a fraction between 0 and 1"),
    (_papers(40), ["--test-frac", "-0.2"], "--test-frac -0.2: give a fraction between 0 and 1"),
    (_papers(40), ["--valid-frac", "0.5", "--test-frac", "0.5"], "their sum must be below 1"),
    (_papers(40), ["--top-k", "-3"], "--top-k -3: give at least 1"),
    (_papers(40), ["--top-k", "0"], "--top-k 0: give at least 1"),
    (_papers(40), ["--top-k", "1"], "only one label (cs.CL) is left of the 2 found"),
    (_papers(40), ["--max-rows", "0"], "--max-rows 0: give at least 1"),
    (_papers(40), ["--max-rows", "-5"], "--max-rows -5: give at least 1"),
    (_papers(40), ["--min-count", "0"], "--min-count 0: give at least 1")])
def test_prepare_edge_cases_are_one_line_and_write_nothing(rows, args, fragment, tmp_path):
    """They used to end in scikit-learn tracebacks (1-2 rows, duplicate ids, a fraction of 0 or 1) or be
    accepted silently (--top-k -3 cut from the wrong end, --max-rows 0 meant no limit)."""
    src = write_jsonl(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "data"
    assert_clean_error(run_cli("prepare", src, "--out", out, "--labels-json", tmp_path / "vocab.json", *args),
                       "prepare", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.jsonl"]


def test_prepare_drops_and_counts_non_string_texts(tmp_path):
    """A number, a list or an object as text, title or abstract used to be str()-ed (or blanked) and trained on."""
    from papertasks.data import parse_labels
    from papertasks.errors import UserError

    rows = _papers(40)
    rows[3]["text"] = 42
    rows[5]["text"] = ["a", "list"]
    rows[7] = {"id": "7", "title": {"an": "object"}, "abstract": "We predict.", "labels": ["cs.CL"]}
    rows[9] = {"id": "9", "title": "Graph networks", "abstract": 3.5, "labels": ["cs.CL"]}
    src = write_jsonl(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "data"
    result = run_cli("prepare", src, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 rows dropped: their text is unusable (the first: raw.jsonl row 3: 'text' is a number, not a string" \
        in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["cleaning"]["unusable_text_dropped"] == 4
    assert "unusable text dropped: 4" in (out / "report.md").read_text()
    kept = {r["id"] for name in ("train", "valid", "test") for r in read_jsonl(out / f"{name}.jsonl")}
    assert kept == {str(i) for i in range(40)} - {"3", "5", "7", "9"}
    assert parse_labels(3) == ["3"] and parse_labels(2.0) == ["2"]  # class ids (a column with gaps is float)
    with pytest.raises(UserError, match="a label value is a dict"):
        parse_labels({"a": 1})


def test_prepare_time_split_drops_and_counts_undated_rows(tmp_path):
    """A row with no date used to become the string "nan", which sorts after any --test-from: it landed in
    the test set."""
    rows = _papers(40)
    for i, row in enumerate(rows):
        row["yymm"] = "2021-06" if i < 30 else "2022-03"
    del rows[4]["yymm"]
    rows[6]["yymm"] = None
    out = tmp_path / "data"
    result = run_cli("prepare", write_jsonl(tmp_path / "raw.jsonl", rows), "--out", out, "--split-by", "yymm",
                     "--test-from", "2022-01", "--min-count", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 rows dropped: no yymm to split by" in result.stderr
    assert json.loads((out / "report.json").read_text())["cleaning"]["undated_dropped"] == 2
    test = {r["id"] for r in read_jsonl(out / "test.jsonl")}
    kept = test | {r["id"] for name in ("train", "valid") for r in read_jsonl(out / f"{name}.jsonl")}
    assert not {"4", "6"} & kept and test <= {str(i) for i in range(30, 40)}


def test_prepare_writes_nothing_outside_its_out_folder(tmp_path):
    """It used to write json_files/<basename of --out>/labels.json in the checkout: two runs whose --out
    folders share a name overwrote each other's vocabulary there (and a tracked file was overwritten)."""
    from conftest import REPO

    name = f"issue21-{tmp_path.name}"
    shared = REPO / "json_files" / name
    try:
        for folder, labels in (("a", ("cs.LG", "cs.CL")), ("b", ("cs.CV", "cs.RO"))):
            src = write_jsonl(tmp_path / f"{folder}.jsonl",
                              [{**row, "labels": [labels[i % 2]]} for i, row in enumerate(_papers(40))])
            result = run_cli("prepare", src, "--out", tmp_path / folder / name)
            assert result.returncode == 0, result.stderr[-2000:]
        assert not shared.exists()
        for folder, labels in (("a", {"cs.LG", "cs.CL"}), ("b", {"cs.CV", "cs.RO"})):
            assert set(json.loads((tmp_path / folder / name / "labels.json").read_text())) == labels
    finally:
        shutil.rmtree(shared, ignore_errors=True)
