"""Async batch jobs on a real queue: RQ on Redis.

The API (`papertasks serve --redis-url ...`) stores an uploaded CSV/JSONL file in Redis and enqueues
`run_batch_job`; workers (`papertasks worker --redis-url ...`, any number, on any machine that has
the same model bundles and can reach Redis) take jobs off the queue, read the whole file with the
same checks as the app (deployment.inputs), score it in chunks with the Predictor of the model the
job names, record progress in `job.meta`, and return the results, which RQ keeps for the job's
result TTL. A job stamped with another bundle's fingerprint than the worker's is refused.

A worker that dies mid-job (SIGKILL, OOM, machine lost) cannot report anything, so each running job
refreshes a heartbeat key every `heartbeat` seconds; `job_state` (used by GET /jobs/{id}) marks a
started job whose heartbeat has lapsed as failed ('worker_lost') instead of leaving it 'running'.
Failures the worker can report carry a type and a one-line message in `job.meta['error']`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "papertasks"
UPLOAD_KEY = "papertasks:upload:{}"
HEARTBEAT_KEY = "papertasks:heartbeat:{}"
JOB_FUNC = "serving.jobs.run_batch_job"
CHUNK_ROWS = int(os.environ.get("PAPERTASKS_JOB_CHUNK_ROWS", "64"))
# Test hook: seconds to sleep after each chunk, so a test can kill a worker mid-job deterministically.
CHUNK_DELAY_ENV = "PAPERTASKS_TEST_CHUNK_DELAY"

_registry = None  # the worker's models, each loaded on its first job and kept for the worker's life


def set_registry(registry) -> None:
    global _registry
    _registry = registry


def get_registry():
    """The worker's models: set by `papertasks worker`, else read from $PAPERTASKS_MODEL (a folder with
    models.json or one bundle) or deployment/models (for workers started with plain `rq worker`)."""
    global _registry
    if _registry is None:
        from deployment.registry import Registry
        from papertasks.paths import DEFAULT_MODELS_DIR

        _registry = Registry.from_path(os.environ.get("PAPERTASKS_MODEL", DEFAULT_MODELS_DIR))
    return _registry


def redis_connection(url: str, timeout: float = 2.0):
    """A Redis client that fails fast (seconds, not minutes) when the server is away."""
    from redis import Redis

    return Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 5.0),
                          health_check_interval=30)


def make_queue(connection, name: str = DEFAULT_QUEUE):
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(name, connection=connection, serializer=JSONSerializer)


class _Heartbeat(threading.Thread):
    """Refreshes HEARTBEAT_KEY (expiring after 3 intervals) until stopped or the process dies."""

    def __init__(self, connection, job_id: str, interval: float):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.connection, self.key, self.interval = connection, HEARTBEAT_KEY.format(job_id), interval
        self.stopped = threading.Event()

    def beat(self) -> None:
        self.connection.set(self.key, "1", px=int(3000 * self.interval))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
            except Exception as e:  # Redis briefly away: the next beat may work
                log.warning("heartbeat for %s failed: %s", self.key, e)

    def stop(self) -> None:
        """Stop beating, with one last beat: the key outlives the function by 3 intervals, time for
        RQ to record the job's end, so a job that just finished is never taken for a lost one."""
        self.stopped.set()
        try:
            self.beat()
        except Exception:
            pass


def _fail(job, kind: str, message: str, status: int) -> None:
    job.meta["error"] = {"type": kind, "status": status, "message": message}
    job.save_meta()


def run_batch_job(filename: str, text_field: str | None = None, threshold: float | None = None,
                  top_k: int | None = None, model: str | None = None, fingerprint: str | None = None,
                  heartbeat: float = 5.0, ttl: int = 3600, explain: bool = False) -> dict:
    """Score the uploaded file stored under UPLOAD_KEY with `model` (a registry name; None: the
    default) whose bundle must have `fingerprint`, and with `explain` add each row's explanation
    (then progress counts explained rows); runs inside an RQ worker."""
    from rq import get_current_job

    from deployment.inputs import InputError, predict_rows, read_batch_file
    from deployment.manifest import bundle_fingerprint
    from deployment.registry import UnknownModelError

    job = get_current_job()
    connection = job.connection
    beat = _Heartbeat(connection, job.id, heartbeat)
    beat.beat()
    beat.start()
    job.meta.update(progress={"done": 0, "total": None}, heartbeat=heartbeat)
    job.save_meta()
    try:
        data = connection.get(UPLOAD_KEY.format(job.id))
        if data is None:
            raise InputError("the uploaded file expired before a worker took the job; upload it again", status=410)
        registry = get_registry()
        try:
            entry = registry.entry(model)
        except UnknownModelError as e:
            _fail(job, "model_mismatch", f"this worker cannot score with the model the job names: {e}; "
                  "start workers with the same --model as the server", 500)
            raise
        predictor = registry.predictor(entry.name)
        mine = bundle_fingerprint(predictor.model_dir)
        if fingerprint and mine and fingerprint != mine:
            _fail(job, "model_mismatch", f"this worker serves another {entry.name} bundle ({mine}) than the API "
                  f"({fingerprint}); start workers with the same --model as the server", 500)
            raise RuntimeError("model bundle mismatch")
        rows = read_batch_file(data, filename, text_field=text_field)
        delay = float(os.environ.get(CHUNK_DELAY_ENV, "0") or 0)

        def progress(done: int, total: int) -> None:
            job.meta["progress"] = {"done": done, "total": total}
            job.save_meta()
            if delay:
                time.sleep(delay)

        progress(0, len(rows))
        results = predict_rows(predictor, rows, threshold=threshold, top_k=top_k, chunk_rows=CHUNK_ROWS,
                               progress=None if explain else progress)
        if explain:
            from deployment.explain import add_explanations

            add_explanations(predictor, rows, results, threshold, progress=progress)
        return {"model": entry.name, "count": len(results), "errors": sum("error" in r for r in results),
                "results": results}
    except InputError as e:
        _fail(job, "bad_input", str(e), e.status)
        raise
    except BaseException as e:
        if "error" not in job.meta:
            if type(e).__name__ == "JobTimeoutException":
                _fail(job, "timeout", f"the job ran past its time limit ({job.timeout} s); split the file", 500)
            else:
                _fail(job, "worker_error", f"the worker failed: {type(e).__name__}: {str(e)[:300]}", 500)
        raise
    finally:
        beat.stop()
        connection.delete(UPLOAD_KEY.format(job.id))
        connection.expire(job.key, ttl)  # a failed job expires like a finished one


def enqueue_batch_job(queue, data: bytes, filename: str, *, text_field: str | None, threshold: float | None,
                      top_k: int | None, model: str | None, fingerprint: str | None, result_ttl: int, queue_ttl: int,
                      job_timeout: int, heartbeat: float, explain: bool = False):
    """Store the upload, then enqueue the job (the upload expires with the queued job)."""
    import uuid

    job_id = uuid.uuid4().hex
    queue.connection.set(UPLOAD_KEY.format(job_id), data, ex=queue_ttl + job_timeout)
    return queue.enqueue_call(JOB_FUNC, kwargs=dict(filename=filename, text_field=text_field, threshold=threshold,
                                                    top_k=top_k, model=model, fingerprint=fingerprint,
                                                    heartbeat=heartbeat, ttl=result_ttl, explain=explain),
                              job_id=job_id, timeout=job_timeout, result_ttl=result_ttl, failure_ttl=result_ttl,
                              ttl=queue_ttl, meta={"progress": {"done": 0, "total": None}})


def _iso(value) -> str | None:
    return value.replace(tzinfo=value.tzinfo or timezone.utc).isoformat(timespec="seconds") if value else None


def fetch_job(connection, job_id: str):
    """Our job with this id, or None (unknown, expired, or another application's RQ job)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    except Exception:  # a job with an unreadable payload is not one of ours
        return None
    return job if job.func_name == JOB_FUNC else None


def job_state(job, default_heartbeat: float = 5.0) -> dict:
    """{'id', 'status': queued|running|finished|failed, 'progress', timestamps, 'error'?}.
    Marks a running job whose worker stopped heartbeating as failed ('worker_lost')."""
    from rq.job import JobStatus

    status = job.get_status(refresh=True)
    meta = job.get_meta(refresh=True)
    if status == JobStatus.STARTED:
        interval = float(meta.get("heartbeat") or job.kwargs.get("heartbeat") or default_heartbeat)
        started = job.started_at.replace(tzinfo=timezone.utc) if job.started_at else None
        age = (datetime.now(timezone.utc) - started).total_seconds() if started else 0.0
        if not job.connection.exists(HEARTBEAT_KEY.format(job.id)) and age > 3 * interval \
                and job.get_status(refresh=True) == JobStatus.STARTED:
            mark_lost(job, meta)
        status, meta = job.get_status(refresh=True), job.get_meta(refresh=True)
    names = {JobStatus.QUEUED: "queued", JobStatus.DEFERRED: "queued", JobStatus.SCHEDULED: "queued",
             JobStatus.STARTED: "running", JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed",
             JobStatus.STOPPED: "failed", JobStatus.CANCELED: "failed"}
    state = {"id": job.id, "status": names.get(status, str(status)), "progress": meta.get("progress"),
             "created_at": _iso(job.created_at), "started_at": _iso(job.started_at), "ended_at": _iso(job.ended_at)}
    if state["status"] == "failed":
        state["error"] = meta.get("error") or {
            "type": "worker_error", "status": 500,
            "message": "the job failed in the worker" + (f" ({status})" if status != JobStatus.FAILED else "")}
    return state


def mark_lost(job, meta: dict) -> None:
    """A started job whose worker is gone: record it as failed, with the usual result TTL."""
    from rq.job_lifecycle import record_job_failure
    from rq.utils import now, utcformat

    done = (meta.get("progress") or {}).get("done")
    total = (meta.get("progress") or {}).get("total")
    where = f" after {done} of {total} rows" if total else ""
    meta["error"] = {"type": "worker_lost", "status": 500,
                     "message": f"the worker running this job stopped{where} (killed or crashed); submit the file again"}
    job.meta = meta
    with job.connection.pipeline() as pipe:
        record_job_failure(job, meta["error"]["message"], pipe)
        pipe.hset(job.key, mapping={"meta": job.serializer.dumps(meta), "ended_at": utcformat(now())})
        pipe.expire(job.key, int(job.kwargs.get("ttl") or job.failure_ttl or 3600))
        pipe.delete(UPLOAD_KEY.format(job.id))
        pipe.execute()
    log.warning("job %s: %s", job.id, meta["error"]["message"])


def run_worker(redis_url: str, queues: list[str], model_dir: str, burst: bool = False, name: str | None = None) -> None:
    """`papertasks worker`: load the models (`model_dir`: a folder with models.json, or one bundle),
    then take jobs in this process (RQ SimpleWorker: no fork per job, the models stay loaded; a
    killed worker loses only its current job). The default model loads now, so a bad bundle stops
    the worker; the others load on their first job."""
    from redis.exceptions import RedisError
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from deployment.predictor import BundleError
    from deployment.registry import Registry
    from papertasks.errors import UserError

    try:
        registry = Registry.from_path(model_dir)
        registry.predictor()
    except BundleError as e:
        raise UserError(str(e)) from None
    set_registry(registry)
    connection = redis_connection(redis_url)
    try:
        connection.ping()
    except RedisError as e:
        raise UserError(f"cannot reach Redis at {redis_url} ({e}); start it with `redis-server` "
                        "or pass --redis-url") from None
    log.info("worker on %s, queues %s, models %s from %s", redis_url, ", ".join(queues), ", ".join(registry.entries),
             model_dir)
    worker = SimpleWorker([make_queue(connection, q) for q in queues], connection=connection,
                          serializer=JSONSerializer, name=name)
    worker.work(burst=burst, with_scheduler=False)
