"""Async jobs for real: redis-server from the system package, `papertasks serve --redis-url` and
`papertasks worker` processes; the whole job lifecycle, a worker killed mid-job, expiry, bad files,
jobs for a single-label model of a registry, and Redis as documented (serving/redis.conf): jobs and
workers through a Redis restart, a full Redis, and /health counting live workers only."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import shutil
import time
from urllib.parse import urlsplit

import httpx
import pytest

from apputil import models_folder
from conftest import REPO
from deployment.inputs import CSV_COLUMNS, predict_rows, read_batch_file
from deployment.predictor import Predictor
from serverutil import REDIS_CONF, REDIS_SERVER, api_server, redis_server, wait_until, worker

pytestmark = pytest.mark.skipif(not shutil.which("redis-server") and not os.path.exists(REDIS_SERVER),
                                reason="redis-server is not installed (apt-get install redis-server; .ci/run does)")

HEARTBEAT = 0.5  # the API fails a running job whose worker has been silent for 3 x this
SLOW = {"PAPERTASKS_JOB_CHUNK_ROWS": "8", "PAPERTASKS_TEST_CHUNK_DELAY": "0.3"}  # ~40 ms of work, 0.3 s of sleep per 8 rows


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def api(tiny_bundle, redis_url, logs):
    with api_server(tiny_bundle, logs, "--redis-url", redis_url, "--job-heartbeat", str(HEARTBEAT),
                    "--max-upload-mb", "1", "--result-ttl", "120") as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


@pytest.fixture(scope="module")
def papers(tiny_data) -> list[dict]:
    rows = [json.loads(line) for line in open(tiny_data / "test.jsonl")]
    return [{"id": r["id"], "text": r["text"]} for r in rows[:40]]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def submit(api, name: str, data: bytes, **form) -> httpx.Response:
    return api.post("/jobs", files={"file": (name, data, "application/octet-stream")},
                    data={k: str(v) for k, v in form.items()})


def poll(api, location: str, until, timeout: float = 60, **params) -> httpx.Response:
    """GET the job until `until(response)`; every answer on the way must be 202 queued/running."""
    seen = []

    def check():
        r = api.get(location, params=params)
        if until(r):
            return r
        assert r.status_code == 202 and r.json()["status"] in ("queued", "running"), (r.status_code, r.text[:500])
        assert r.headers["Retry-After"] == "1"
        seen.append(r.json()["status"])
        return None

    return wait_until(check, timeout, f"{location} (saw {seen[-3:]})", interval=0.1)


def test_job_lifecycle_queued_running_finished(api, tiny_bundle, redis_url, logs, papers):
    """Queued while no worker runs, then running with progress, then 200 with the results as JSON and CSV."""
    data = jsonl(papers)
    r = submit(api, "papers.jsonl", data)
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    assert location == f"/jobs/{r.json()['id']}" and r.headers["Retry-After"] == "1"
    queued = api.get(location)
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    assert queued.json()["workers"] == 0 and "papertasks worker" in queued.json()["note"]

    with worker(tiny_bundle, redis_url, logs, env=SLOW):
        running = poll(api, location, lambda r: r.json().get("status") == "running"
                       and 0 < (r.json()["progress"]["done"] or 0) < len(papers))
        assert running.json()["progress"]["total"] == len(papers)
        done = poll(api, location, lambda r: r.status_code == 200)
        assert api.get("/health").json()["redis"]["workers"] == 1
    body = done.json()
    assert body["status"] == "finished" and body["count"] == len(papers) and body["errors"] == 0
    assert body["progress"] == {"done": len(papers), "total": len(papers)} and body["expires_at"]
    assert [x["id"] for x in body["results"]] == [p["id"] for p in papers]
    # what the worker returns is what the served predictor computes on the same chunks
    expected = predict_rows(Predictor(tiny_bundle), read_batch_file(data, "papers.jsonl"), top_k=10, chunk_rows=8)
    for got, want in zip(body["results"], expected):
        assert got["labels"] == want["labels"] and got["warnings"] == want["warnings"] == []
        assert got["scores"].keys() == want["scores"].keys()
        assert max(abs(got["scores"][k] - want["scores"][k]) for k in want["scores"]) <= 2e-4

    r = api.get(location, params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="papertasks-{body["id"]}.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert tuple(rows[0]) == CSV_COLUMNS and [row["id"] for row in rows] == [p["id"] for p in papers]
    assert [row["labels"] for row in rows] == [";".join(x["labels"]) for x in body["results"]]
    assert api.get(location, params={"format": "xml"}).status_code == 422


def test_csv_job_with_title_abstract_and_unusable_rows(api, tiny_bundle, redis_url, logs):
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["paper_id", "title", "abstract"])
    writer.writerow(["a1", "Vision transformers", "We detect objects in images with attention."])
    writer.writerow(["a2", "", "   "])  # no text at all
    writer.writerow(["a3", "Long", "word " * 6000])  # 30,000 characters
    writer.writerow(["a4", "卫星图像目标检测", "我们提出了一种基于卷积神经网络的新方法，并在三个公开数据集上评估了其性能。"])
    with worker(tiny_bundle, redis_url, logs):
        r = submit(api, "papers.csv", text.getvalue().encode(), top_k=0, threshold=0.0)
        assert r.status_code == 202, r.text
        body = poll(api, r.headers["Location"], lambda r: r.status_code == 200).json()
    assert body["count"] == 4 and body["errors"] == 2
    a1, a2, a3, a4 = body["results"]
    assert [x["id"] for x in body["results"]] == ["a1", "a2", "a3", "a4"]
    assert len(a1["scores"]) == len(a1["labels"]) == len(json.loads((tiny_bundle / "labels.json").read_text()))
    assert a2["labels"] == [] and "is empty" in a2["error"]
    assert a3["labels"] == [] and "30,0" in a3["error"] and "limit is 20,000" in a3["error"]
    assert a4["scores"] and "CJK" in a4["warnings"][0]


BAD_UPLOADS = [
    # (what, file name, bytes, status, fragment of the detail)
    ("not UTF-8", "papers.csv", "text\ncafé naïve\n".encode("latin-1"), 422, "not UTF-8 text (byte 0xe9 on line 2)"),
    ("binary", "papers.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), 415, "binary file"),
    ("no text columns", "papers.csv", b"name,year\nResNet,2015\n", 422,
     "needs a 'text' column or 'title' and 'abstract' columns (found: name, year)"),
    ("no rows", "papers.csv", b"title,abstract\n", 422, "no rows"),
    ("empty file", "papers.jsonl", b"  \n", 422, "the file is empty"),
    ("first JSONL line broken", "papers.jsonl", b'{"id": 1, "text": \n', 422, "papers.jsonl:1: not valid JSON"),
    ("unknown type", "papers.docx", b"text\nhello\n", 415, "unknown file type"),
    ("past the size limit", "papers.csv", b"text\n" + b"a" * (2**20 + 10) + b"\n", 413, "the upload limit"),
]


@pytest.mark.parametrize("what,name,data,status,fragment", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_refused_at_once(api, what, name, data, status, fragment):
    r = submit(api, name, data)
    assert r.status_code == status, r.text[:500]
    assert fragment in r.json()["detail"] and "\n" not in r.json()["detail"], r.json()["detail"]


def test_bad_job_requests(api):
    r = api.post("/jobs", data={"top_k": "3"})
    assert r.status_code == 422 and "file: Field required" in r.json()["detail"]
    r = submit(api, "papers.csv", b"text\nhello world\n", threshold=2)
    assert r.status_code == 422 and "threshold" in r.json()["detail"]
    r = submit(api, "papers.csv", b"body\nhello world\n", text_field="body")  # another column, named
    assert r.status_code == 202
    r = submit(api, "papers.csv", b"text\nhello world\n", text_field="abstract")
    assert r.status_code == 422 and "no 'abstract' field" in r.json()["detail"]
    for job_id in ("0123456789abcdef0123456789abcdef", "not a job!", "x" * 100):
        r = api.get(f"/jobs/{job_id}")
        assert r.status_code == 404 and "unknown, or its results expired" in r.json()["detail"]


def test_bad_row_deep_in_a_file_fails_the_job_with_422(api, tiny_bundle, redis_url, logs, papers):
    """The API checks the first rows; the worker finds line 30 broken and the job ends failed, 422."""
    lines = jsonl(papers).decode().splitlines(keepends=True)
    lines[29] = '{"id": "x", "text": "unterminated\n'
    with worker(tiny_bundle, redis_url, logs):
        r = submit(api, "papers.jsonl", "".join(lines).encode())
        assert r.status_code == 202, r.text
        failed = poll(api, r.headers["Location"], lambda r: r.status_code != 202)
    assert failed.status_code == 422, failed.text
    error = failed.json()["error"]
    assert failed.json()["status"] == "failed" and error["type"] == "bad_input"
    assert error["message"].startswith("papers.jsonl:30: not valid JSON")


def test_worker_killed_mid_job_fails_the_job_and_a_new_worker_takes_the_next(api, tiny_bundle, redis_url, logs,
                                                                             papers):
    data = jsonl(papers)
    with worker(tiny_bundle, redis_url, logs, env=SLOW, name="doomed") as doomed:
        r = submit(api, "papers.jsonl", data)
        location = r.headers["Location"]
        poll(api, location, lambda r: r.json().get("status") == "running" and (r.json()["progress"]["done"] or 0) >= 8)
        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = time.time()
        failed = poll(api, location, lambda r: r.status_code != 202, timeout=20)
    assert time.time() - killed_at < 10 * HEARTBEAT
    assert failed.status_code == 500, failed.text
    body = failed.json()
    assert body["status"] == "failed" and body["error"]["type"] == "worker_lost"
    assert "stopped after" in body["error"]["message"] and "submit the file again" in body["error"]["message"]
    assert 8 <= body["progress"]["done"] < len(papers)
    assert api.get(location).status_code == 500  # it stays failed, it does not come back as running

    with worker(tiny_bundle, redis_url, logs):  # the queue keeps working with a new worker
        r = submit(api, "papers.jsonl", data)
        done = poll(api, r.headers["Location"], lambda r: r.status_code == 200)
    assert done.json()["count"] == len(papers)


def test_results_expire_after_their_ttl(api, tiny_bundle, redis_url, logs):
    with worker(tiny_bundle, redis_url, logs):
        r = submit(api, "papers.csv", b"text\nGraph neural networks for molecules.\n", ttl=2)
        assert r.status_code == 202 and r.json()["result_ttl_s"] == 2
        location = r.headers["Location"]
        done = poll(api, location, lambda r: r.status_code == 200)
        bad = submit(api, "papers.jsonl", b'{"text": "fine"}\n{"text": broken\n', ttl=2)
        failed = poll(api, bad.headers["Location"], lambda r: r.status_code != 202)
    assert done.json()["count"] == 1 and failed.status_code == 422
    gone = wait_until(lambda: api.get(location).status_code == 404, 10, "the results to expire")
    assert gone
    wait_until(lambda: api.get(bad.headers["Location"]).status_code == 404, 10, "the failure to expire")
    r = submit(api, "papers.csv", b"text\nhello\n", ttl=10**9)  # a client may shorten the TTL, not extend it
    assert r.json()["result_ttl_s"] == 120


def test_without_redis_jobs_answer_503_and_predict_keeps_working(tiny_bundle, tmp_path):
    with redis_server(tmp_path) as (url, redis_proc), \
            api_server(tiny_bundle, tmp_path, "--redis-url", url) as (base, api_proc), \
            httpx.Client(base_url=base, timeout=30) as api:
        r = submit(api, "papers.csv", b"text\nGraph neural networks.\n")
        assert r.status_code == 202
        location = r.headers["Location"]
        assert api.get("/health").json()["redis"]["reachable"] is True
        redis_proc.stop()  # Redis goes away under a running server
        r = submit(api, "papers.csv", b"text\nGraph neural networks.\n")
        assert r.status_code == 503 and "cannot reach Redis at redis://127.0.0.1:" in r.json()["detail"]
        assert "/predict still works" in r.json()["detail"]
        assert api.get(location).status_code == 503
        health = api.get("/health").json()
        assert health["status"] == "ok" and health["redis"]["reachable"] is False and health["jobs"] == "unavailable"
        assert api.post("/predict", json={"text": "Graph neural networks."}).status_code == 200
        assert "Traceback" not in api_proc.output(), api_proc.output()[-3000:]


def test_jobs_pass_the_model_to_workers_that_serve_it(tiny_bundle, tiny_pwc_bundle, redis_url, logs, papers,
                                                      tmp_path):
    """The API stamps each job with its model; a worker with the same registry scores it with that model,
    a worker without it fails the job with a clear message."""
    registry = models_folder(tmp_path / "models", arxiv=tiny_bundle, pwc=tiny_pwc_bundle)
    arxiv_only = models_folder(tmp_path / "arxiv-only", arxiv=tiny_bundle)
    data = jsonl(papers[:10])
    with api_server(registry, logs, "--redis-url", redis_url, "--queue", "models") as (url, proc), \
            httpx.Client(base_url=url, timeout=30) as api:
        with worker(registry, redis_url, logs, "--queue", "models"):
            r = submit(api, "papers.jsonl", data, model="pwc", top_k=3)
            assert r.status_code == 202 and r.json()["model"] == "pwc", r.text
            body = poll(api, r.headers["Location"], lambda r: r.status_code == 200).json()
            default = poll(api, submit(api, "papers.jsonl", data).headers["Location"], lambda r: r.status_code == 200)
        assert body["model"] == "pwc" and body["count"] == 10 and default.json()["model"] == "arxiv"
        expected = Predictor(tiny_pwc_bundle).predict([p["text"] for p in papers[:10]], top_k=3)
        assert [x["labels"] for x in body["results"]] == [e["labels"] for e in expected]
        assert all(len(x["labels"]) == 1 and len(x["scores"]) == 3 for x in body["results"])

        with worker(arxiv_only, redis_url, logs, "--queue", "models"):
            r = submit(api, "papers.jsonl", data, model="pwc")
            failed = poll(api, r.headers["Location"], lambda r: r.status_code != 202)
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "model_mismatch"
        assert "unknown model 'pwc'; the models served are: arxiv" in failed.json()["error"]["message"]
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


def test_a_full_queue_answers_503_and_queues_nothing(redis_url, logs):
    """`--max-queued-jobs 2` and no worker: two uploads wait, the third is refused with 503 and
    Retry-After, and neither its job nor its file reaches Redis; once a job leaves the queue there is room again."""
    import redis

    from serving.jobs import UPLOAD_KEY, make_queue

    shipped = REPO / "deployment" / "models" / "arxiv"
    connection = redis.Redis.from_url(redis_url)
    queue = make_queue(connection, "capped")
    with api_server(shipped, logs, "--redis-url", redis_url, "--queue", "capped", "--max-queued-jobs", "2") \
            as (url, proc), httpx.Client(base_url=url, timeout=30) as api:
        assert api.get("/health").json()["limits"]["max_queued_jobs"] == 2
        first, second = (submit(api, "papers.csv", b"text\nGraph neural networks.\n") for _ in range(2))
        assert first.status_code == second.status_code == 202 and queue.count == 2
        uploads = len(connection.keys(UPLOAD_KEY.format("*")))
        r = submit(api, "papers.csv", b"text\nGraph neural networks.\n")
        assert r.status_code == 503 and r.headers["Retry-After"] == "30", (r.status_code, r.text)
        detail = r.json()["detail"]
        assert r.json() == {"detail": detail} and "\n" not in detail
        assert "queue is full (2 jobs waiting" in detail and "nothing was queued" in detail
        assert queue.count == 2 and len(connection.keys(UPLOAD_KEY.format("*"))) == uploads
        queue.remove(first.json()["id"])
        assert submit(api, "papers.csv", b"text\nGraph neural networks.\n").status_code == 202
        assert "Traceback" not in proc.output(), proc.output()[-3000:]
    queue.empty()


def test_health_counts_live_workers_only(api, tiny_bundle, redis_url, logs):
    """A SIGKILLed worker stays registered in RQ until its key expires (minutes); /health and a queued
    job's `workers` stop counting it once it misses 3 heartbeats."""
    import redis
    from rq import Worker

    from serving.jobs import fetch_job, make_queue

    connection = redis.Redis.from_url(redis_url)
    with worker(tiny_bundle, redis_url, logs, "--heartbeat", "0.5", name="killed") as doomed:
        wait_until(lambda: api.get("/health").json()["redis"]["workers"] == 1, 10, "/health to count the worker")
        time.sleep(1)  # past its first heartbeats
        assert api.get("/health").json()["redis"]["workers"] == 1
        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = time.time()
        wait_until(lambda: api.get("/health").json()["redis"]["workers"] == 0, 10, "/health to drop the worker")
    assert time.time() - killed_at < 5
    assert Worker.count(connection=connection, queue=make_queue(connection)) >= 1  # RQ still lists it
    r = submit(api, "papers.csv", b"text\nGraph neural networks.\n")
    queued = api.get(r.headers["Location"]).json()
    assert queued["status"] == "queued" and queued["workers"] == 0 and "papertasks worker" in queued["note"]
    fetch_job(connection, r.json()["id"]).delete()  # not for the next test's worker


def test_a_queued_job_survives_a_redis_restart(tiny_bundle, tmp_path, papers):
    """With serving/redis.conf (AOF) a job queued while no worker runs is still queued after
    redis-server restarts (202, not a misleading 404), and a worker started afterwards finishes it."""
    with redis_server(tmp_path, REDIS_CONF) as (url, first), \
            api_server(tiny_bundle, tmp_path, "--redis-url", url) as (base, api_proc), \
            httpx.Client(base_url=base, timeout=30) as api:
        r = submit(api, "papers.jsonl", jsonl(papers[:10]))
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        first.stop()  # SIGTERM: Redis writes what it has and exits
        with redis_server(tmp_path, REDIS_CONF, port=urlsplit(url).port):
            queued = api.get(location)
            assert queued.status_code == 202 and queued.json()["status"] == "queued", queued.text
            with worker(tiny_bundle, url, tmp_path):
                done = poll(api, location, lambda r: r.status_code == 200)
        assert done.json()["count"] == 10 and done.json()["errors"] == 0
        assert "Traceback" not in api_proc.output(), api_proc.output()[-3000:]
    assert (tmp_path / "appendonlydir").is_dir()


def test_a_worker_rides_out_a_redis_restart(tiny_bundle, tmp_path, papers):
    """Redis stops under a busy worker and comes back on the same port: the same worker process takes
    the next job, the job it was running ends (failed, or finished) instead of staying 'running', and
    SIGTERM still stops the worker, even while Redis is away."""
    with redis_server(tmp_path, REDIS_CONF) as (url, first), \
            api_server(tiny_bundle, tmp_path, "--redis-url", url, "--job-heartbeat", str(HEARTBEAT)) as (base, _), \
            httpx.Client(base_url=base, timeout=30) as api, \
            worker(tiny_bundle, url, tmp_path, env=SLOW) as survivor:
        location = submit(api, "papers.jsonl", jsonl(papers)).headers["Location"]
        poll(api, location, lambda r: r.json().get("status") == "running" and (r.json()["progress"]["done"] or 0) >= 8)
        first.stop()
        wait_until(lambda: "stopped taking jobs (ConnectionError" in survivor.output(), 30, "the worker to notice")
        with redis_server(tmp_path, REDIS_CONF, port=urlsplit(url).port):
            ended = wait_until(lambda: (r := api.get(location)).status_code != 202 and r, 20, "the job to end")
            assert ended.status_code == 200 or ended.json()["error"]["type"] in ("worker_lost", "worker_error"), \
                ended.text
            r = submit(api, "papers.jsonl", jsonl(papers[:8]))
            assert poll(api, r.headers["Location"], lambda r: r.status_code == 200).json()["count"] == 8
            assert survivor.alive()
        assert survivor.output().count("stopped taking jobs") == 1 and "Traceback" not in survivor.output()
    assert survivor.proc.returncode == 0, survivor.output()[-3000:]


def test_a_full_redis_answers_503_and_keeps_nothing_half_stored(tiny_bundle, tmp_path):
    """At its maxmemory (noeviction, as serving/redis.conf sets) Redis refuses the upload or the job:
    POST /jobs answers 503 with Retry-After, the upload of a refused job is gone, /health answers."""
    import redis

    from serving.jobs import UPLOAD_KEY

    rows = "".join(f"Graph neural networks for molecules, paper {i}.\n" for i in range(6000))
    data = f"text\n{rows}".encode()  # about 300 KB
    with redis_server(tmp_path, REDIS_CONF, "--maxmemory", "4mb") as (url, _), \
            api_server(tiny_bundle, tmp_path, "--redis-url", url) as (base, api_proc), \
            httpx.Client(base_url=base, timeout=30) as api:
        answers = []
        while len(answers) < 20 and 503 not in answers:
            r = submit(api, "papers.csv", data)
            answers.append(r.status_code)
        assert answers[0] == 202 and answers[-1] == 503 and set(answers) == {202, 503}, answers
        assert r.headers["Retry-After"] == "30" and r.json() == {"detail": r.json()["detail"]}
        assert r.json()["detail"] == ("the job store is full (Redis is at its maxmemory); nothing was queued, "
                                      "retry later")
        assert len(redis.Redis.from_url(url).keys(UPLOAD_KEY.format("*"))) == answers.count(202)
        health = api.get("/health")
        assert health.status_code == 200 and health.json()["redis"]["reachable"] is True
        assert health.json()["redis"]["queued"] == answers.count(202)
        assert "Traceback" not in api_proc.output(), api_proc.output()[-3000:]
