"""REST API: `papertasks serve` (FastAPI + uvicorn) over the same Predictor as the app and the CLI.

Sync:  POST /predict, POST /predict/batch, GET /labels, GET /health, OpenAPI docs at /docs.
Async: POST /jobs (CSV/JSONL upload) -> 202 + Location; GET /jobs/{id} -> 202 while queued or
       running, 200 with the results (JSON, or CSV with ?format=csv) when done, the failure's status
       (422 bad file, 500 worker lost or failed) when it failed, 404 when unknown or expired.
Jobs need Redis and at least one `papertasks worker`; without Redis the sync endpoints work and the
jobs endpoints answer 503. Every error is JSON {"detail": "one line"}; nothing answers a traceback.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal, Union

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployment.inputs import (MAX_FILE_BYTES, MAX_TEXT_CHARS, InputError, check_file_header, language_warnings,
                               results_to_csv, text_from)
from deployment.manifest import bundle_fingerprint
from deployment.predictor import Predictor

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_BODY_BYTES = 8 * 2**20  # JSON bodies; uploads to /jobs are limited by max_upload_bytes
RESULT_TTL = 3600
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JSON_HINT = 'send Content-Type: application/json and a body like {"text": "Title. Abstract"}'


@dataclass
class Settings:
    redis_url: str | None = None
    queue: str = "papertasks"
    result_ttl: int = RESULT_TTL  # seconds results (and failures) are kept after a job ends
    queue_ttl: int = 3600  # seconds a job may wait for a worker before it is dropped
    job_timeout: int = 3600  # seconds a worker may spend on one job
    job_heartbeat: float = 5.0  # a running job whose worker is silent for 3 x this is failed
    max_batch: int = MAX_BATCH
    max_upload_bytes: int = MAX_FILE_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    poll_after: int = 1  # Retry-After for 202 answers


# ---------------------------------------------------------------- request and response bodies

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paper(_Strict):
    id: Union[str, int, None] = Field(None, description="echoed back in batch results")
    text: str | None = Field(None, description="title and abstract in one string")
    title: str | None = None
    abstract: str | None = None


class PredictRequest(_Strict):
    text: str | None = Field(None, description="title and abstract in one string (or send title + abstract)",
                             examples=["Attention is all you need. We propose a new network architecture, the "
                                       "Transformer, based solely on attention mechanisms."])
    title: str | None = None
    abstract: str | None = None
    threshold: float | None = Field(None, ge=0.0, le=1.0,
                                    description="one global threshold; default: the bundle's tuned per-label ones")
    top_k: int | None = Field(None, ge=1, description="return only the K best scores (default: all labels)")


class BatchRequest(_Strict):
    items: list[Union[str, Paper]] = Field(..., description=f"texts, or objects with id and text or title + "
                                           f"abstract; at most {MAX_BATCH} (the server's --max-batch)")
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)


class Prediction(BaseModel):
    labels: list[str] = Field(..., description="labels whose score is at or above the threshold, best first")
    scores: dict[str, float] = Field(..., description="label -> probability, best first")
    warnings: list[str] = Field(default_factory=list, description="e.g. the text does not look like English")


class BatchPrediction(BaseModel):
    id: Union[str, int, None] = Field(None, description="the item's id, else its index")
    labels: list[str]
    scores: dict[str, float]
    warnings: list[str] = Field(default_factory=list)


class BatchResponse(BaseModel):
    count: int
    results: list[BatchPrediction]


class Problem(BaseModel):
    detail: str


# ---------------------------------------------------------------- app

class _BodyLimit:
    """ASGI middleware: 413 for a body past the limit (checked on Content-Length and while streaming)."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_upload = scope["path"].rstrip("/") == "/jobs"
        limit = self.settings.max_upload_bytes + 64 * 1024 if is_upload else self.settings.max_body_bytes
        what = "upload" if is_upload else "request body"
        shown = self.settings.max_upload_bytes if is_upload else self.settings.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length and length.isdigit() and int(length) > limit:
            return await _problem(413, f"{what} of {int(length):,} bytes; the limit is {shown:,}")(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(f"{what} larger than {shown:,} bytes, the limit")
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge as e:
            if not started:
                await _problem(413, e.detail)(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI's body parsing passes it on."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


def _problem(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_detail(errors) -> tuple[str, list[dict]]:
    """Pydantic errors as one line, without echoing the input (it may be a megabyte of text)."""
    cleaned = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form"))
        cleaned.append({"loc": loc, "msg": e.get("msg", ""), "type": e.get("type", "")})
    if len(cleaned) == 1 and not cleaned[0]["loc"] and cleaned[0]["type"] == "model_attributes_type":
        return f"the body must be a JSON object; {JSON_HINT}", cleaned
    if len(cleaned) == 1 and cleaned[0]["type"] == "json_invalid":
        reason = (errors[0].get("ctx") or {}).get("error", "")
        cleaned[0]["loc"] = f"character {cleaned[0]['loc']}"
        return f"the body is not valid JSON ({reason} at character {cleaned[0]['loc'].split()[-1]}); {JSON_HINT}", cleaned
    parts = [f"{c['loc'] or 'body'}: {c['msg']}" for c in cleaned[:5]]
    more = f" (and {len(cleaned) - 5} more)" if len(cleaned) > 5 else ""
    return "; ".join(parts) + more, cleaned


def _mask(url: str | None) -> str | None:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url) if url else url


def create_app(model_dir: str, predictor: Predictor | None = None, **settings) -> FastAPI:
    """The API for the bundle in `model_dir` (loaded now: a bad bundle raises BundleError here).
    Keyword arguments override Settings (redis_url, result_ttl, max_batch, ...)."""
    cfg = Settings(**settings)
    predictor = predictor or Predictor(model_dir)
    fingerprint = bundle_fingerprint(predictor.model_dir)
    n_labels = len(predictor.labels)

    app = FastAPI(
        title="papertasks",
        version="1.0",
        description=(f"Tags research-paper abstracts with arXiv categories ({n_labels} labels, multi-label). "
                     f"Texts: at most {MAX_TEXT_CHARS:,} characters; batches: at most {cfg.max_batch} items; "
                     f"uploads: at most {cfg.max_upload_bytes:,} bytes. The model is English-only: other "
                     "languages are scored but get a warning."),
    )
    app.add_middleware(_BodyLimit, settings=cfg)
    app.state.predictor, app.state.settings = predictor, cfg
    redis_state = {"connection": None}

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError):
        detail, errors = _validation_detail(exc.errors())
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(InputError)
    async def _on_input(request: Request, exc: InputError):
        return _problem(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = f"the request body is not UTF-8 JSON; {JSON_HINT}"
        return _problem(exc.status_code, detail, headers=getattr(exc, "headers", None))

    try:
        from redis.exceptions import RedisError
    except ImportError:  # the sync API runs without the redis package
        RedisError = None
    if RedisError is not None:
        @app.exception_handler(RedisError)
        async def _on_redis(request: Request, exc: Exception):
            return _problem(503, f"Redis at {_mask(cfg.redis_url)} is unreachable ({type(exc).__name__}); "
                                 "async jobs are unavailable, /predict still works")

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return _problem(500, f"internal error ({type(exc).__name__}); the server logged it")

    def _redis():
        """The Redis connection, or 503 with the reason."""
        if not cfg.redis_url:
            raise HTTPException(503, "async jobs are disabled: this server was started without --redis-url "
                                     "(POST /predict and /predict/batch work without Redis)")
        from papertasks.jobs import redis_connection

        if redis_state["connection"] is None:
            redis_state["connection"] = redis_connection(cfg.redis_url, timeout=1.0)
        try:
            redis_state["connection"].ping()
        except Exception as e:
            raise HTTPException(503, f"cannot reach Redis at {_mask(cfg.redis_url)} ({type(e).__name__}); "
                                     "async jobs are unavailable, /predict still works") from None
        return redis_state["connection"]

    def _predict(texts: list[str], threshold, top_k) -> list[dict]:
        top_k = min(top_k, n_labels) if top_k else None
        results = predictor.predict(texts, threshold=threshold, top_k=top_k)
        return [{**r, "warnings": language_warnings(t)} for t, r in zip(texts, results)]

    error_responses = {413: {"model": Problem}, 422: {"model": Problem}}

    @app.get("/", include_in_schema=False)
    def root() -> dict:
        return {"name": "papertasks", "docs": "/docs", "health": "/health", "labels": "/labels",
                "predict": "POST /predict", "batch": "POST /predict/batch", "jobs": "POST /jobs"}

    @app.post("/predict", response_model=Prediction, responses=error_responses, tags=["predict"],
              summary="Labels and scores for one paper")
    def predict(body: PredictRequest) -> dict:
        text = text_from(body.text, body.title, body.abstract)
        return _predict([text], body.threshold, body.top_k)[0]

    @app.post("/predict/batch", response_model=BatchResponse, responses=error_responses, tags=["predict"],
              summary=f"Labels and scores for up to {cfg.max_batch} papers")
    def predict_batch(body: BatchRequest) -> dict:
        if not body.items:
            raise InputError("items: the list is empty; send at least one paper")
        if len(body.items) > cfg.max_batch:
            raise InputError(f"items: {len(body.items)} papers; the limit is {cfg.max_batch} per request "
                             "(upload a file to POST /jobs for more)", status=413)
        texts, ids = [], []
        for i, item in enumerate(body.items):
            where = f"items[{i}]"
            if isinstance(item, str):
                texts.append(text_from(item, where=where))
                ids.append(i)
            else:
                texts.append(text_from(item.text, item.title, item.abstract, where=where))
                ids.append(item.id if item.id is not None else i)
        results = _predict(texts, body.threshold, body.top_k)
        return {"count": len(results), "results": [{"id": i, **r} for i, r in zip(ids, results)]}

    @app.get("/labels", tags=["model"], summary="The labels and their tuned thresholds")
    def labels() -> dict:
        per_label = predictor.thresholds_info.get("per_label", {})
        return {"count": n_labels, "labels": predictor.labels, "global_threshold": predictor.global_threshold,
                "thresholds": {lab: float(t) for lab, t in zip(predictor.labels, predictor.thresholds)},
                "tuned": sorted(per_label)}

    @app.get("/health", tags=["model"], summary="Model loaded, label count, Redis and workers")
    def health() -> dict:
        redis_info: dict = {"configured": bool(cfg.redis_url), "url": _mask(cfg.redis_url)}
        if cfg.redis_url:
            try:
                connection = _redis()
                from rq import Worker

                from papertasks.jobs import make_queue

                queue = make_queue(connection, cfg.queue)
                redis_info.update(reachable=True, queue=cfg.queue, queued=queue.count,
                                  workers=Worker.count(connection=connection, queue=queue))
            except HTTPException as e:
                redis_info.update(reachable=False, error=e.detail)
        return {"status": "ok",
                "model": {"path": str(predictor.model_dir), "labels": n_labels, "max_length": predictor.max_length,
                          "integrity": predictor.integrity, "fingerprint": fingerprint},
                "redis": redis_info, "jobs": "enabled" if redis_info.get("reachable") else "unavailable",
                "limits": {"max_text_chars": MAX_TEXT_CHARS, "max_batch": cfg.max_batch,
                           "max_upload_bytes": cfg.max_upload_bytes, "result_ttl_s": cfg.result_ttl}}

    @app.post("/jobs", status_code=202, tags=["jobs"], summary="Queue a CSV / JSONL file of papers",
              responses={202: {"description": "queued; poll the Location"}, 413: {"model": Problem},
                         415: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}})
    def submit_job(
        file: Annotated[UploadFile, File(description="CSV or JSON Lines, UTF-8; rows with text or title + abstract")],
        text_field: Annotated[str | None, Form(description="column holding the text (default: text, "
                                                           "else title + abstract)")] = None,
        threshold: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
        top_k: Annotated[int, Form(ge=0, description="scores kept per row; 0 = all labels")] = 10,
        ttl: Annotated[int | None, Form(ge=1, description="keep the results at most this many seconds "
                                                          "(capped by the server's --result-ttl)")] = None,
    ) -> Response:
        connection = _redis()
        name = file.filename or "upload"
        data = file.file.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise InputError(f"{name}: larger than {cfg.max_upload_bytes:,} bytes, the upload limit; split the file",
                             status=413)
        check_file_header(data, name, text_field=text_field or None, max_bytes=cfg.max_upload_bytes)
        from papertasks.jobs import enqueue_batch_job, make_queue

        keep = min(ttl or cfg.result_ttl, cfg.result_ttl)
        job = enqueue_batch_job(make_queue(connection, cfg.queue), data, name, text_field=text_field or None,
                                threshold=threshold, top_k=min(top_k, n_labels) or None, model=fingerprint,
                                result_ttl=keep, queue_ttl=cfg.queue_ttl, job_timeout=cfg.job_timeout,
                                heartbeat=cfg.job_heartbeat)
        location = f"/jobs/{job.id}"
        return JSONResponse({"id": job.id, "status": "queued", "location": location, "result_ttl_s": keep},
                            status_code=202, headers={"Location": location, "Retry-After": str(cfg.poll_after)})

    @app.get("/jobs/{job_id}", tags=["jobs"], summary="A job's status, or its results when done",
             responses={200: {"description": "finished: the results"}, 202: {"description": "queued or running"},
                        404: {"model": Problem}, 422: {"description": "failed: the file was unusable"},
                        500: {"description": "failed: the worker was lost or crashed"}, 503: {"model": Problem}})
    def get_job(job_id: str, format: Literal["json", "csv"] = Query("json", description="results as JSON or CSV")):
        connection = _redis()
        from papertasks.jobs import fetch_job, job_state

        job = fetch_job(connection, job_id) if _JOB_ID.match(job_id) else None
        gone = HTTPException(404, f"no job {job_id[:64]}: unknown, or its results expired "
                                  f"(results are kept {cfg.result_ttl} s after a job ends)")
        if job is None:
            raise gone
        state = job_state(job, cfg.job_heartbeat)
        keep = int(job.kwargs.get("ttl") or cfg.result_ttl)
        if state["status"] in ("queued", "running"):
            if state["status"] == "queued":
                from rq import Worker

                state["position"] = job.get_position()
                workers = Worker.count(connection=connection, queue=_queue(connection, job.origin))
                state["workers"] = workers
                if not workers:
                    state["note"] = f"no worker is serving queue '{job.origin}'; start one with `papertasks worker`"
            return JSONResponse(state, status_code=202, headers={"Retry-After": str(cfg.poll_after)})
        ended = job.ended_at.replace(tzinfo=timezone.utc) if job.ended_at else None
        if ended and (datetime.now(timezone.utc) - ended).total_seconds() > keep:
            job.delete()
            raise gone
        if ended:
            state["expires_at"] = datetime.fromtimestamp(ended.timestamp() + keep, timezone.utc).isoformat(
                timespec="seconds")
        if state["status"] == "failed":
            return JSONResponse(state, status_code=int(state["error"].get("status") or 500))
        output = job.return_value()
        if output is None:
            raise gone
        if format == "csv":
            return Response(results_to_csv(output["results"]), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="papertasks-{job.id}.csv"'})
        return JSONResponse({**state, **output})

    return app


def _queue(connection, name: str):
    from papertasks.jobs import make_queue

    return make_queue(connection, name)


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **settings) -> None:
    """`papertasks serve`: load the bundle (refusing a bad one), then run uvicorn."""
    import uvicorn

    from deployment.predictor import BundleError
    from papertasks.errors import UserError

    for key in ("result_ttl", "queue_ttl", "job_timeout", "max_batch", "max_upload_bytes", "job_heartbeat"):
        if key in settings and settings[key] <= 0:
            flag = "--max-upload-mb" if key == "max_upload_bytes" else "--" + key.replace("_", "-")
            raise UserError(f"{flag} must be positive")
    try:
        app = create_app(model_dir, **settings)
    except BundleError as e:
        raise UserError(str(e)) from None
    predictor = app.state.predictor
    if predictor.integrity.startswith("unchecked"):
        log.warning("%s: %s; file integrity not checked", model_dir, predictor.integrity.split(": ", 1)[1])
    cfg = app.state.settings
    if cfg.redis_url:
        try:
            from papertasks.jobs import redis_connection

            redis_connection(cfg.redis_url, timeout=1.0).ping()
        except Exception as e:
            log.warning("cannot reach Redis at %s (%s): /jobs answers 503 until it is up", _mask(cfg.redis_url), e)
    log.info("serving %s (%d labels, %s) on http://%s:%d  (docs: /docs)", model_dir, len(predictor.labels),
             predictor.integrity, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
