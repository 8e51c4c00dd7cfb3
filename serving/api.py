"""REST API: `papertasks serve` (FastAPI + uvicorn) over the same Predictor as the app and the CLI.

Sync:  POST /predict (`explain: true`: which sentences raised each label), POST /predict/batch,
       POST /feedback (a correction, stored in SQLite: deployment.feedback), GET /models, GET /labels,
       GET /health, OpenAPI docs at /docs.
Async: POST /jobs (CSV/JSONL upload) -> 202 + Location; GET /jobs/{id} -> 202 while queued or
       running, 200 with the results (JSON, or CSV with ?format=csv) when done, the failure's status
       (422 bad file, 500 worker lost or failed) when it failed, 404 when unknown or expired.
Jobs need Redis and at least one `papertasks worker`; without Redis the sync endpoints work and the
jobs endpoints answer 503. Every error is JSON {"detail": "one line"}; nothing answers a traceback.
For a public server: the scoring POSTs are rate-limited per client address (429 + Retry-After,
deployment.limits), /jobs take a bearer token (--jobs-token; `serve` will not expose them beyond
loopback without one), POST /jobs answers 503 while --max-queued-jobs wait or Redis is full, and no answer shows a path.
/predict refuses an unusable text with 422; /predict/batch items and /jobs rows are read by
deployment.inputs.read_row, like every other front end: an unusable one gets an `error`, the others
are scored.

It serves every model of a registry (deployment/models/models.json, see deployment.registry) or one
bundle; requests pick one with `model` (default: the first listed). A multi-label model answers the
labels above its thresholds; a single-label one its best class, with the TOP_CLASSES best scores
unless `top_k` asks for another number.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployment.explain import explain
from deployment.feedback import FeedbackStore, StoreError, corrected_labels, record
from deployment.inputs import (MAX_FILE_BYTES, MAX_TEXT_CHARS, InputError, check_file_header, language_warnings,
                               predict_rows, read_row, results_to_csv, text_from)
from deployment.limits import RateSpecError, TokenBucket, parse_rate, retry_after
from deployment.manifest import bundle_fingerprint
from deployment.predictor import POLICIES, BundleError, Predictor
from deployment.registry import TOP_CLASSES, Registry, UnknownModelError

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_BODY_BYTES = 8 * 2**20  # JSON bodies; uploads to /jobs are limited by max_upload_bytes
RESULT_TTL = 3600
RATE_LIMIT = "60/min"  # per client address on the scoring endpoints: a burst of 60, then one a second
MAX_QUEUED_JOBS = 200  # jobs waiting for a worker; past it POST /jobs answers 503
QUEUE_FULL_RETRY_AFTER = 30  # seconds a client is told to wait when the queue (or Redis) is full
RATE_LIMITED = ("/predict", "/predict/batch", "/jobs", "/feedback")  # POSTs that score (and cost CPU)
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JSON_HINT = 'send Content-Type: application/json and a body like {"text": "Title. Abstract"}'
JOBS_TOKEN_ENV = "PAPERTASKS_JOBS_TOKEN"
MODEL_FIELD = "which model answers: a name from GET /models (default: the first one there, 'arxiv' when it is served)"


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
    feedback_db: str | None = None  # POST /feedback's SQLite file (default: deployment.feedback.default_path())
    rate_limit: str = RATE_LIMIT  # requests per client address on RATE_LIMITED, e.g. 60/min; "off" or 0: none
    max_queued_jobs: int = MAX_QUEUED_JOBS  # POST /jobs answers 503 while this many wait; 0: no cap
    jobs_token: str | None = None  # set: POST /jobs and GET /jobs/{id} need `Authorization: Bearer <it>`


# ---------------------------------------------------------------- request and response bodies

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


ROW_TEXT = "a string; anything else, or an empty or too long text, is answered with an `error` for this item"


class Paper(_Strict):
    """A batch item, read as a file row is (deployment.inputs.read_row): its text is checked per item."""
    id: Union[str, int, None] = Field(None, description="echoed back in batch results (blank: the item's index)")
    arxiv_id: Union[str, int, None] = Field(None, description="the id when `id` is absent or blank")
    paper_id: Union[str, int, None] = Field(None, description="the id when `id` and `arxiv_id` are absent or blank")
    text: Any = Field(None, description=f"title and abstract in one string: {ROW_TEXT}")
    title: Any = Field(None, description=f"used with `abstract` when there is no `text`: {ROW_TEXT}")
    abstract: Any = Field(None, description=ROW_TEXT)


class PredictRequest(_Strict):
    text: Any = Field(None, description="title and abstract in one string (or send title + abstract); checked "
                                        "by the rule every front end applies (deployment.inputs): 422 if unusable",
                      examples=["Attention is all you need. We propose a new network architecture, the "
                                "Transformer, based solely on attention mechanisms."])
    title: Any = Field(None, description="a string, used with `abstract`")
    abstract: Any = Field(None, description="a string, used with `title`")
    model: str | None = Field(None, description=MODEL_FIELD, examples=["arxiv"])
    threshold: float | None = Field(None, ge=0.0, le=1.0,
                                    description="one global threshold; default: the bundle's tuned per-label ones "
                                                "(single-label models: the best class's minimum score)")
    policy: Literal[POLICIES] = Field("tuned", description="tuned: the bundle's per-label thresholds and relative "
                                      "cut, as validation chose them; global: its one tuned threshold for every "
                                      "label (ignored when `threshold` is given)")
    top_k: int | None = Field(None, ge=1, description="return only the K best scores (default: all labels of a "
                                                      f"multi-label model, the {TOP_CLASSES} best classes of a "
                                                      "single-label one)")
    explain: bool = Field(False, description="add `explanation`: how much each sentence raised or lowered each "
                                             "predicted label's probability (the text scored again without it)")
    explain_labels: list[str] | None = Field(None, description="with `explain`: labels to explain besides the "
                                                               "predicted ones")
    explain_words: bool = Field(False, description="with `explain`: also each word of the two most telling "
                                                   "sentences (slower: about 3 s on 2 cores)")


class FeedbackRequest(_Strict):
    text: Any = Field(None, description="the paper's title and abstract (or send title + abstract), as for /predict")
    title: Any = Field(None)
    abstract: Any = Field(None)
    id: Union[str, int, None] = Field(None, description="the paper's id (e.g. its arXiv id), kept for training")
    model: str | None = Field(None, description=MODEL_FIELD)
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="the threshold the prediction used "
                                                                      "(default: the tuned ones)")
    policy: Literal[POLICIES] = Field("tuned", description="the policy the prediction used")
    wrong: Any = Field(None, description="predicted labels that are wrong", examples=[["cs.AI"]])
    missing: Any = Field(None, description="labels the model should have predicted", examples=[["cs.CL"]])


class FeedbackStored(BaseModel):
    id: int = Field(..., description="the record's id in the feedback database")
    model: str
    model_version: str = Field(..., description="the bundle's fingerprint (sha256 of its manifest's file table)")
    predicted: list[str]
    corrected: list[str]


class BatchRequest(_Strict):
    items: list[Union[str, Paper]] = Field(..., description=f"texts, or objects with id and text or title + "
                                           f"abstract; at most {MAX_BATCH} (the server's --max-batch). Each is "
                                           "read as a file row is: an unusable one gets an `error`, the others "
                                           "are scored")
    model: str | None = Field(None, description=MODEL_FIELD)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    policy: Literal[POLICIES] = Field("tuned", description="tuned: the bundle's per-label thresholds and relative "
                                      "cut, as validation chose them; global: its one tuned threshold for every "
                                      "label (ignored when `threshold` is given)")
    top_k: int | None = Field(None, ge=1)


class Span(BaseModel):
    start: int = Field(..., description="offset in the explanation's `text`")
    end: int
    text: str
    sentence: int | None = Field(None, description="a word's sentence")


class LabelExplanation(BaseModel):
    label: str
    name: str | None = Field(None, description="the label's name, when the bundle has one")
    probability: float
    predicted: bool
    sentences: list[float] = Field(..., description="per sentence: the label's probability with the whole text "
                                                    "minus without that sentence (positive: it raised it)")
    words: list[float] | None = Field(None, description="the same per word of `words` (with explain_words)")


class Explanation(BaseModel):
    text: str = Field(..., description="the text as scored (whitespace normalized); offsets index it")
    sentences: list[Span]
    words: list[Span] | None = None
    labels: list[LabelExplanation]


class Prediction(BaseModel):
    model: str = Field(..., description="the model that answered")
    labels: list[str] = Field(..., description="labels whose score is at or above the threshold, best first "
                                               "(a single-label model: its best class)")
    scores: dict[str, float] = Field(..., description="label -> probability, best first")
    warnings: list[str] = Field(default_factory=list, description="e.g. the text does not look like English")
    names: dict[str, str] | None = Field(None, description="label -> the name people read (e.g. cs.IT -> "
                                                           "Information Theory), for the labels answered, when the "
                                                           "model's bundle names them (its label_names.json)")
    explanation: Explanation | None = Field(None, description="with `explain: true`")


class BatchPrediction(BaseModel):
    id: Union[str, int, None] = Field(None, description="the item's id, else its index")
    labels: list[str]
    scores: dict[str, float]
    warnings: list[str] | None = Field(None, description="on a scored item, e.g. the text does not look like English")
    error: str | None = Field(None, description="why this item was not scored (its labels and scores are empty)")


class BatchResponse(BaseModel):
    model: str
    count: int
    errors: int = Field(..., description="items not scored, each with its `error`")
    results: list[BatchPrediction]


class ModelInfo(BaseModel):
    name: str = Field(..., description="what requests send as `model`")
    title: str
    description: str
    problem_type: Literal["multi_label_classification", "single_label_classification"] | None = Field(
        None, description="multi-label: every label above its threshold; single-label: the one best class")
    labels: int | None = Field(None, description="how many labels (classes) the model knows")
    default: bool = Field(..., description="answers requests that name no model")
    error: str | None = Field(None, description="why the model cannot be served (its bundle is bad)")


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


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


class _RateLimit:
    """ASGI middleware: a client address past its rate on the scoring POSTs (RATE_LIMITED) gets 429
    with Retry-After, answered before the body is read, so a refused request costs the server nothing.
    Reads, /health and job polling are not counted: they are cheap, and a client polling its job must
    not lock itself out of it."""

    def __init__(self, app, limiter: TokenBucket, spec: str):
        self.app, self.limiter, self.spec = app, limiter, spec

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") not in RATE_LIMITED:
            return await self.app(scope, receive, send)
        client = scope.get("client")
        wait = self.limiter.take(client[0] if client else "unknown")
        if not wait:
            return await self.app(scope, receive, send)
        seconds = retry_after(wait)
        return await _problem(429, f"too many requests from this address: the limit is {self.spec} on "
                                   f"{', '.join(RATE_LIMITED)}; retry in {seconds} s",
                              headers={"Retry-After": str(seconds)})(scope, receive, send)


_BEARER = HTTPBearer(auto_error=False, scheme_name="jobs token",
                     description=f"the server's --jobs-token (or ${JOBS_TOKEN_ENV}); asked only when it has one")


def _check_jobs_token(request: Request,
                      credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
    """/jobs on a server with --jobs-token: an upload costs CPU and Redis memory, and a job's results are
    the uploader's papers. auto_error=False so that a refusal is this one-line 401, not FastAPI's 403."""
    token = request.app.state.settings.jobs_token
    if credentials is None:
        raise HTTPException(401, "this server's /jobs need a token: send the header 'Authorization: Bearer TOKEN' "
                                 "(TOKEN: the server's --jobs-token)", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(401, "the token in 'Authorization: Bearer' is not this server's --jobs-token",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


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


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/:'\"()]+/)*([^\s/:'\"()]+)")


def _without_paths(error: Exception, entry) -> str:
    """A bundle's error as a client may read it: the bundle folder becomes the model's name and any
    other absolute path its last part. The full message is for the operator, so the server logs it; a
    public answer must not map this machine's file system."""
    log.warning("model %s cannot be served: %s", entry.name, error)
    text = str(error)
    folders = {str(entry.path), str(entry.path.resolve())}
    for folder in sorted(folders, key=len, reverse=True):
        text = text.replace(folder + "/", "").replace(folder, f"bundle {entry.name!r}")
    return _ABSOLUTE_PATH.sub(r"\1", text)


def create_app(model_dir: str, **settings) -> FastAPI:
    """The API for the models in `model_dir`: a folder with models.json, or one bundle folder. The
    default model loads now (a bad bundle raises BundleError here), the others on first use.
    Keyword arguments override Settings (redis_url, result_ttl, max_batch, ...)."""
    cfg = Settings(**settings)
    registry = Registry.from_path(model_dir)
    registry.predictor()
    titles = ", ".join(f"{e.name} ({e.title})" for e in registry.entries.values())

    app = FastAPI(
        title="papertasks",
        version="1.0",
        description=(f"Tags research-paper abstracts; the models (GET /models): {titles}. "
                     f"Texts: at most {MAX_TEXT_CHARS:,} characters; batches: at most {cfg.max_batch} items; "
                     f"uploads: at most {cfg.max_upload_bytes:,} bytes. The models are English-only: other "
                     "languages are scored but get a warning."),
    )
    app.add_middleware(_BodyLimit, settings=cfg)
    rate = parse_rate(cfg.rate_limit)
    app.state.limiter = TokenBucket(*rate) if rate else None  # tests set its clock
    if rate:
        app.add_middleware(_RateLimit, limiter=app.state.limiter, spec=str(cfg.rate_limit).strip())
    app.state.registry, app.state.settings = registry, cfg
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
        from serving.jobs import redis_connection

        if redis_state["connection"] is None:
            redis_state["connection"] = redis_connection(cfg.redis_url, timeout=1.0)
        try:
            redis_state["connection"].ping()
        except Exception as e:
            raise HTTPException(503, f"cannot reach Redis at {_mask(cfg.redis_url)} ({type(e).__name__}); "
                                     "async jobs are unavailable, /predict still works") from None
        return redis_state["connection"]

    def _model(name: str | None) -> tuple[str, Predictor]:
        """The requested model's name and Predictor: 422 for a name not served, 503 for a bad bundle."""
        try:
            entry = registry.entry(name)
        except UnknownModelError as e:
            raise InputError(f"model: {e} (GET /models lists them)") from None
        try:
            return entry.name, registry.predictor(entry.name)
        except BundleError as e:
            raise HTTPException(503, f"model {entry.name!r} cannot be served: {_without_paths(e, entry)}") from None

    def _top_k(predictor: Predictor, top_k: int | None) -> int:
        n_labels = len(predictor.labels)
        return min(top_k or (TOP_CLASSES if predictor.single_label else n_labels), n_labels)

    error_responses = {413: {"model": Problem}, 422: {"model": Problem}, 429: {"model": Problem}}
    jobs_auth = [Depends(_check_jobs_token)] if cfg.jobs_token else []  # so /docs shows a lock only when there is one
    jobs_401 = {401: {"model": Problem}} if cfg.jobs_token else {}

    @app.get("/", include_in_schema=False)
    def root() -> dict:
        return {"name": "papertasks", "docs": "/docs", "health": "/health", "models": "/models", "labels": "/labels",
                "predict": "POST /predict", "batch": "POST /predict/batch", "jobs": "POST /jobs",
                "feedback": "POST /feedback"}

    @app.post("/predict", response_model=Prediction, response_model_exclude_none=True, responses=error_responses,
              tags=["predict"], summary="Labels and scores for one paper, and why with `explain: true`")
    def predict(body: PredictRequest) -> dict:
        text = text_from(body.text, body.title, body.abstract)
        name, predictor = _model(body.model)
        result = predictor.predict([text], threshold=body.threshold, top_k=_top_k(predictor, body.top_k),
                                   policy=body.policy)[0]
        answer = {"model": name, **result, "warnings": language_warnings(text)}
        if body.explain:
            answer["explanation"] = explain(predictor, text, labels=body.explain_labels, threshold=body.threshold,
                                            words=body.explain_words, policy=body.policy)
            for entry in answer["explanation"]["labels"]:
                entry["name"] = predictor.label_names.get(entry["label"])
        named = {lab: predictor.label_names[lab] for lab in result["scores"] if lab in predictor.label_names}
        return {**answer, "names": named or None}

    feedback_store = FeedbackStore(cfg.feedback_db)

    @app.post("/feedback", status_code=201, response_model=FeedbackStored, tags=["feedback"],
              responses={422: {"model": Problem}, 429: {"model": Problem}, 503: {"model": Problem}},
              summary="Correct a prediction: labels that are wrong, labels that are missing")
    def feedback(body: FeedbackRequest) -> dict:
        text = text_from(body.text, body.title, body.abstract)
        name, predictor = _model(body.model)
        prediction = predictor.predict([text], threshold=body.threshold, policy=body.policy)[0]
        corrected = corrected_labels(predictor.labels, prediction["labels"], body.wrong, body.missing)
        entry = record(predictor, name, text, prediction, corrected, paper_id=body.id)
        try:
            row = feedback_store.add(entry)
        except StoreError as e:
            raise HTTPException(503, str(e)) from None
        return {"id": row, **{k: entry[k] for k in ("model", "model_version", "predicted", "corrected")}}

    @app.post("/predict/batch", response_model=BatchResponse, response_model_exclude_none=True,
              responses=error_responses, tags=["predict"],
              summary=f"Labels and scores for up to {cfg.max_batch} papers; an unusable item gets an error")
    def predict_batch(body: BatchRequest) -> dict:
        if not body.items:
            raise InputError("items: the list is empty; send at least one paper")
        if len(body.items) > cfg.max_batch:
            raise InputError(f"items: {len(body.items)} papers; the limit is {cfg.max_batch} per request "
                             "(upload a file to POST /jobs for more)", status=413)
        name, predictor = _model(body.model)
        rows = [read_row({"text": item} if isinstance(item, str) else item.model_dump(exclude_unset=True), i)
                for i, item in enumerate(body.items)]
        results = predict_rows(predictor, rows, threshold=body.threshold, top_k=_top_k(predictor, body.top_k),
                               chunk_rows=len(rows), policy=body.policy)
        return {"model": name, "count": len(results), "errors": sum("error" in r for r in results), "results": results}

    @app.get("/models", response_model=ModelList, tags=["model"], summary="The models served, in the picker's order")
    def models() -> dict:
        listed = []
        for entry in registry.entries.values():
            info = {"name": entry.name, "title": entry.title, "description": entry.description,
                    "default": entry.name == registry.default}
            try:
                predictor = registry.predictor(entry.name)
            except BundleError as e:
                info["error"] = _without_paths(e, entry)
            else:
                info.update(labels=len(predictor.labels), problem_type="single_label_classification"
                            if predictor.single_label else "multi_label_classification")
            listed.append(info)
        return {"default": registry.default, "models": listed}

    @app.get("/labels", tags=["model"], summary="A model's labels and their tuned thresholds")
    def labels(model: Annotated[str | None, Query(description=MODEL_FIELD)] = None) -> dict:
        name, predictor = _model(model)
        per_label = predictor.thresholds_info.get("per_label", {})
        return {"model": name, "count": len(predictor.labels), "labels": predictor.labels,
                "names": predictor.label_names,
                "global_threshold": predictor.global_threshold,
                "thresholds": {lab: float(t) for lab, t in zip(predictor.labels, predictor.thresholds)},
                "tuned": sorted(per_label)}

    @app.get("/health", tags=["model"], summary="The default model, the models served, Redis and workers")
    def health() -> dict:
        redis_info: dict = {"configured": bool(cfg.redis_url), "url": _mask(cfg.redis_url)}
        if cfg.redis_url:
            try:
                connection = _redis()
                from serving.jobs import live_workers, make_queue

                queue = make_queue(connection, cfg.queue)
                redis_info.update(reachable=True, queue=cfg.queue, queued=queue.count,
                                  workers=live_workers(connection, queue))
            except HTTPException as e:
                redis_info.update(reachable=False, error=e.detail)
        predictor = registry.predictor()
        return {"status": "ok",
                "model": {"name": registry.default, "labels": len(predictor.labels),  # never a path of this machine
                          "max_length": predictor.max_length, "integrity": predictor.integrity,
                          "fingerprint": bundle_fingerprint(predictor.model_dir)},
                "models": list(registry.entries),
                "jobs_need_token": bool(cfg.jobs_token),  # whether, never the token
                "redis": redis_info, "jobs": "enabled" if redis_info.get("reachable") else "unavailable",
                "limits": {"max_text_chars": MAX_TEXT_CHARS, "max_batch": cfg.max_batch,
                           "max_upload_bytes": cfg.max_upload_bytes, "result_ttl_s": cfg.result_ttl,
                           "rate_limit": str(cfg.rate_limit) if rate else "off",
                           "max_queued_jobs": cfg.max_queued_jobs or None}}

    def _check_queue_room(queue) -> None:
        """503 + Retry-After while max_queued_jobs wait: anonymous uploads must not fill Redis (each holds
        its file) or queue hours of work. Counted just before enqueueing; two uploads at the same
        moment may both pass, so the queue can exceed the cap by the number of concurrent requests."""
        if cfg.max_queued_jobs and queue.count >= cfg.max_queued_jobs:
            raise HTTPException(503, f"the job queue is full ({cfg.max_queued_jobs} jobs waiting for a worker); "
                                     f"nothing was queued, retry in {QUEUE_FULL_RETRY_AFTER} s",
                                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)})

    @app.post("/jobs", status_code=202, tags=["jobs"], summary="Queue a CSV / JSONL file of papers",
              dependencies=jobs_auth,
              responses={202: {"description": "queued; poll the Location"}, **jobs_401, 413: {"model": Problem},
                         415: {"model": Problem}, 422: {"model": Problem}, 429: {"model": Problem},
                         503: {"model": Problem}})
    def submit_job(
        file: Annotated[UploadFile, File(description="CSV or JSON Lines, UTF-8; rows with text or title + abstract")],
        text_field: Annotated[str | None, Form(description="column holding the text (default: text, "
                                                           "else title + abstract)")] = None,
        model: Annotated[str | None, Form(description=MODEL_FIELD)] = None,
        threshold: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
        top_k: Annotated[int, Form(ge=0, description="scores kept per row; 0 = all labels")] = 10,
        ttl: Annotated[int | None, Form(ge=1, description="keep the results at most this many seconds "
                                                          "(capped by the server's --result-ttl)")] = None,
        explain: Annotated[bool, Form(description="add each row's `explanation`, as /predict's `explain: true` "
                                                  "(about 0.6 s a row on 2 cores)")] = False,
    ) -> Response:
        model_name, predictor = _model(model or None)
        connection = _redis()
        name = file.filename or "upload"
        data = file.file.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise InputError(f"{name}: larger than {cfg.max_upload_bytes:,} bytes, the upload limit; split the file",
                             status=413)
        check_file_header(data, name, text_field=text_field or None, max_bytes=cfg.max_upload_bytes)
        from serving.jobs import JobStoreFull, enqueue_batch_job, make_queue

        queue = make_queue(connection, cfg.queue)
        _check_queue_room(queue)
        keep = min(ttl or cfg.result_ttl, cfg.result_ttl)
        try:
            job = enqueue_batch_job(queue, data, name, text_field=text_field or None, threshold=threshold,
                                    top_k=min(top_k, len(predictor.labels)) or None, model=model_name,
                                    fingerprint=bundle_fingerprint(predictor.model_dir), result_ttl=keep,
                                    queue_ttl=cfg.queue_ttl, job_timeout=cfg.job_timeout, heartbeat=cfg.job_heartbeat,
                                    explain=explain)
        except JobStoreFull:
            raise HTTPException(503, "the job store is full (Redis is at its maxmemory); nothing was queued, "
                                     "retry later", headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)}) from None
        location = f"/jobs/{job.id}"
        return JSONResponse({"id": job.id, "status": "queued", "model": model_name, "location": location,
                             "result_ttl_s": keep},
                            status_code=202, headers={"Location": location, "Retry-After": str(cfg.poll_after)})

    @app.get("/jobs/{job_id}", tags=["jobs"], summary="A job's status, or its results when done",
             dependencies=jobs_auth,
             responses={200: {"description": "finished: the results"}, 202: {"description": "queued or running"},
                        **jobs_401, 404: {"model": Problem}, 422: {"description": "failed: the file was unusable"},
                        500: {"description": "failed: the worker was lost or crashed"}, 503: {"model": Problem}})
    def get_job(job_id: str, format: Literal["json", "csv"] = Query("json", description="results as JSON or CSV")):
        connection = _redis()
        from serving.jobs import fetch_job, job_state

        job = fetch_job(connection, job_id) if _JOB_ID.match(job_id) else None
        gone = HTTPException(404, f"no job {job_id[:64]}: unknown, or its results expired "
                                  f"(results are kept {cfg.result_ttl} s after a job ends)")
        if job is None:
            raise gone
        state = job_state(job, cfg.job_heartbeat)
        keep = int(job.kwargs.get("ttl") or cfg.result_ttl)
        if state["status"] in ("queued", "running"):
            if state["status"] == "queued":
                from serving.jobs import live_workers

                state["position"] = job.get_position()
                workers = live_workers(connection, _queue(connection, job.origin))
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
    from serving.jobs import make_queue

    return make_queue(connection, name)


def _is_loopback(host: str) -> bool:
    """Whether a server listening on `host` is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          public_jobs: bool = False, **settings) -> None:
    """`papertasks serve`: load the default model (refusing a bad bundle), then run uvicorn. Jobs on a
    server reachable from other machines need --jobs-token, or --public-jobs to say they are meant open."""
    import uvicorn

    from papertasks.errors import UserError

    for key in ("result_ttl", "queue_ttl", "job_timeout", "max_batch", "max_upload_bytes", "job_heartbeat"):
        if key in settings and settings[key] <= 0:
            flag = "--max-upload-mb" if key == "max_upload_bytes" else "--" + key.replace("_", "-")
            raise UserError(f"{flag} must be positive")
    if settings.get("max_queued_jobs", 0) < 0:
        raise UserError("--max-queued-jobs must be 0 (no cap) or more")
    try:
        parse_rate(settings.get("rate_limit"))
    except RateSpecError as e:
        raise UserError(f"--rate-limit {e}") from None
    token = settings.get("jobs_token")
    if token and not re.fullmatch(r"[!-~]+", token):
        raise UserError("--jobs-token: use printable ASCII without spaces, such as the output of "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if settings.get("redis_url") and not token and not public_jobs and not _is_loopback(host):
        raise UserError(f"--host {host} with --redis-url lets anyone who reaches this server queue jobs and read "
                        f"their results: pass --jobs-token TOKEN (or set ${JOBS_TOKEN_ENV}), or --public-jobs "
                        "if that is intended")
    try:
        app = create_app(model_dir, **settings)
    except BundleError as e:
        raise UserError(str(e)) from None
    cfg = app.state.settings
    if cfg.redis_url:
        try:
            from serving.jobs import redis_connection

            redis_connection(cfg.redis_url, timeout=1.0).ping()
        except Exception as e:
            log.warning("cannot reach Redis at %s (%s): /jobs answers 503 until it is up", _mask(cfg.redis_url), e)
    log.info("serving %s from %s on http://%s:%d  (docs: /docs)", ", ".join(app.state.registry.entries), model_dir,
             host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
