"""The REST API as a user meets it: `papertasks serve` in its own process on 127.0.0.1, no Redis
(the sync endpoints must not need it), every endpoint, every bad input, bundle integrity, a registry
of a multi-label and a single-label model, and a short run of the load test."""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys

import httpx
import pytest

from apputil import free_port, models_folder
from conftest import REPO, assert_clean_error, run_cli
from deployment.manifest import bundle_fingerprint, read_manifest
from deployment.predictor import BundleError, Predictor, compose_text
from deployment.registry import TOP_CLASSES
from serverutil import api_server

EXAMPLES = [ex["text"] for ex in json.loads((REPO / "deployment" / "examples.json").read_text())]
CHINESE = "基于深度学习的卫星图像目标检测。我们提出了一种基于卷积神经网络的新方法，并在三个公开数据集上评估了其性能。"
FRENCH = ("Apprentissage profond pour la détection d'objets dans les images satellitaires. Nous proposons une "
          "nouvelle méthode fondée sur les réseaux de neurones convolutifs et évaluons ses performances.")


@contextlib.contextmanager
def api_client(model, folder):
    """An httpx client on a real server for `model`; the server must have logged no traceback."""
    with api_server(model, folder) as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


@pytest.fixture(scope="module")
def api(tiny_bundle, tmp_path_factory):
    with api_client(tiny_bundle, tmp_path_factory.mktemp("api")) as client:
        yield client


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    return Predictor(tiny_bundle)


def test_predict_serves_what_the_predictor_computes(api, predictor):
    r = api.post("/predict", json={"text": EXAMPLES[0]})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predictor.predict([EXAMPLES[0]])[0]
    assert body["scores"] == expected["scores"] and body["labels"] == expected["labels"]
    assert body["warnings"] == []
    assert list(body["scores"]) == predictor.labels or len(body["scores"]) == len(predictor.labels)

    title, abstract = "Vision transformers for object detection", "We detect objects in  images.\n"
    r = api.post("/predict", json={"title": title, "abstract": abstract})
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == predictor.predict([compose_text(title, abstract)])[0]["scores"]
    r = api.post("/predict", json={"abstract": abstract})  # either part alone is a text too
    assert r.status_code == 200 and r.json()["scores"] == predictor.predict([abstract])[0]["scores"]


def test_threshold_and_top_k(api, predictor):
    r = api.post("/predict", json={"text": EXAMPLES[1], "threshold": 0.0, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["scores"]) == 3
    probs = predictor.predict_proba([EXAMPLES[1]])[0]
    assert body["labels"] == [predictor.labels[i] for i in (-probs).argsort()]  # all pass a threshold of 0
    body = api.post("/predict", json={"text": EXAMPLES[1], "threshold": 1.0}).json()
    assert body["labels"] == [] and len(body["scores"]) == len(predictor.labels)
    body = api.post("/predict", json={"text": EXAMPLES[1], "top_k": 1000}).json()  # capped at the label count
    assert len(body["scores"]) == len(predictor.labels)


def test_batch_keeps_ids_and_order(api, predictor):
    items = [EXAMPLES[0], {"id": "p2", "text": EXAMPLES[1]}, {"title": "Speech recognition", "abstract": EXAMPLES[2]},
             {"id": 7, "text": EXAMPLES[3]}]
    r = api.post("/predict/batch", json={"items": items, "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 4 and [x["id"] for x in body["results"]] == [0, "p2", 2, 7]
    texts = [EXAMPLES[0], EXAMPLES[1], compose_text("Speech recognition", EXAMPLES[2]), EXAMPLES[3]]
    expected = predictor.predict(texts, top_k=2)
    assert [x["scores"] for x in body["results"]] == [e["scores"] for e in expected]
    assert [x["labels"] for x in body["results"]] == [e["labels"] for e in expected]


def test_health_labels_and_docs(api, predictor, tiny_bundle):
    answer = api.get("/health")
    health = answer.json()
    assert health["status"] == "ok" and health["model"]["labels"] == len(predictor.labels)
    # the bundle by name and version, never where it lies on the server (issue 21)
    assert health["model"]["name"] == tiny_bundle.name and health["model"]["fingerprint"] == bundle_fingerprint(tiny_bundle)
    assert "path" not in health["model"] and str(tiny_bundle.parent) not in answer.text
    assert health["model"]["integrity"].startswith("verified")
    assert health["redis"] == {"configured": False, "url": None} and health["jobs"] == "unavailable"
    assert health["limits"]["max_batch"] == 256 and health["limits"]["max_text_chars"] == 20_000
    labels = api.get("/labels").json()
    assert labels["labels"] == predictor.labels and labels["count"] == len(predictor.labels)
    assert set(labels["thresholds"]) == set(predictor.labels)
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/labels", "/health", "/jobs", "/jobs/{job_id}"} <= set(paths)


BAD_REQUESTS = [
    # (what, json body or raw bytes, status, fragment of the one-line detail)
    ("empty text", {"text": ""}, 422, "'text' is empty"),
    ("whitespace text", {"text": "  \n\t  "}, 422, "'text' is empty"),
    ("empty title and abstract", {"title": " ", "abstract": ""}, 422, "is empty"),
    ("nothing", {}, 422, "is empty"),
    ("1 MB text", {"text": "word " * 209_716}, 422, "characters; the limit is 20,000"),
    ("text and title", {"text": "a paper", "title": "a title"}, 422, "not both"),
    ("a number as text", {"text": 5}, 422, "'text' is a number, not a string"),
    ("a list as abstract", {"title": "T", "abstract": ["A"]}, 422, "'abstract' is a list, not a string"),
    ("a NUL in the text", {"text": "Graph\u0000 networks"}, 422, "'text' contains a NUL character"),
    ("misspelt field", {"abstarct": "x"}, 422, "abstarct: Extra inputs are not permitted"),
    ("threshold out of range", {"text": "a paper", "threshold": 2}, 422, "threshold"),
    ("top_k of 0", {"text": "a paper", "top_k": 0}, 422, "top_k"),
    ("broken JSON", b'{"text": "a paper"', 422, "the body is not valid JSON ("),
    ("not UTF-8", b'{"text": "caf\xe9"}', 400, "not UTF-8 JSON"),
    ("binary body", bytes(range(256)) * 4, 422, "the body is not valid JSON"),  # decodes as UTF-32, not JSON
    ("binary, not UTF-anything", b"\xff\xd8\xff\xe0" + bytes(range(128, 256)), 400, "not UTF-8 JSON"),
    ("a JSON list", [1, 2], 422, "the body must be a JSON object"),
    ("a form, not JSON", {"text": "a paper"}, 422, "the body must be a JSON object"),
]


@pytest.mark.parametrize("what,body,status,fragment", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_predict_requests_are_a_clear_4xx(api, what, body, status, fragment):
    if what == "a form, not JSON":
        r = api.post("/predict", data=body)
    elif isinstance(body, bytes):
        r = api.post("/predict", content=body, headers={"Content-Type": "application/json"})
    else:
        r = api.post("/predict", json=body)
    assert r.status_code == status, (r.status_code, r.text[:500])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and fragment in detail, detail
    assert len(r.content) < 2000  # the input is never echoed back


def test_bad_batches_and_limits(api):
    r = api.post("/predict/batch", json={"items": ["a paper"] * 257})
    assert r.status_code == 413 and "257 papers; the limit is 256" in r.json()["detail"]
    r = api.post("/predict/batch", json={"items": []})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    # an unusable item gets its error, as a file row does (tests/test_input_rule.py), the others are scored
    r = api.post("/predict/batch", json={"items": ["fine", {"text": "   "}, "x" * 30_000, {"id": "p3", "text": 5}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 4 and body["errors"] == 3 and [x["id"] for x in body["results"]] == [0, 1, 2, "p3"]
    assert body["results"][0]["scores"] and "error" not in body["results"][0]
    assert [x.get("error") for x in body["results"][1:]] == [
        "'text' is empty; send a paper's title and abstract",
        "30,000 characters; the limit is 20,000 (a title and abstract is far shorter)",
        "'text' is a number, not a string; send a paper's title and abstract as text"]
    assert all(x["labels"] == [] and x["scores"] == {} and "warnings" not in x for x in body["results"][1:])
    r = api.post("/predict/batch", json={"items": ["fine", {"txet": "typo"}]})  # an unknown field: the request
    detail = r.json()["detail"]
    assert r.status_code == 422 and "items.1" in detail and "Extra inputs are not permitted" in detail
    big = b'{"text": "' + b"a" * (9 * 2**20) + b'"}'  # past the 8 MB body limit
    r = api.post("/predict", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "the limit is 8,388,608" in r.json()["detail"]
    assert api.get("/nowhere").status_code == 404
    assert api.get("/predict").status_code == 405


def test_non_english_is_scored_with_a_warning(api):
    for text, fragment in ((CHINESE, "CJK"), (FRENCH, "does not look like English"), ("1234 5678 !!", "no letters")):
        r = api.post("/predict", json={"text": text})
        assert r.status_code == 200, r.text
        assert r.json()["scores"] and len(r.json()["warnings"]) == 1 and fragment in r.json()["warnings"][0]
    r = api.post("/predict/batch", json={"items": [EXAMPLES[0], CHINESE]})
    assert [bool(x["warnings"]) for x in r.json()["results"]] == [False, True]


def test_jobs_without_redis_answer_503_and_the_rest_keeps_serving(api):
    files = {"file": ("papers.csv", b"text\nGraph neural networks for molecules.\n", "text/csv")}
    r = api.post("/jobs", files=files)
    assert r.status_code == 503 and "started without --redis-url" in r.json()["detail"]
    r = api.get("/jobs/0123456789abcdef")
    assert r.status_code == 503
    assert api.post("/predict", json={"text": EXAMPLES[0]}).status_code == 200
    assert api.get("/health").json()["status"] == "ok"


def test_bundle_manifest_covers_every_file_and_refuses_changes(tiny_bundle, tmp_path):
    manifest = read_manifest(tiny_bundle)
    on_disk = {p.name for p in tiny_bundle.iterdir() if p.name != "manifest.json"}
    assert set(manifest["files"]) == on_disk >= {"model.onnx", "tokenizer.json", "labels.json", "config.json",
                                                  "thresholds.json"}
    assert Predictor(tiny_bundle).integrity == f"verified: {len(on_disk)} files"

    changed = tmp_path / "changed"
    shutil.copytree(tiny_bundle, changed)
    original = (changed / "thresholds.json").read_text()
    edited = json.dumps({**json.loads(original), "global": 0.01})
    assert len(edited) <= len(original)
    (changed / "thresholds.json").write_text(edited.ljust(len(original)))  # same size, other content
    with pytest.raises(BundleError, match=r"thresholds.json has a different sha256"):
        Predictor(changed)
    assert_clean_error(run_cli("serve", "--model", changed, "--port", str(free_port())), "serve",
                       "files do not match manifest.json", "thresholds.json has a different sha256")
    assert_clean_error(run_cli("worker", "--model", changed, "--redis-url", "redis://127.0.0.1:1/0"), "worker",
                       "thresholds.json has a different sha256")

    truncated = tmp_path / "truncated"  # a partial copy: a file missing, another cut short
    shutil.copytree(tiny_bundle, truncated)
    (truncated / "MODEL_CARD.md").unlink()
    with open(truncated / "export_report.json", "r+b") as f:
        f.truncate(10)
    error = assert_clean_error(run_cli("serve", "--model", truncated), "serve", "MODEL_CARD.md is missing",
                               "export_report.json has 10 bytes")
    assert "copy it again" in error

    unlisted = tmp_path / "unlisted"  # a served file that the manifest does not know
    shutil.copytree(tiny_bundle, unlisted)
    data = json.loads((unlisted / "manifest.json").read_text())
    del data["files"]["thresholds.json"]
    (unlisted / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="thresholds.json is not listed"):
        Predictor(unlisted)

    labels = tmp_path / "labels"  # labels that do not fit the model: its own message, still one line
    shutil.copytree(tiny_bundle, labels)
    vocab = json.loads((labels / "labels.json").read_text())
    (labels / "labels.json").write_text(json.dumps({**vocab, "extra.label": len(vocab)}))
    assert_clean_error(run_cli("serve", "--model", labels), "serve", f"{len(vocab) + 1} labels but the model has")

    legacy = tmp_path / "legacy"  # written before manifests existed (or its manifest deleted): refused unless allowed
    shutil.copytree(tiny_bundle, legacy)
    (legacy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json, so its files cannot be checked"):
        Predictor(legacy)
    assert Predictor(legacy, allow_unsigned=True).integrity == "unchecked: no manifest.json"
    assert_clean_error(run_cli("serve", "--model", tmp_path / "nowhere"), "serve", "no such model folder")


def test_evaluate_refreshes_the_manifest(tiny_bundle, tiny_data, tmp_path):
    from papertasks.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    assert main(["evaluate", "--model", str(bundle), "--data", str(tiny_data), "--out", str(tmp_path / "report"),
                 "--min-positives", "3", "--update-bundle", "--labels-json", str(tmp_path / "json_files" / "labels.json")]) == 0
    assert "metrics.json" in read_manifest(bundle)["files"]
    assert Predictor(bundle).integrity.startswith("verified")  # thresholds.json changed, the manifest with it


def test_cli_serve_and_worker_setting_errors_are_one_line():
    assert_clean_error(run_cli("worker", "--redis-url", ""), "worker", "pass --redis-url")
    assert_clean_error(run_cli("serve", "--result-ttl", "0"), "serve", "--result-ttl must be positive")


def test_worker_without_redis_is_a_clean_error(tiny_bundle):
    result = run_cli("worker", "--model", tiny_bundle, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert_clean_error(result, "worker", "cannot reach Redis at redis://127.0.0.1:")


def test_load_test_script_runs_against_the_server(api, tmp_path):
    """bench/load_api.py, shortened: 16 concurrent clients, no errors, a table and a JSON report."""
    out = tmp_path / "load.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "load_api.py"), "--url", str(api.base_url),
                             "--concurrency", "16", "--requests", "96", "--out", str(out)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "p95" in result.stdout and "req/s" in result.stdout
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert run["concurrency"] == 16 and run["requests"] == 96 and run["errors"] == 0
    assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p95"] <= run["latency_ms"]["p99"]


def test_cli_predict_refuses_undecodable_files_in_one_line(tiny_bundle, tmp_path):
    latin1 = tmp_path / "papers.csv"
    latin1.write_bytes("text\ncafé naïve\n".encode("latin-1"))
    binary = tmp_path / "papers.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    for path in (latin1, binary):
        assert_clean_error(run_cli("predict", path, "-o", tmp_path / "out.jsonl", "--model", tiny_bundle), "predict",
                           f"{path.name}: not UTF-8 text")
    assert not (tmp_path / "out.jsonl").exists()


def test_batch_file_reader_edge_cases():
    from deployment.inputs import InputError, read_batch_file

    assert read_batch_file("\ufeffid,text\n7,Graph networks\n".encode(), "a.csv") == [{"id": "7", "text": "Graph networks"}]
    assert read_batch_file(b"title\tabstract\nT\tA b\n", "a.tsv") == [{"id": 0, "text": "T. A b"}]
    assert read_batch_file(b'[{"paper_id": "x", "text": "A"}, {"text": "B"}]', "a.json") == [
        {"id": "x", "text": "A"}, {"id": 1, "text": "B"}]
    assert read_batch_file(b'{"arxiv_id": "2401.1", "title": "T", "abstract": null}\n\n', "a.ndjson") == [
        {"id": "2401.1", "text": "T"}]
    # a JSON row without the text fields is that row's error (a CSV header without them fails the file)
    assert read_batch_file(b'{"text": "a"}\n{"body": "b"}\n', "a.jsonl") == [
        {"id": 0, "text": "a"},
        {"id": 1, "text": "", "error": "needs a 'text' field or 'title' and 'abstract' fields (found: body)"}]
    # a line with more cells than the header (an unquoted comma) is that row's error, never shifted columns
    assert read_batch_file(b"text\nfine\nextra,cells,here\n", "a.csv") == [
        {"id": 0, "text": "fine"}, {"id": 1, "text": "", "error": "line 3: 3 cells but the header has 1 column; put "
                                                                 "double quotes around a cell that contains a comma"}]
    cases = [(b'"text\nunclosed', "a.csv", "a.csv:1: not valid CSV (unexpected end of data)", 422),
             (b'text\n"a"b\n', "a.csv", "a.csv:2: not valid CSV", 422),
             (b"text\n" + b"a\n" * 11, "a.csv", "more than 10 rows", 413),
             (b'{"text": "a"}\n[1]\n', "a.jsonl", "a.jsonl:2: expected a JSON object per line", 422),
             (b"id,body\n1,b\n", "a.csv", "a.csv: needs a 'text' column or 'title' and 'abstract' columns", 422)]
    for data, name, fragment, status in cases:
        with pytest.raises(InputError, match=re.escape(fragment)) as error:
            read_batch_file(data, name, max_rows=10)
        assert error.value.status == status, (name, str(error.value))


@pytest.fixture(scope="module")
def two_models(tiny_bundle, tiny_pwc_bundle, tmp_path_factory):
    """A registry as deployment/models, with a third listed bundle that was never exported."""
    return models_folder(tmp_path_factory.mktemp("registry") / "models", arxiv=tiny_bundle, pwc=tiny_pwc_bundle,
                         later=None)


@pytest.fixture(scope="module")
def models_api(two_models, tmp_path_factory):
    with api_client(two_models, tmp_path_factory.mktemp("models-api")) as client:
        yield client


def test_models_lists_what_is_served_with_titles_problem_types_and_label_counts(models_api, tiny_bundle,
                                                                                tiny_pwc_bundle):
    body = models_api.get("/models").json()
    assert body["default"] == "arxiv"
    arxiv, pwc = body["models"]  # in models.json's order; `later` is not exported, so not served
    assert arxiv == {"name": "arxiv", "title": "arXiv category", "description": arxiv["description"], "default": True,
                     "problem_type": "multi_label_classification", "labels": len(Predictor(tiny_bundle).labels),
                     "error": None}
    assert pwc["name"] == "pwc" and pwc["title"] == "Papers with Code task" and pwc["default"] is False
    assert pwc["problem_type"] == "single_label_classification"
    assert pwc["labels"] == len(Predictor(tiny_pwc_bundle).labels)
    assert models_api.get("/health").json()["models"] == ["arxiv", "pwc"]
    assert "/models" in models_api.get("/openapi.json").json()["paths"]


def test_model_field_picks_the_model_and_single_label_answers_its_top_classes(models_api, tiny_bundle,
                                                                              tiny_pwc_bundle):
    arxiv, pwc = Predictor(tiny_bundle), Predictor(tiny_pwc_bundle)
    default = models_api.post("/predict", json={"text": EXAMPLES[0]}).json()
    assert default["model"] == "arxiv" and default == models_api.post(
        "/predict", json={"text": EXAMPLES[0], "model": "arxiv"}).json()
    assert default["scores"] == arxiv.predict([EXAMPLES[0]])[0]["scores"]

    r = models_api.post("/predict", json={"text": EXAMPLES[0], "model": "pwc"})
    assert r.status_code == 200, r.text
    body, expected = r.json(), pwc.predict([EXAMPLES[0]], top_k=TOP_CLASSES)[0]
    assert body["model"] == "pwc" and len(body["labels"]) == 1 and body["labels"] == expected["labels"]
    assert body["scores"] == expected["scores"] and list(body["scores"])[0] == body["labels"][0]
    assert len(body["scores"]) == TOP_CLASSES
    body = models_api.post("/predict", json={"text": EXAMPLES[0], "model": "pwc", "top_k": 1000}).json()
    assert len(body["scores"]) == len(pwc.labels) and body["labels"] == expected["labels"]

    r = models_api.post("/predict/batch", json={"items": EXAMPLES[:3], "model": "pwc", "top_k": 2})
    assert r.status_code == 200 and r.json()["model"] == "pwc"
    assert [x["labels"] for x in r.json()["results"]] == [e["labels"] for e in pwc.predict(EXAMPLES[:3])]
    assert all(len(x["scores"]) == 2 for x in r.json()["results"])
    labels = models_api.get("/labels", params={"model": "pwc"}).json()
    assert labels["model"] == "pwc" and labels["labels"] == pwc.labels


@pytest.mark.parametrize("request_", [
    ("post", "/predict", {"json": {"text": "a paper", "model": "nope"}}),
    ("post", "/predict/batch", {"json": {"items": ["a paper"], "model": "later"}}),  # listed, never exported
    ("get", "/labels", {"params": {"model": "nope"}}),
    ("post", "/jobs", {"files": {"file": ("papers.csv", b"text\nhello\n", "text/csv")}, "data": {"model": "nope"}}),
], ids=["predict", "batch", "labels", "jobs"])
def test_unknown_model_is_a_clear_422(models_api, request_):
    method, path, kwargs = request_
    r = getattr(models_api, method)(path, **kwargs)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("model: unknown model '") and "the models served are: arxiv, pwc" in detail, detail
    assert "GET /models" in detail and "\n" not in detail
    r = models_api.post("/predict", json={"text": "a paper", "model": 5})
    assert r.status_code == 422 and "model: Input should be a valid string" in r.json()["detail"]


def test_a_bad_second_bundle_leaves_the_default_serving(tiny_bundle, tiny_pwc_bundle, tmp_path):
    """Bundles past the default load on first use: a broken one is a 503 naming the problem, not a dead server."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pwc_bundle, broken)
    (broken / "labels.json").write_text(json.dumps({"only-one": 0}))
    folder = models_folder(tmp_path / "models", arxiv=tiny_bundle, pwc=broken)
    with api_server(folder, tmp_path) as (url, proc), httpx.Client(base_url=url, timeout=30) as api:
        assert api.post("/predict", json={"text": EXAMPLES[0]}).status_code == 200
        r = api.post("/predict", json={"text": EXAMPLES[0], "model": "pwc"})
        assert r.status_code == 503 and r.json()["detail"].startswith("model 'pwc' cannot be served: ")
        assert "labels.json has 1 labels but the model has" in r.json()["detail"]
        pwc = api.get("/models").json()["models"][1]
        assert pwc["name"] == "pwc" and pwc["labels"] is None and "labels.json has 1 labels" in pwc["error"]
        assert api.post("/predict", json={"text": EXAMPLES[0], "model": "arxiv"}).status_code == 200
        assert "Traceback" not in proc.output(), proc.output()[-3000:]
    assert_clean_error(run_cli("serve", "--model", models_folder(tmp_path / "empty", arxiv=None)), "serve",
                       "none of the bundles it lists (arxiv) is in")


def test_predict_explains_with_explain_true():
    """`explain: true` adds what deployment.explain computes for the same text and threshold; without
    it the answer is as before; a bad label to explain is a one-line 422."""
    from fastapi.testclient import TestClient

    from deployment.explain import explain
    from serving.api import create_app

    bundle = REPO / "deployment" / "models" / "arxiv"
    arxiv = Predictor(bundle)
    with TestClient(create_app(str(bundle))) as client:
        plain = client.post("/predict", json={"text": EXAMPLES[0]}).json()
        assert "explanation" not in plain
        r = client.post("/predict", json={"text": EXAMPLES[0], "explain": True, "explain_labels": ["cs.MM"],
                                          "threshold": 0.3})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = explain(arxiv, EXAMPLES[0], labels=["cs.MM"], threshold=0.3)
        explained = body["explanation"]
        assert [e["label"] for e in explained["labels"]] == body["labels"] + ["cs.MM"]
        assert explained["sentences"] == expected["sentences"] and explained["text"] == expected["text"]
        for got, want in zip(explained["labels"], expected["labels"]):
            assert got["sentences"] == pytest.approx(want["sentences"], abs=1e-4) and "words" not in got
        words = client.post("/predict", json={"text": EXAMPLES[0], "explain": True, "explain_words": True}).json()
        assert len(words["explanation"]["labels"][0]["words"]) == len(words["explanation"]["words"]) > 0
        for bad, fragment in ((["cs.XX"], "unknown label 'cs.XX'"), ("cs.CV", "explain_labels")):
            r = client.post("/predict", json={"text": EXAMPLES[0], "explain": True, "explain_labels": bad})
            assert r.status_code == 422 and fragment in r.json()["detail"], r.text


def test_arxiv_codes_travel_with_their_names(tiny_bundle, tmp_path):
    """Every arXiv code in the data has its taxonomy name; export writes the names of a bundle's labels
    into label_names.json, the manifest covers it, and the API answers them beside the codes."""
    import gzip

    from fastapi.testclient import TestClient

    from export.taxonomy import ARXIV_CATEGORIES
    from serving.api import create_app

    from conftest import ARXIV

    if ARXIV.exists():
        with gzip.open(ARXIV, "rt", encoding="utf-8") as f:
            codes = {code for line in f for code in json.loads(line)["categories"]}
        assert codes <= set(ARXIV_CATEGORIES), sorted(codes - set(ARXIV_CATEGORIES))
    assert ARXIV_CATEGORIES["cs.IT"] == "Information Theory" and ARXIV_CATEGORIES["cs.CV"] == (
        "Computer Vision and Pattern Recognition")

    shipped = REPO / "deployment" / "models" / "arxiv"
    for bundle in (shipped, tiny_bundle):
        names = json.loads((bundle / "label_names.json").read_text())
        labels = json.loads((bundle / "labels.json").read_text())
        assert list(names) == sorted(labels, key=labels.get) and names == {k: ARXIV_CATEGORIES[k] for k in names}
        assert "label_names.json" in read_manifest(bundle)["files"]
    arxiv = Predictor(shipped)
    assert arxiv.title("cs.IT") == "cs.IT — Information Theory"

    with TestClient(create_app(str(shipped))) as client:
        body = client.post("/predict", json={"text": EXAMPLES[0], "top_k": 3, "explain": True}).json()
        assert body["names"] == {lab: ARXIV_CATEGORIES[lab] for lab in body["scores"]} and len(body["names"]) == 3
        assert all(e["name"] == ARXIV_CATEGORIES[e["label"]] for e in body["explanation"]["labels"])
        assert client.get("/labels").json()["names"]["cs.IT"] == "Information Theory"

    copy = tmp_path / "arxiv"
    shutil.copytree(shipped, copy)
    (copy / "label_names.json").write_text(json.dumps({**names, "cs.CV": "Something Else"}))
    with pytest.raises(BundleError, match="files do not match manifest.json \\(label_names.json has"):
        Predictor(copy)


def test_policy_global_uses_the_bundles_one_threshold(api, predictor):
    """The API's `policy` is the predictor's: `global` gives what the bundle's global threshold gives."""
    expected = predictor.predict(EXAMPLES[:2], policy="global")  # as /predict/batch scores them: one batch
    body = api.post("/predict", json={"text": EXAMPLES[0], "policy": "global"}).json()
    assert body["labels"] == predictor.predict([EXAMPLES[0]], policy="global")[0]["labels"]
    body = api.post("/predict/batch", json={"items": EXAMPLES[:2], "policy": "global"}).json()
    assert [x["labels"] for x in body["results"]] == [e["labels"] for e in expected]
    r = api.post("/predict", json={"text": EXAMPLES[0], "policy": "best"})
    assert r.status_code == 422 and "policy" in r.text
