"""Limits for a public deployment of the REST API: the per-client request rate (a token bucket, 429 with
Retry-After), and bundle errors answered without this machine's paths. The queue cap on /jobs needs
Redis and is tested in test_jobs.py."""
from __future__ import annotations

import json
import os
import threading

import httpx
import pytest

from apputil import free_port, models_folder
from conftest import REPO, assert_clean_error, run_cli
from serverutil import api_server
from deployment.limits import RATE_LIMIT_ENV, RateSpecError, TokenBucket, parse_rate, retry_after

SHIPPED = REPO / "deployment" / "models"
TEXT = "Graph neural networks for molecule property prediction."


class Clock:
    """A monotonic clock the test moves by hand: no sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate_per_client():
    clock = Clock()
    bucket = TokenBucket(3, 60.0, clock=clock)  # 3/min: a burst of 3, one more every 20 s
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(20.0)
    assert bucket.take("b") == 0.0  # another client has its own bucket
    clock.now += 19.0
    assert bucket.take("a") == pytest.approx(1.0)  # refused requests spend nothing
    clock.now += 1.0
    assert bucket.take("a") == 0.0 and bucket.take("a") > 0
    clock.now += 3600
    assert [bucket.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, never past it
    assert retry_after(0.01) == 1 and retry_after(19.2) == 20 and retry_after(20.0) == 20


def test_token_bucket_is_thread_safe_and_bounded():
    clock = Clock()
    bucket = TokenBucket(100, 60.0, clock=clock, max_keys=50)
    granted = []

    def client():
        granted.append(sum(bucket.take("same") == 0.0 for _ in range(50)))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100  # 400 attempts at once, exactly the burst granted
    for i in range(500):  # a crowd of addresses cannot grow the table without bound
        bucket.take(f"10.0.{i // 256}.{i % 256}")
    assert len(bucket) <= 51


def test_parse_rate():
    assert parse_rate("60/min") == (60, 60.0) and parse_rate(" 5 / s ") == (5, 1.0)
    assert parse_rate("1000/hour") == (1000, 3600.0)
    for off in ("0", "off", "OFF", "", None, 0, "0/min"):
        assert parse_rate(off) is None, off
    for bad in ("60", "sixty/min", "60/fortnight", "-1/s", "1.5/s"):
        with pytest.raises(RateSpecError, match="give requests per unit"):
            parse_rate(bad)


def test_api_answers_429_with_retry_after_past_the_rate(tmp_path):
    """In-process, with the bucket's clock moved by hand: the scoring POSTs share a client's bucket;
    GET endpoints are never counted; time brings the tokens back."""
    from fastapi.testclient import TestClient

    from serving.api import create_app

    clock = Clock()
    app = create_app(str(SHIPPED), rate_limit="3/min", feedback_db=str(tmp_path / "feedback.sqlite3"))
    app.state.limiter.clock = clock
    with TestClient(app) as client:
        assert client.post("/predict", json={"text": TEXT}).status_code == 200
        assert client.post("/predict/batch", json={"items": [TEXT]}).status_code == 200
        assert client.post("/feedback", json={"text": "   "}).status_code == 422  # counted, even when refused later
        for path, body in (("/predict", {"text": TEXT}), ("/predict/batch", {"items": [TEXT]}),
                           ("/feedback", {"text": TEXT, "wrong": ["cs.AI"]}), ("/jobs", None)):
            r = client.post(path, json=body) if body else client.post(path, files={"file": ("a.csv", b"text\nx\n")})
            assert r.status_code == 429, (path, r.status_code, r.text)
            assert r.headers["Retry-After"] == "20"
            assert r.json() == {"detail": r.json()["detail"]} and "\n" not in r.json()["detail"]
            assert "limit is 3/min" in r.json()["detail"] and "retry in 20 s" in r.json()["detail"]
        for path in ("/health", "/models", "/labels", "/"):  # reads are never limited
            assert client.get(path).status_code == 200, path
        assert client.get("/health").json()["limits"]["rate_limit"] == "3/min"
        clock.now += 19.5
        assert client.post("/predict", json={"text": TEXT}).headers["Retry-After"] == "1"
        clock.now += 1.0
        assert client.post("/predict", json={"text": TEXT}).status_code == 200

    app = create_app(str(SHIPPED), rate_limit="off", feedback_db=str(tmp_path / "feedback.sqlite3"))
    assert app.state.limiter is None
    with TestClient(app) as client:
        assert all(client.post("/predict", json={"text": TEXT}).status_code == 200 for _ in range(5))
        assert client.get("/health").json()["limits"]["rate_limit"] == "off"


def test_serve_rate_limit_from_flag_and_environment(tmp_path):
    """A real server, a real socket: `--rate-limit 2/min` refuses the third scoring POST with 429 and
    Retry-After; $PAPERTASKS_RATE_LIMIT sets it when the flag is absent; the default is on."""
    arxiv = SHIPPED / "arxiv"
    with api_server(arxiv, tmp_path, "--rate-limit", "2/min") as (url, proc), httpx.Client(base_url=url) as api:
        assert [api.post("/predict", json={"text": TEXT}).status_code for _ in range(2)] == [200, 200]
        r = api.post("/predict", json={"text": TEXT})
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 30, (r.status_code, r.headers)
        assert "limit is 2/min" in r.json()["detail"]
        assert api.get("/health").status_code == 200
        assert "Traceback" not in proc.output()
    with api_server(arxiv, tmp_path, env={RATE_LIMIT_ENV: "1/hour"}) as (url, _), httpx.Client(base_url=url) as api:
        assert api.post("/predict", json={"text": TEXT}).status_code == 200
        r = api.post("/predict", json={"text": TEXT})
        assert r.status_code == 429 and 3500 <= int(r.headers["Retry-After"]) <= 3600
    with api_server(arxiv, tmp_path, env={RATE_LIMIT_ENV: ""}) as (url, _), httpx.Client(base_url=url) as api:
        assert api.get("/health").json()["limits"]["rate_limit"] == "60/min"  # the default, for a public server
    assert_clean_error(run_cli("serve", "--model", arxiv, "--rate-limit", "lots", "--port", str(free_port())), "serve",
                       "--rate-limit 'lots': give requests per unit, such as 60/min")
    assert_clean_error(run_cli("serve", "--model", arxiv, "--max-queued-jobs", "-1"), "serve",
                       "--max-queued-jobs must be 0 (no cap) or more")


@pytest.mark.parametrize("damage", ["labels", "missing", "manifest"])
def test_bundle_errors_name_the_model_not_the_path(tmp_path, damage):
    """/models and a request for a broken model say what is wrong with it, never where it lies on the server."""
    from fastapi.testclient import TestClient

    from serving.api import create_app

    broken = tmp_path / "secret-place" / "pwc-bundle"
    broken.mkdir(parents=True)
    for f in (SHIPPED / "pwc").iterdir():
        (broken / f.name).symlink_to(f)
    if damage == "labels":
        (broken / "labels.json").unlink()
        (broken / "labels.json").write_text(json.dumps({"only-one": 0}))
        expected = "labels.json has 1 labels but the model has"
    elif damage == "missing":
        (broken / "tokenizer.json").unlink()
        expected = "missing tokenizer.json"
    else:
        (broken / "manifest.json").unlink()
        (broken / "manifest.json").write_text("{not json")
        expected = "manifest.json: not valid JSON"
    folder = models_folder(tmp_path / "models", arxiv=SHIPPED / "arxiv", pwc=broken)
    with TestClient(create_app(str(folder), rate_limit="off", feedback_db=str(tmp_path / "fb.sqlite3"))) as client:
        pwc = client.get("/models").json()["models"][1]
        r = client.post("/predict", json={"text": TEXT, "model": "pwc"})
    assert pwc["name"] == "pwc" and pwc["labels"] is None and expected in pwc["error"], pwc["error"]
    assert r.status_code == 503 and r.json()["detail"].startswith("model 'pwc' cannot be served: ")
    assert expected in r.json()["detail"], r.json()["detail"]
    for shown in (pwc["error"], r.json()["detail"]):
        assert str(tmp_path) not in shown and "secret-place" not in shown and str(REPO) not in shown, shown
        assert os.sep + "models" + os.sep not in shown, shown


def test_jobs_need_the_servers_token_when_it_has_one(tmp_path):
    """With a jobs token, POST /jobs and GET /jobs/{id} answer 401 (one line, WWW-Authenticate: Bearer)
    without the right `Authorization: Bearer`; with it a request gets past the check (here to the 503 of a
    server without Redis). /predict stays open, /health says a token is needed (never which), and
    /docs shows the lock on the /jobs routes alone; without a token nothing changes."""
    from fastapi.testclient import TestClient

    from serving.api import JOBS_TOKEN_ENV, create_app

    token = "s3cret-Token_42"
    upload = {"file": ("a.csv", b"text\nGraph neural networks.\n")}
    app = create_app(str(SHIPPED / "arxiv"), rate_limit="off", jobs_token=token,
                     feedback_db=str(tmp_path / "feedback.sqlite3"))
    with TestClient(app) as client:
        for headers, says in (({}, "need a token: send the header 'Authorization: Bearer TOKEN'"),
                              ({"Authorization": f"Basic {token}"}, "need a token"),
                              ({"Authorization": "Bearer wrong"}, "is not this server's --jobs-token"),
                              ({"Authorization": f"Bearer {token}x"}, "is not this server's --jobs-token"),
                              ({"Authorization": "Bearer t\u00e9".encode()}, "is not this server's --jobs-token")):
            for r in (client.post("/jobs", files=upload, headers=headers), client.get("/jobs/abc", headers=headers)):
                assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (headers, r.text)
                assert list(r.json()) == ["detail"] and says in r.json()["detail"], r.json()
                assert "\n" not in r.json()["detail"] and token not in r.json()["detail"]
        for r in (client.post("/jobs", files=upload, headers={"Authorization": f"Bearer {token}"}),
                  client.get("/jobs/abc", headers={"authorization": f"bearer {token}"})):
            assert r.status_code == 503 and "started without --redis-url" in r.json()["detail"], r.text
        assert client.post("/predict", json={"text": TEXT}).status_code == 200
        health = client.get("/health").json()
        assert health["jobs_need_token"] is True and token not in json.dumps(health)
        spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["jobs token"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and JOBS_TOKEN_ENV in scheme["description"]
    assert spec["paths"]["/jobs"]["post"]["security"] == [{"jobs token": []}]
    assert spec["paths"]["/jobs/{job_id}"]["get"]["security"] == [{"jobs token": []}]
    assert "401" in spec["paths"]["/jobs"]["post"]["responses"] and "security" not in spec["paths"]["/predict"]["post"]

    with TestClient(create_app(str(SHIPPED / "arxiv"), rate_limit="off",
                               feedback_db=str(tmp_path / "feedback.sqlite3"))) as client:
        assert client.post("/jobs", files=upload).status_code == 503  # no token asked
        assert client.get("/health").json()["jobs_need_token"] is False
        assert "security" not in client.get("/openapi.json").json()["paths"]["/jobs"]["post"]


def test_serve_will_not_expose_jobs_beyond_loopback_without_a_token(monkeypatch, capsys):
    """`serve --host 0.0.0.0 --redis-url ...` stops with one line unless it has a token ($PAPERTASKS_JOBS_TOKEN
    or --jobs-token) or --public-jobs says open jobs are meant; on loopback, or without Redis, it starts."""
    import uvicorn

    from papertasks.cli import main
    from serving.api import JOBS_TOKEN_ENV

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app.state.settings, kw["host"])))
    monkeypatch.delenv(JOBS_TOKEN_ENV, raising=False)
    monkeypatch.delenv("PAPERTASKS_REDIS_URL", raising=False)
    redis = ["--redis-url", "redis://127.0.0.1:1/0"]  # nothing listens: serve only warns
    serve = ["serve", "--model", str(SHIPPED / "arxiv"), "--rate-limit", "off"]
    for host in ("0.0.0.0", "::", "192.0.2.7", "api.example.org"):
        assert main([*serve, "--host", host, *redis]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line == (f"papertasks serve: error: --host {host} with --redis-url lets anyone who reaches this "
                        f"server queue jobs and read their results: pass --jobs-token TOKEN (or set "
                        f"${JOBS_TOKEN_ENV}), or --public-jobs if that is intended"), line
    assert main([*serve, "--host", "0.0.0.0", *redis, "--jobs-token", "has space"]) == 2
    assert "--jobs-token: use printable ASCII without spaces" in capsys.readouterr().err
    assert not started

    assert main([*serve, "--host", "localhost", *redis]) == 0
    assert main([*serve, "--host", "0.0.0.0"]) == 0  # no Redis: no jobs to expose
    assert main([*serve, "--host", "0.0.0.0", *redis, "--public-jobs"]) == 0
    monkeypatch.setenv(JOBS_TOKEN_ENV, "from-the-environment")
    assert main([*serve, "--host", "0.0.0.0", *redis]) == 0
    assert main([*serve, "--host", "0.0.0.0", *redis, "--jobs-token", "from-the-flag"]) == 0
    assert [(cfg.jobs_token, host) for cfg, host in started] == [
        (None, "localhost"), (None, "0.0.0.0"), (None, "0.0.0.0"), ("from-the-environment", "0.0.0.0"),
        ("from-the-flag", "0.0.0.0")]
