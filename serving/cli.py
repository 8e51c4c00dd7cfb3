"""The serving commands: `predict`, `predict-dask`, `app`, `serve`, `worker` (this stage registers them)."""
from __future__ import annotations

import argparse
import os

from deployment.limits import RATE_LIMIT_ENV
from deployment.predictor import ALLOW_UNSIGNED_ENV, POLICIES
from papertasks.cli_support import use_defaults
from papertasks.errors import UserError
from papertasks.paths import DEFAULT_BUNDLE, DEFAULT_MODELS_DIR, bundle_path


THRESHOLD_HELP = ("one threshold for every label, as the API's `threshold` (default: the bundle's tuned "
                  "thresholds, its thresholds.json)")
POLICY_HELP = ("tuned: the bundle's per-label thresholds and relative cut, as validation chose them; global: its "
               "one tuned threshold for every label (the API's `policy`, the app's checkbox)")
UNSIGNED_HELP = (f"use a bundle without manifest.json, its files unchecked (default: refused; the app and a Space: "
                 f"{ALLOW_UNSIGNED_ENV}=1)")


def allow_unsigned(args) -> None:
    """--allow-unsigned holds for every Predictor of this run and of the processes it starts."""
    if args.allow_unsigned:
        os.environ[ALLOW_UNSIGNED_ENV] = "1"


def _predict(args):
    allow_unsigned(args)
    from serving.batch import predict_file

    predict_file(args.input, args.output, model_dir=bundle_path(args.model), batch_size=args.batch_size,
                 text_field=args.text_field, top_k=args.top_k, workers=args.workers, threshold=args.threshold,
                 explain=args.explain, policy=args.policy)


def _predict_dask(args):
    allow_unsigned(args)
    from serving.distributed import predict_with_dask

    predict_with_dask(args.inputs, args.output, bundle_path(args.model), scheduler=args.scheduler, blocksize=args.blocksize,
                      top_k=args.top_k, batch_size=args.batch_size, local_workers=args.local_workers,
                      threshold=args.threshold, policy=args.policy)


def _feedback_export(args):
    import json

    from deployment.feedback import FeedbackStore, StoreError, training_rows
    from papertasks.io import write_text

    try:
        rows = training_rows(FeedbackStore(args.db).records())
    except StoreError as e:
        raise UserError(str(e)) from None
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} corrections to {args.out}; merge them into training with "
          f"`papertasks prepare ... --extra {args.out}`")


def _app(args):
    allow_unsigned(args)
    from deployment.app import launch

    launch(model_dir=bundle_path(args.model), host=args.host, port=args.port, share=args.share)


def _serve(args):
    allow_unsigned(args)
    from serving.api import JOBS_TOKEN_ENV, serve

    serve(args.model, host=args.host, port=args.port, log_level=args.log_level, redis_url=args.redis_url,
          queue=args.queue, result_ttl=args.result_ttl, queue_ttl=args.queue_ttl, job_timeout=args.job_timeout,
          job_heartbeat=args.job_heartbeat, max_batch=args.max_batch,
          max_upload_bytes=int(args.max_upload_mb * 2**20), rate_limit=args.rate_limit,
          max_queued_jobs=args.max_queued_jobs, public_jobs=args.public_jobs,
          jobs_token=args.jobs_token or os.environ.get(JOBS_TOKEN_ENV))  # not a parser default: --help would show it


def _worker(args):
    allow_unsigned(args)
    from serving.jobs import run_worker

    if not args.redis_url:
        raise UserError("no Redis: pass --redis-url redis://HOST:6379/0 (or set PAPERTASKS_REDIS_URL)")
    run_worker(args.redis_url, args.queue, model_dir=bundle_path(args.model), burst=args.burst, name=args.name,
               heartbeat=args.heartbeat)


def register(sub) -> None:
    from serving.api import JOBS_TOKEN_ENV, Settings, serve
    from serving.batch import predict_file
    from serving.distributed import predict_with_dask
    from serving.jobs import run_worker

    p = sub.add_parser("predict", help="batch prediction: JSONL/CSV in, JSONL out (id, labels, scores)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="JSONL / CSV / Parquet with `text` or title + abstract")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model", default=DEFAULT_BUNDLE,
                   help="a bundle folder, or the name of a model in deployment/models (arxiv, pwc)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--text-field")
    p.add_argument("--top-k", type=int, help="keep only the K best scores per line")
    p.add_argument("--workers", type=int, help="processes scoring chunks in parallel (order kept)")
    p.add_argument("--threshold", type=float, help=THRESHOLD_HELP)
    p.add_argument("--policy", choices=POLICIES, help=POLICY_HELP)
    p.add_argument("--explain", action="store_true",
                   help="add each row's `explanation`: how much each sentence raised or lowered each predicted "
                        "label (about 0.6 s a paper on 2 cores)")
    use_defaults(p, predict_file)
    p.add_argument("--allow-unsigned", action="store_true", help=UNSIGNED_HELP)
    p.set_defaults(func=_predict)

    p = sub.add_parser("predict-dask", help="batch prediction on a Dask cluster (many machines), same predictor",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", help="a JSONL file or a glob of them")
    p.add_argument("-o", "--output", required=True, help="new folder for part-NNNNN.jsonl files")
    p.add_argument("--model", default=DEFAULT_BUNDLE, help="bundle path, the same on every worker")
    p.add_argument("--scheduler", help="tcp://HOST:8786 (default: a local cluster on this machine)")
    p.add_argument("--local-workers", type=int, help="processes of the local cluster (default: cores)")
    p.add_argument("--blocksize", help="input bytes per partition")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--top-k", type=int)
    p.add_argument("--threshold", type=float, help=THRESHOLD_HELP)
    p.add_argument("--policy", choices=POLICIES, help=POLICY_HELP)
    use_defaults(p, predict_with_dask)
    p.add_argument("--allow-unsigned", action="store_true", help=UNSIGNED_HELP + "; local workers only")
    p.set_defaults(func=_predict_dask)

    p = sub.add_parser("feedback", help="user corrections stored by the app and POST /feedback")
    feedback = p.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    p = feedback.add_parser("export", help="write them as JSONL (id, text, labels) for `papertasks prepare --extra`")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--db", help="the SQLite file (default: $PAPERTASKS_FEEDBACK_DB, else /data/feedback.sqlite3 "
                                "when /data is writable, else ~/.papertasks/feedback.sqlite3)")
    p.set_defaults(func=_feedback_export)

    p = sub.add_parser("app", help="the Gradio app (same as `python deployment/app.py`)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODELS_DIR,
                   help="a folder with models.json (every model it lists, with a picker) or one bundle folder")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--share", action="store_true")
    p.add_argument("--allow-unsigned", action="store_true", help=UNSIGNED_HELP)
    p.set_defaults(func=_app)

    settings = Settings()
    redis_default = os.environ.get("PAPERTASKS_REDIS_URL")
    p = sub.add_parser("serve", help="REST API (FastAPI + uvicorn): /predict, /predict/batch, /jobs, /docs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODELS_DIR,
                   help="a folder with models.json (requests pick a model by name) or one bundle folder")
    p.add_argument("--host", help="0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=int)
    p.add_argument("--redis-url", help="Redis for async jobs, e.g. redis://127.0.0.1:6379/0 (default: "
                                        "$PAPERTASKS_REDIS_URL); without it /jobs answers 503 and the rest works")
    p.add_argument("--queue", help="RQ queue the jobs go to")
    p.add_argument("--result-ttl", type=int, help="seconds job results and failures are kept")
    p.add_argument("--queue-ttl", type=int, help="seconds a job may wait for a worker")
    p.add_argument("--job-timeout", type=int, help="seconds a worker may spend on one job")
    p.add_argument("--job-heartbeat", type=float,
                   help="running jobs heartbeat this often; silent for 3x this = worker lost, job failed")
    p.add_argument("--max-batch", type=int, help="most items in one POST /predict/batch")
    p.add_argument("--max-upload-mb", type=float, default=settings.max_upload_bytes / 2**20,
                   help="largest file POST /jobs accepts")
    p.add_argument("--rate-limit", help="POSTs to /predict, /predict/batch, /jobs and /feedback per client address, "
                                        "as N/s, N/min or N/hour (a burst of N, refilled at that rate); past it: "
                                        f"429 with Retry-After. 0 or off: no limit. ${RATE_LIMIT_ENV} sets the "
                                        "default")
    p.add_argument("--max-queued-jobs", type=int, help="jobs waiting for a worker; past it POST /jobs answers 503 "
                                                       "with Retry-After and queues nothing (0: no cap)")
    p.add_argument("--jobs-token", metavar="TOKEN",
                   help="POST /jobs and GET /jobs/{id} then need 'Authorization: Bearer TOKEN' (default: "
                        f"${JOBS_TOKEN_ENV}, better than the flag, which other users see in the process list)")
    p.add_argument("--public-jobs", action="store_true",
                   help="serve /jobs without a token on a --host beyond loopback (refused otherwise)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    use_defaults(p, serve, Settings)
    p.add_argument("--allow-unsigned", action="store_true", help=UNSIGNED_HELP)
    p.set_defaults(redis_url=redis_default, func=_serve)
    if os.environ.get(RATE_LIMIT_ENV):  # a Space or container sets the limit without changing its command
        p.set_defaults(rate_limit=os.environ[RATE_LIMIT_ENV])

    p = sub.add_parser("worker", help="an RQ worker for /jobs (run any number, on any machine with the bundle)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--redis-url", default=redis_default, help="the server's Redis (default: $PAPERTASKS_REDIS_URL)")
    p.add_argument("--queue", nargs="+", default=[settings.queue], help="queues to take jobs from")
    p.add_argument("--model", default=DEFAULT_MODELS_DIR, help="the same --model as the server's")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--name", help="worker name (default: RQ picks a unique one)")
    p.add_argument("--heartbeat", type=float, help="seconds between the worker's heartbeats; /health stops counting "
                                                   "a worker silent for 3x this")
    use_defaults(p, run_worker)
    p.add_argument("--allow-unsigned", action="store_true", help=UNSIGNED_HELP)
    p.set_defaults(func=_worker)
