"""`papertasks` console script: one subcommand per stage, each a thin shell over library code.

Heavy imports (torch, transformers, gradio) happen inside the handlers, so `--help` is instant
and `predict`/`app` never load torch.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from papertasks.errors import UserError
from scrapers.cli import register as register_scrape
from papertasks.paths import DEFAULT_BASE_MODEL, DEFAULT_BUNDLE, DEFAULT_MODELS_DIR, labels_json_for
from deployment.truncation import STRATEGIES
from export import DEFAULT_MAX_PROB_DIFF, DEFAULT_MIN_SAME_SET, WEIGHT_TYPES
from papertasks.data import PROBLEMS

EPILOG_PIPELINE = """\
the pipeline, end to end:
  papertasks prepare ../shared/data/arxiv_cs.jsonl.gz --out data/arxiv --min-count 50 \\
      --split-by listing_date --test-from 2026-03-01
  papertasks train --data data/arxiv --out models/arxiv
  papertasks export --model models/arxiv --data data/arxiv --out deployment/models/arxiv
  papertasks evaluate --model deployment/models/arxiv --data data/arxiv --out reports/arxiv
  papertasks baseline --data data/arxiv --out reports/tfidf_arxiv
  papertasks compare reports/arxiv reports/tfidf_arxiv --out reports/compare_arxiv
  papertasks predict papers.jsonl -o predictions.jsonl
  papertasks app
  papertasks serve --redis-url redis://127.0.0.1:6379/0     # REST API; and, for /jobs:
  papertasks worker --redis-url redis://127.0.0.1:6379/0
"""


def _prepare(args):
    from papertasks.data import PrepareConfig, prepare

    cfg = PrepareConfig(**{k: v for k, v in vars(args).items() if k in PrepareConfig.__dataclass_fields__})
    cfg.labels_json = cfg.labels_json or labels_json_for(args.out)
    prepare(cfg)


def _train(args):
    from papertasks.train import TrainConfig, train

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    if args.folds:
        from papertasks.train import cross_validate_training

        cross_validate_training(cfg, args.folds)
    else:
        train(cfg)


def _refit_head(args):
    from papertasks.refit import RefitConfig, refit_head

    refit_head(RefitConfig(**{k: v for k, v in vars(args).items() if k in RefitConfig.__dataclass_fields__}))


def _evaluate(args):
    from papertasks.evaluate import bundle_metrics, evaluate_bundle

    report = evaluate_bundle(args.model, args.data, args.out, batch_size=args.batch_size,
                             min_positives=args.min_positives)
    if not args.no_update:
        from export.bundle import record_evaluation

        record_evaluation(args.model, report["thresholds"], bundle_metrics(report),
                          labels_json=args.labels_json or labels_json_for(args.data))


def _baseline(args):
    from papertasks.baseline import run_baseline

    run_baseline(args.data, args.out, args.model, max_train=args.max_train, folds=args.folds,
                 base_model=args.base_model, max_features=args.max_features, min_positives=args.min_positives,
                 seed=args.seed)


def _compare(args):
    from papertasks.compare import compare_reports

    print(compare_reports(args.reports, out=args.out, resamples=args.bootstrap, seed=args.seed)[1], end="")


def _export(args):
    from export.onnx_export import export_bundle

    export_bundle(args.model, args.out, data_dir=args.data, parity_texts=args.parity_texts,
                  max_prob_diff=args.max_prob_diff, min_same_set=args.min_same_set,
                  work_dir=args.work_dir, reduce_range=args.reduce_range, weights=args.weights)


def _predict(args):
    from serving.batch import predict_file

    predict_file(args.input, args.output, model_dir=args.model, batch_size=args.batch_size,
                 text_field=args.text_field, top_k=args.top_k, workers=args.workers)


def _predict_dask(args):
    from serving.distributed import predict_with_dask

    predict_with_dask(args.inputs, args.output, args.model, scheduler=args.scheduler, blocksize=args.blocksize,
                      top_k=args.top_k, batch_size=args.batch_size, local_workers=args.local_workers)


def _app(args):
    from deployment.app import launch

    launch(model_dir=args.model, host=args.host, port=args.port, share=args.share)


def _serve(args):
    from serving.api import serve

    serve(args.model, host=args.host, port=args.port, log_level=args.log_level, redis_url=args.redis_url,
          queue=args.queue, result_ttl=args.result_ttl, queue_ttl=args.queue_ttl, job_timeout=args.job_timeout,
          job_heartbeat=args.job_heartbeat, max_batch=args.max_batch,
          max_upload_bytes=int(args.max_upload_mb * 2**20))


def _worker(args):
    from serving.jobs import run_worker

    if not args.redis_url:
        raise UserError("no Redis: pass --redis-url redis://HOST:6379/0 (or set PAPERTASKS_REDIS_URL)")
    run_worker(args.redis_url, args.queue, model_dir=args.model, burst=args.burst, name=args.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="papertasks", description=__doc__.splitlines()[0],
        epilog=EPILOG_PIPELINE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help="clean, prune rare labels, split; write the label vocabulary and a data report",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="JSONL / CSV / Parquet files (.gz allowed)")
    p.add_argument("--out", required=True, help="folder for train/valid/test.jsonl and the report")
    p.add_argument("--text-field", help="one text column (default: 'text' if present, else title + abstract)")
    p.add_argument("--title-field", default="title")
    p.add_argument("--abstract-field", default="abstract")
    p.add_argument("--label-field", help="labels column (default: the first of labels, categories, tasks, task_id, label)")
    p.add_argument("--label-sep", default=None, help="separator when labels are one delimited string (default: , ; or |)")
    p.add_argument("--id-field", default=None, help="id column (default: id, arxiv_id or paper_id if present)")
    p.add_argument("--min-count", type=int, default=1, help="drop labels with fewer training examples than this")
    p.add_argument("--top-k", type=int, default=None, help="keep only the K most frequent labels")
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1, help="ignored with --split-by")
    p.add_argument("--split-by", default=None, help="date field for a time split (rows from --test-from on are the test set)")
    p.add_argument("--test-from", default=None, help="first date of the test set, e.g. 2026-03-01")
    p.add_argument("--valid-from", default=None,
                   help="with --split-by: rows from this date up to --test-from are the validation set "
                        "(default: a stratified random --valid-frac of the earlier rows)")
    p.add_argument("--max-rows", type=int, default=None, help="sample this many rows first (quick experiments, tests)")
    p.add_argument("--no-fold-aliases", dest="fold_aliases", action="store_false",
                   help="keep arXiv cross-listed aliases (eess.SY / cs.SY, ...) as separate labels")
    p.add_argument("--problem", default="auto", choices=("auto",) + PROBLEMS,
                   help="auto: multi-class (binary with 2 labels) when every row has one label, else multi-label")
    p.add_argument("--labels-json", default=None,
                   help="where else to write label -> index (default: json_files/<name of --out>/labels.json)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="fine-tune a Hugging Face encoder with fastai (multi-label)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by `prepare`")
    p.add_argument("--out", required=True, help="folder for the Hugging Face model + labels + config")
    p.add_argument("--base-model", default=None,
                   help=f"hub id or local folder (default: the offline MiniLM; with a hub: {DEFAULT_BASE_MODEL})")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--truncation", default="head_tail", choices=STRATEGIES,
                   help="long texts: keep the first and last half of the window (head_tail) or the start (head)")
    p.add_argument("--problem", default=None, choices=PROBLEMS, help="override what `prepare` found in the data")
    p.add_argument("--loss", default="bce", choices=("bce", "focal"),
                   help="bce: (binary) cross-entropy; focal: focal loss (--focal-gamma)")
    p.add_argument("--focal-gamma", type=float, default=2.0)
    p.add_argument("--pos-weight-clip", type=float, default=0.0,
                   help="weight positives by negatives/positives per label, clipped to this (0: off)")
    p.add_argument("--oversample-to", type=int, default=0,
                   help="repeat the rows of labels with fewer training examples than this (at most 10x; 0: off)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the head; lower groups get lr/10, lr/100")
    p.add_argument("--frozen-epochs", type=int, default=1, help="epochs training only the head")
    p.add_argument("--epochs", type=int, default=2, help="epochs with the whole model unfrozen")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training rows (seeded sample)")
    p.add_argument("--max-valid", type=int, default=None, help="use at most this many validation rows")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--folds", type=int, default=0,
                   help="K >= 2: K-fold cross-validation on train + valid (one model per fold; mean and std per "
                        "metric in --out/cv.md) instead of training one model; 0: off")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=_train)

    p = sub.add_parser("refit-head", help="retrain only the last layer of a trained model on all its training rows "
                                          "(cached features, imbalance options); a new model folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="folder written by `train`")
    p.add_argument("--data", required=True, help="the `prepare` folder it was trained on")
    p.add_argument("--out", required=True, help="new folder for the model with the refitted head")
    p.add_argument("--loss", default="bce", choices=("bce", "focal"))
    p.add_argument("--focal-gamma", type=float, default=2.0)
    p.add_argument("--pos-weight-clip", type=float, default=0.0, help="as train's (0: off)")
    p.add_argument("--oversample-to", type=int, default=0, help="as train's (0: off)")
    p.add_argument("--epochs", type=int, default=480, help="passes over the cached features")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training rows (seeded sample)")
    p.add_argument("--min-positives", type=int, default=10, help="as evaluate's, for the validation comparison")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=_refit_head)

    p = sub.add_parser("export", help="ONNX export, int8 quantization, parity check, deployment bundle",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="folder written by `train`")
    p.add_argument("--out", default=DEFAULT_BUNDLE, help="bundle folder (the Space serves those listed in deployment/models/models.json)")
    p.add_argument("--data", default=None, help="prepared data folder: parity texts come from its validation split")
    p.add_argument("--parity-texts", type=int, default=64)
    p.add_argument("--max-prob-diff", type=float, default=DEFAULT_MAX_PROB_DIFF, help="fail if int8 and torch differ more than this")
    p.add_argument("--min-same-set", type=float, default=DEFAULT_MIN_SAME_SET,
                   help="fail if fewer texts than this share get the same label set in int8 and torch")
    p.add_argument("--work-dir", default=None, help="keep the fp32 ONNX here (default: <model>/onnx)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit int8 weights: no overflow in the int8 kernels of x86 CPUs without VNNI (AVX2 only)")
    p.add_argument("--weights", choices=sorted(WEIGHT_TYPES), default="s8",
                   help="signed int8 weights (fastest kernels; they saturate on x86 CPUs without VNNI) or unsigned "
                        "ones (no saturation on any CPU)")
    p.set_defaults(func=_export)

    p = sub.add_parser("evaluate", help="tune thresholds on validation, report metrics on test (ONNX predictor)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_BUNDLE, help="bundle folder (or any folder with model.onnx + labels)")
    p.add_argument("--data", required=True, help="folder written by `prepare`")
    p.add_argument("--out", required=True, help="report folder: metrics.json, report.md, plots")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--min-positives", type=int, default=10,
                   help="labels with fewer validation positives use the global threshold")
    p.add_argument("--no-update", action="store_true", help="do not write thresholds and metrics into the bundle")
    p.add_argument("--labels-json", default=None,
                   help="thresholds.json is written beside this vocabulary (default: json_files/<name of --data>/)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("baseline", help="TF-IDF or frozen-embedding + logistic regression, same split and metrics",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by `prepare`")
    p.add_argument("--out", required=True, help="report folder: metrics.json, report.md, plots (cv.json, cv.md)")
    p.add_argument("--model", default="tfidf", choices=("tfidf", "embeddings"),
                   help="tfidf: TF-IDF words + bigrams; embeddings: the base model's mean-pooled sentence embeddings "
                        "(cached in <data>/embeddings/)")
    p.add_argument("--base-model", default=None,
                   help="--model embeddings: hub id or local folder (default: the offline all-MiniLM-L6-v2)")
    p.add_argument("--max-features", type=int, default=100_000, help="--model tfidf: vocabulary size")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training rows (seeded sample)")
    p.add_argument("--folds", type=int, default=0,
                   help="K >= 2: K-fold cross-validation on train + valid (mean and std per metric) "
                        "instead of the test split; 0: off")
    p.add_argument("--min-positives", type=int, default=10,
                   help="labels with fewer validation positives use the global threshold (multi-label)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=_baseline)

    p = sub.add_parser("compare", help="reports of evaluate / baseline side by side, with the first one's lead",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       epilog="example: papertasks compare reports/arxiv reports/tfidf_arxiv reports/embeddings_arxiv "
                              "--out reports/compare_arxiv")
    p.add_argument("reports", nargs="+", help="report folders (each with metrics.json), the model first")
    p.add_argument("--out", default=None, help="also write compare.md and compare.json here")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="paired bootstrap resamples of the test papers for each lead's 95%% interval (0: none)")
    p.add_argument("--seed", type=int, default=0, help="of the bootstrap resamples")
    p.set_defaults(func=_compare)

    p = sub.add_parser("predict", help="batch prediction: JSONL/CSV in, JSONL out (id, labels, scores)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", help="JSONL / CSV / Parquet with `text` or title + abstract")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--model", default=DEFAULT_BUNDLE)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--text-field", default=None)
    p.add_argument("--top-k", type=int, default=None, help="keep only the K best scores per line")
    p.add_argument("--workers", type=int, default=1, help="processes scoring chunks in parallel (order kept)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("predict-dask", help="batch prediction on a Dask cluster (many machines), same predictor",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", help="a JSONL file or a glob of them")
    p.add_argument("-o", "--output", required=True, help="new folder for part-NNNNN.jsonl files")
    p.add_argument("--model", default=DEFAULT_BUNDLE, help="bundle path, the same on every worker")
    p.add_argument("--scheduler", default=None, help="tcp://HOST:8786 (default: a local cluster on this machine)")
    p.add_argument("--local-workers", type=int, default=None, help="processes of the local cluster (default: cores)")
    p.add_argument("--blocksize", default="16MiB", help="input bytes per partition")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top-k", type=int, default=None)
    p.set_defaults(func=_predict_dask)

    p = sub.add_parser("app", help="the Gradio app (same as `python deployment/app.py`)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODELS_DIR,
                   help="a folder with models.json (every model it lists, with a picker) or one bundle folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true")
    p.set_defaults(func=_app)

    redis_default = os.environ.get("PAPERTASKS_REDIS_URL")
    p = sub.add_parser("serve", help="REST API (FastAPI + uvicorn): /predict, /predict/batch, /jobs, /docs",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODELS_DIR,
                   help="a folder with models.json (requests pick a model by name) or one bundle folder")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--redis-url", default=redis_default,
                   help="Redis for async jobs, e.g. redis://127.0.0.1:6379/0 (default: $PAPERTASKS_REDIS_URL); "
                        "without it /jobs answers 503 and the rest works")
    p.add_argument("--queue", default="papertasks", help="RQ queue the jobs go to")
    p.add_argument("--result-ttl", type=int, default=3600, help="seconds job results and failures are kept")
    p.add_argument("--queue-ttl", type=int, default=3600, help="seconds a job may wait for a worker")
    p.add_argument("--job-timeout", type=int, default=3600, help="seconds a worker may spend on one job")
    p.add_argument("--job-heartbeat", type=float, default=5.0,
                   help="running jobs heartbeat this often; silent for 3x this = worker lost, job failed")
    p.add_argument("--max-batch", type=int, default=256, help="most items in one POST /predict/batch")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest file POST /jobs accepts")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="an RQ worker for /jobs (run any number, on any machine with the bundle)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--redis-url", default=redis_default, help="the server's Redis (default: $PAPERTASKS_REDIS_URL)")
    p.add_argument("--queue", nargs="+", default=["papertasks"], help="queues to take jobs from")
    p.add_argument("--model", default=DEFAULT_MODELS_DIR, help="the same --model as the server's")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--name", default=None, help="worker name (default: RQ picks a unique one)")
    p.set_defaults(func=_worker)

    register_scrape(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for package in ("papertasks", "export", "scrapers", "serving"):
        logging.getLogger(package).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.func(args)
    except UserError as e:
        print(f"papertasks {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"papertasks {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
