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
Failures the worker can report carry a type and a one-line message in `job.meta['error']`. Workers
heartbeat too, busy or idle, so `live_workers` counts only the ones alive, not every one RQ still
lists (a killed worker stays registered for minutes).

Redis is the only copy of the queue: run it with serving/redis.conf (AOF, so jobs survive a restart;
maxmemory with noeviction, so a full store refuses new jobs, `JobStoreFull`, instead of dropping
queued ones). A worker outlives a Redis outage: RQ's loop ends on it, `run_worker` waits and starts
it again; the job it was running is reported failed ('worker_lost', by the heartbeat rule) unless
Redis came back in time for it to finish.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from datetime import datetime, timezone

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "papertasks"
UPLOAD_KEY = "papertasks:upload:{}"
HEARTBEAT_KEY = "papertasks:heartbeat:{}"
WORKER_HEARTBEAT = 5.0  # seconds between a worker's heartbeats; silent for 3x this, it is not counted
WORKER_HEARTBEAT_FIELD = "papertasks_heartbeat"  # a worker's interval, in its RQ hash, for live_workers
RECONNECT_FIRST_WAIT = 1.0  # seconds a worker that lost Redis waits before trying again, doubled after
RECONNECT_MAX_WAIT = 30.0  # each failed try up to this
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


class JobStoreFull(Exception):
    """Redis refused the job at its maxmemory (policy noeviction); nothing of it was kept."""


class _Heartbeat(threading.Thread):
    """Calls `beat` every `interval` seconds until stopped or the process dies. A beat that fails
    (Redis away) is logged once per outage, not every interval, and tried again at the next."""

    def __init__(self, beat, interval: float, name: str):
        super().__init__(daemon=True, name=name)
        self.beat, self.interval = beat, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        failing = False
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
                failing = False
            except Exception as e:
                if not failing:
                    log.warning("%s failed (%s); trying again every %g s", self.name, e, self.interval)
                failing = True

    def stop(self) -> None:
        self.stopped.set()


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
    heartbeat_key = HEARTBEAT_KEY.format(job.id)

    def beat() -> None:  # the key expires after 3 intervals: then job_state takes the worker for lost
        connection.set(heartbeat_key, "1", px=int(3000 * heartbeat))

    beat()
    beats = _Heartbeat(beat, heartbeat, f"heartbeat of job {job.id}")
    beats.start()
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
        beats.stop()
        with contextlib.suppress(Exception):  # one last beat: the key outlives the function by 3 intervals, time
            beat()  # for RQ to record the job's end, so a job that just finished is never taken for a lost one
        connection.delete(UPLOAD_KEY.format(job.id))
        connection.expire(job.key, ttl)  # a failed job expires like a finished one


def enqueue_batch_job(queue, data: bytes, filename: str, *, text_field: str | None, threshold: float | None,
                      top_k: int | None, model: str | None, fingerprint: str | None, result_ttl: int, queue_ttl: int,
                      job_timeout: int, heartbeat: float, explain: bool = False):
    """Store the upload, then enqueue the job (the upload expires with the queued job). If either
    fails, the upload is deleted; JobStoreFull when Redis is at its maxmemory."""
    import uuid

    from redis.exceptions import OutOfMemoryError

    job_id = uuid.uuid4().hex
    upload_key = UPLOAD_KEY.format(job_id)
    try:
        queue.connection.set(upload_key, data, ex=queue_ttl + job_timeout)
        return queue.enqueue_call(JOB_FUNC, kwargs=dict(filename=filename, text_field=text_field, threshold=threshold,
                                                        top_k=top_k, model=model, fingerprint=fingerprint,
                                                        heartbeat=heartbeat, ttl=result_ttl, explain=explain),
                                  job_id=job_id, timeout=job_timeout, result_ttl=result_ttl, failure_ttl=result_ttl,
                                  ttl=queue_ttl, meta={"progress": {"done": 0, "total": None}})
    except BaseException as e:
        with contextlib.suppress(Exception):  # DEL is allowed at maxmemory; Redis away, the key expires anyway
            queue.connection.delete(upload_key)
        if isinstance(e, OutOfMemoryError):
            raise JobStoreFull(str(e)) from None
        raise


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


def live_workers(connection, queue) -> int:
    """Workers on `queue` heard from within 3 of their heartbeat intervals (plain `rq worker`s: within
    RQ's worker TTL). RQ alone keeps counting a killed worker until its key expires, minutes later."""
    from rq.defaults import DEFAULT_WORKER_TTL
    from rq.utils import utcparse
    from rq.worker_registration import get_keys

    with connection.pipeline(transaction=False) as pipe:
        for key in get_keys(queue=queue):
            pipe.hmget(key, "last_heartbeat", WORKER_HEARTBEAT_FIELD)
        beats = pipe.execute()
    now = datetime.now(timezone.utc)
    return sum(1 for last, interval in beats
               if last and (now - utcparse(last.decode())).total_seconds()
               <= (3 * float(interval) if interval else DEFAULT_WORKER_TTL))


def _worker_class(interval: float, redis_away: tuple):
    """RQ's SimpleWorker (jobs run in the worker's process: no fork per job, the models stay loaded)
    with what `papertasks worker` needs; a function so that rq is imported only by workers."""
    from rq import SimpleWorker
    from rq.exceptions import StopRequested
    from rq.worker_registration import register

    class Worker(SimpleWorker):
        """Heartbeats every `interval` s from a thread (RQ's SimpleWorker does not while a job runs);
        ends RQ's loop quietly when Redis is lost mid-job (`redis_lost`), where RQ would log a page of
        traceback; records whether a stop was asked (SIGINT, SIGTERM)."""
        max_connection_wait_time = RECONNECT_MAX_WAIT  # RQ's own retries while it waits for a job
        stop_requested = False
        redis_lost = None
        beats = None

        def bootstrap(self, *args, **kwargs):
            super().bootstrap(*args, **kwargs)  # registers the worker, which a beat must not precede
            self.beat()
            self.beats = _Heartbeat(self.beat, interval, f"heartbeat of worker {self.name}")
            self.beats.start()

        def beat(self) -> None:
            """RQ's heartbeat and our interval; registers the worker again if Redis restarted without it."""
            with self.connection.pipeline() as pipe:
                pipe.hexists(self.key, "birth")
                self.heartbeat(pipeline=pipe)
                pipe.hset(self.key, WORKER_HEARTBEAT_FIELD, interval)
                registered = pipe.execute()[0]
            if not registered:
                with self.connection.pipeline() as pipe:
                    pipe.hset(self.key, mapping=self.serialize())
                    register(self, pipe)
                    pipe.execute()

        def execute_job(self, job, queue):
            try:
                super().execute_job(job, queue)
            except redis_away as e:  # Redis lost around a job: job_state reports the job (heartbeat rule)
                self.redis_lost = e
                raise StopRequested from None

        def handle_warm_shutdown_request(self):
            self.stop_requested = True
            super().handle_warm_shutdown_request()

        def teardown(self):
            """Stop the threads first: they need no Redis, RQ's teardown (recording the death) does."""
            if self.beats:
                self.beats.stop()
            if self.pubsub_thread:
                self.pubsub_thread.stop()
            super().teardown()

    return Worker


def run_worker(redis_url: str, queues: list[str], model_dir: str, burst: bool = False, name: str | None = None,
               heartbeat: float = WORKER_HEARTBEAT) -> None:
    """`papertasks worker`: load the models (`model_dir`: a folder with models.json, or one bundle),
    then take jobs in this process (a killed worker loses only its current job). The default model
    loads now, so a bad bundle stops the worker; the others load on their first job. When Redis goes
    away (or refuses writes, full), RQ's loop ends; the worker waits (RECONNECT_FIRST_WAIT, doubling
    up to RECONNECT_MAX_WAIT) and starts it again, under the same name. SIGINT or SIGTERM stops it."""
    import signal
    import uuid

    from redis import exceptions as redis_errors
    from rq.serializers import JSONSerializer

    from deployment.predictor import BundleError
    from deployment.registry import Registry
    from papertasks.errors import UserError

    if heartbeat <= 0:
        raise UserError("--heartbeat must be positive")
    try:
        registry = Registry.from_path(model_dir)
        registry.predictor()
    except BundleError as e:
        raise UserError(str(e)) from None
    set_registry(registry)
    connection = redis_connection(redis_url)
    try:
        connection.ping()
    except redis_errors.RedisError as e:
        raise UserError(f"cannot reach Redis at {redis_url} ({e}); start it with `redis-server serving/redis.conf` "
                        "or pass --redis-url") from None
    log.info("worker on %s, queues %s, models %s from %s", redis_url, ", ".join(queues), ", ".join(registry.entries),
             model_dir)
    redis_away = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.OutOfMemoryError)
    worker_class = _worker_class(heartbeat, redis_away)
    name = name or uuid.uuid4().hex  # RQ's default, kept across restarts
    signal_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    wait = RECONNECT_FIRST_WAIT
    while True:
        worker = worker_class([make_queue(connection, q) for q in queues], connection=connection,
                              serializer=JSONSerializer, name=name)
        started = time.monotonic()
        try:
            worker.work(burst=burst, with_scheduler=False)
            lost = worker.redis_lost
        except redis_away as e:  # while starting or ending RQ's loop
            lost = worker.redis_lost or e
        if worker.stop_requested or (burst and lost is None):
            return
        problem = f"{type(lost).__name__}: {lost}" if lost else "its loop ended on an error, logged above"
        for sig, handler in signal_handlers.items():  # RQ's handlers act on its loop; while waiting, stop at once
            signal.signal(sig, handler)
        if time.monotonic() - started > RECONNECT_MAX_WAIT:  # it worked for a while: a new outage
            wait = RECONNECT_FIRST_WAIT
        log.warning("worker %s stopped taking jobs (%s); reconnecting to Redis at %s in %g s, then every %g s "
                    "at most", name, problem, redis_url, wait, RECONNECT_MAX_WAIT)
        while True:  # until Redis takes the record of the worker's death, without which its name stays taken
            time.sleep(wait)
            wait = min(2 * wait, RECONNECT_MAX_WAIT)
            try:
                worker.register_death()
                break
            except redis_away:
                pass
