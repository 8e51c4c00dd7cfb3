"""`papertasks evaluate`: tune thresholds on validation, measure on test, through the served predictor.

Probabilities come from `deployment.predictor.Predictor`, the same code the app and `predict` run,
so the numbers describe the int8 bundle that is served. The metric and threshold functions take
plain probability matrices, so the baselines are measured by exactly the same code.

Multi-label data (and sigmoid bundles) get thresholds tuned on validation and F1 / P@k / ROC-AUC.
Single-label data (multi-class or binary, as `prepare` recorded it; for a bundle, a softmax one)
predicts the top class, so nothing is tuned: accuracy, macro- and weighted-F1, top-3 accuracy,
ROC-AUC and a confusion matrix.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deployment.predictor import tuned_decisions
from papertasks.data import label_matrix, read_problem, read_split
from papertasks.errors import UserError
from papertasks.io import atomic_path, read_json, write_json, write_text

log = logging.getLogger(__name__)

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)
# What a single-label bundle's thresholds.json says: the predictor picks the top class, whatever its score.
TOP_CLASS_THRESHOLDS = {"global": 0.0, "per_label": {}, "note": "single-label: the top class is predicted"}


# The tuned policy, chosen by POLICY_REPEATS x two-fold cross-validation inside the validation split.
# Shrinkage toward the global threshold: a label's own threshold gets weight n / (n + shrink), n being
# its validation positives (None: the global threshold alone). Relative cut: a label is predicted only
# if it scores at least r times the paper's best label (deployment.predictor.tuned_decisions).
SHRINK_GRID = (0, 10, 30, 100, 300, 1000, 3000, None)
RELATIVE_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
POLICY_REPEATS = 3
# The tuned policy may give up at most this much held-out micro-F1 against the global threshold for
# macro-F1: per-label thresholds that maximized each label's F1 cost 3.9 points of micro-F1 on the
# arXiv test months, where labels were rarer than in the validation papers.
MICRO_F1_SLACK = 0.0025


def counts_at_thresholds(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True positives and 2tp + fp + fn (predicted + actual positives) of every label (columns) at every
    threshold of THRESHOLD_GRID (rows): what any F1 at those thresholds is computed from."""
    y = y.astype(bool)
    tp = np.stack([((probs >= t) & y).sum(axis=0) for t in THRESHOLD_GRID]).astype(np.float64)
    predicted = np.stack([(probs >= t).sum(axis=0) for t in THRESHOLD_GRID])
    return tp, predicted + y.sum(axis=0)


def _f1_at_thresholds(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 of every label (columns) and micro-F1 at every threshold of THRESHOLD_GRID (rows), from the
    true / false positive and false negative counts (F1 = 2tp / (2tp + fp + fn); 0 with no positives)."""
    tp, denominator = counts_at_thresholds(y, probs)
    return _f1(tp, denominator), _f1(tp.sum(axis=1), denominator.sum(axis=1))


def _f1(tp, denominator) -> np.ndarray:
    """F1 from counts: 2tp / (2tp + fp + fn), 0 where there is nothing to count."""
    tp, denominator = np.asarray(tp, dtype=np.float64), np.asarray(denominator)
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def best_global_threshold(y: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """The threshold of THRESHOLD_GRID with the best micro-F1, and that micro-F1."""
    _, micro = _f1_at_thresholds(y, probs)
    best = int(np.argmax(micro))
    return float(THRESHOLD_GRID[best]), float(micro[best])


def _own_thresholds(y, probs, min_positives) -> tuple[float, float, dict[int, float]]:
    per_label, micro = _f1_at_thresholds(y, probs)
    best = int(np.argmax(micro))
    own = {j: float(THRESHOLD_GRID[int(np.argmax(per_label[:, j]))]) for j in range(y.shape[1])
           if y[:, j].sum() >= min_positives}
    return float(THRESHOLD_GRID[best]), float(micro[best]), own


def _shrunk(global_t: float, own: dict[int, float], positives: np.ndarray, shrink: float | None) -> dict[int, float]:
    if shrink is None:
        return {}
    return {j: round(float(global_t + (t - global_t) * positives[j] / (positives[j] + shrink)), 4) for j, t in own.items()}


def shrunk_cut(global_t: float, own: dict[int, float], positives: np.ndarray, shrink: float | None) -> np.ndarray:
    """Every label's threshold: its own shrunk toward the global one (`_shrunk`), the global one where it has none."""
    cut = np.full(len(positives), global_t)
    for j, t in _shrunk(global_t, own, positives, shrink).items():
        cut[j] = t
    return cut


def _micro_macro(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """micro-F1 and macro-F1 over the labels present in `y`."""
    y = y.astype(bool)
    tp, denominator = (pred & y).sum(axis=0), pred.sum(axis=0) + y.sum(axis=0)
    present = y.sum(axis=0) > 0
    return float(_f1(tp.sum(), denominator.sum())), float(np.mean(_f1(tp, denominator)[present])) if present.any() else 0.0


def choose_policy(y: np.ndarray, probs: np.ndarray, min_positives: int) -> tuple[float | None, float, dict]:
    """(shrink, relative cut) of the tuned policy: the best held-out macro-F1 among the settings
    whose held-out micro-F1 is within MICRO_F1_SLACK of the global threshold's. Thresholds are tuned
    on one half of the validation papers and scored on the other, both ways, POLICY_REPEATS times,
    so the choice does not reward thresholds for fitting the papers they were tuned on. Ties go to
    more shrinkage, then to a smaller cut."""
    settings = [(shrink, r) for shrink in SHRINK_GRID for r in RELATIVE_GRID]
    held_out = {s: np.zeros(2) for s in settings}
    for seed in range(POLICY_REPEATS):
        halves = np.array_split(np.random.default_rng(seed).permutation(len(y)), 2)
        for tune, score in (halves, halves[::-1]):
            global_t, _, own = _own_thresholds(y[tune], probs[tune], min_positives / 2)
            positives = y[tune].sum(axis=0)
            for shrink in SHRINK_GRID:
                cut = shrunk_cut(global_t, own, positives, shrink)
                for r in RELATIVE_GRID:
                    held_out[shrink, r] += _micro_macro(y[score], tuned_decisions(probs[score], cut, r))
    mean = {s: v / (2 * POLICY_REPEATS) for s, v in held_out.items()}
    floor = mean[None, 0.0][0] - MICRO_F1_SLACK
    best = max((s for s in settings if mean[s][0] >= floor),
               key=lambda s: (round(mean[s][1], 6), SHRINK_GRID.index(s[0]), -s[1]))
    table = {f"shrink={s[0]},relative={s[1]}": [round(float(m), 4) for m in mean[s]] for s in settings}
    return best[0], best[1], table


def tune_thresholds(y: np.ndarray, probs: np.ndarray, labels: list[str], min_positives: int,
                    shrink: float | None = None, relative_to_top: float | None = None) -> dict:
    """One global threshold maximizing micro-F1; then, for each label with at least `min_positives`
    validation positives, the threshold maximizing its F1, shrunk toward the global one by
    n / (n + shrink), and a relative cut (`shrink` and `relative_to_top` both None: chosen by
    choose_policy; given: used as they are)."""
    global_t, micro, own = _own_thresholds(y, probs, min_positives)
    chosen = None
    if shrink is None and relative_to_top is None:
        shrink, relative_to_top, chosen = choose_policy(y, probs, min_positives)
    per_label = _shrunk(global_t, own, y.sum(axis=0), shrink)
    return {"global": global_t, "per_label": {labels[j]: t for j, t in per_label.items()},
            "relative_to_top": relative_to_top or 0.0,
            "min_positives": min_positives, "shrink": shrink,
            **({"policy_chosen_on_valid_halves": {"micro_f1_slack": MICRO_F1_SLACK, "micro_macro": chosen}}
               if chosen else {}),
            "valid_micro_f1_at_global": micro}


def threshold_vector(thresholds: dict, labels: list[str]) -> np.ndarray:
    return np.array([thresholds["per_label"].get(lab, thresholds["global"]) for lab in labels])


def tuned_predictions(thresholds: dict, labels: list[str], probs: np.ndarray) -> np.ndarray:
    """What the predictor's tuned policy predicts with these thresholds (its own rule, imported)."""
    return tuned_decisions(probs, threshold_vector(thresholds, labels), thresholds.get("relative_to_top", 0.0))


def precision_at_k(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of the k best-scored labels that are true, averaged over papers (k capped by n_labels)."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.take_along_axis(y, top, axis=1).sum(axis=1).mean() / k)


def compute_metrics(y: np.ndarray, probs: np.ndarray, cut: np.ndarray, labels: list[str],
                    pred: np.ndarray | None = None) -> dict:
    """Metrics of `pred` (default: probs >= cut); `cut` is reported as each label's threshold."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

    pred = probs >= cut if pred is None else pred
    present = y.sum(axis=0) > 0
    both = present & (y.sum(axis=0) < len(y))
    p, r, f, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    return {
        "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y[:, present], pred[:, present], average="macro", zero_division=0)),
        "f1_samples": float(f1_score(y, pred, average="samples", zero_division=0)),
        "precision_at_1": precision_at_k(y, probs, 1),
        "precision_at_3": precision_at_k(y, probs, 3),
        "roc_auc_micro": float(roc_auc_score(y[:, both], probs[:, both], average="micro")) if both.any() else None,
        "roc_auc_macro": float(roc_auc_score(y[:, both], probs[:, both], average="macro")) if both.any() else None,
        "labels_in_macro": int(present.sum()),
        "per_label": {lab: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(support[j]),
                            "threshold": float(cut[j])} for j, lab in enumerate(labels)},
    }


def single_label_metrics(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Metrics of the top class. `y` is one-hot. Macro averages run over the classes present in `y`
    (as the multi-label macro-F1 does), so a class missing from the test set does not count as 0;
    predicting it is still an error for the true class. Top-3 accuracy only when there are more
    than 3 classes; ROC-AUC of the second class for two, else macro one-vs-rest."""
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                                 roc_auc_score, top_k_accuracy_score)

    n = len(labels)
    true, pred = y.argmax(axis=1), probs.argmax(axis=1)
    present = np.flatnonzero(y.sum(axis=0) > 0)
    both = (y.sum(axis=0) > 0) & (y.sum(axis=0) < len(y))
    if n == 2:
        auc = float(roc_auc_score(y[:, 1], probs[:, 1])) if both[1] else None
    else:
        auc = float(roc_auc_score(y[:, both], probs[:, both], average="macro")) if both.any() else None
    p, r, f, support = precision_recall_fscore_support(true, pred, labels=np.arange(n), zero_division=0)
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "f1_macro": float(f1_score(true, pred, labels=present, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(true, pred, labels=present, average="weighted", zero_division=0)),
        "top3_accuracy": (float(top_k_accuracy_score(true, probs, k=3, labels=np.arange(n))) if n > 3 else None),
        "roc_auc": auc,
        "labels_in_macro": int(len(present)),
        "confusion_matrix": confusion_matrix(true, pred, labels=np.arange(n)).tolist(),
        "per_label": {lab: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(support[j])}
                      for j, lab in enumerate(labels)},
    }


def evaluate_probs(name: str, labels: list[str], y_valid, p_valid, y_test, p_test, min_positives: int,
                   problem: str = "multi-label") -> dict:
    """Multi-label: thresholds from validation; test metrics with the tuned policy, the global threshold,
    per-label thresholds alone (each label's best on validation) and 0.5.
    Single-label (multi-class, binary): the top class on validation and test, nothing tuned."""
    n = len(labels)
    if problem != "multi-label":
        return {"model": name, "problem": problem, "labels": n, "valid_rows": len(y_valid), "test_rows": len(y_test),
                "thresholds": TOP_CLASS_THRESHOLDS,
                "valid": _summary(single_label_metrics(y_valid, p_valid, labels)),
                "test": single_label_metrics(y_test, p_test, labels)}
    thresholds = tune_thresholds(y_valid, p_valid, labels, min_positives)
    per_label_only = tune_thresholds(y_valid, p_valid, labels, min_positives, shrink=0, relative_to_top=0.0)
    return {
        "model": name, "problem": problem, "labels": n, "valid_rows": len(y_valid), "test_rows": len(y_test),
        "thresholds": thresholds,
        "test": compute_metrics(y_test, p_test, threshold_vector(thresholds, labels), labels,
                                tuned_predictions(thresholds, labels, p_test)),
        "test_global_threshold": _summary(compute_metrics(y_test, p_test, np.full(n, thresholds["global"]), labels)),
        "test_per_label_thresholds": _summary(compute_metrics(y_test, p_test, threshold_vector(per_label_only, labels),
                                                              labels)),
        "test_threshold_0.5": _summary(compute_metrics(y_test, p_test, np.full(n, 0.5), labels)),
    }


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("per_label", "confusion_matrix")}


def load_eval_data(data_dir, labels: list[str]):
    """Validation and test texts and label matrices, checking the data's vocabulary fits the model."""
    data_labels = read_json(Path(data_dir) / "labels.json") if (Path(data_dir) / "labels.json").is_file() else None
    if data_labels is not None and set(data_labels) - set(labels):
        missing = sorted(set(data_labels) - set(labels))[:5]
        raise UserError(f"{data_dir} has labels the model does not know (e.g. {', '.join(missing)}); "
                        "evaluate the model on the data it was trained for")
    valid, test = read_split(data_dir, "valid"), read_split(data_dir, "test")
    return (valid["text"].tolist(), label_matrix(valid["labels"], labels),
            test["text"].tolist(), label_matrix(test["labels"], labels))


def evaluate_bundle(model: str, data: str, out: str, batch_size: int = 32, min_positives: int = 10,
                    allow_unsigned: bool = False, encoder_only: bool = False) -> dict:
    """Score a bundle with the served predictor, tune thresholds on validation, write the report to
    `out`. Recording the thresholds and metrics in the bundle is export's job
    (export.bundle.record_evaluation; `papertasks evaluate` does both). `allow_unsigned`: accept a
    folder without manifest.json (an fp32 onnx/ folder); `encoder_only`: a hybrid's encoder without
    its bag of n-grams."""
    from deployment.predictor import BundleError, Predictor

    try:
        predictor = Predictor(model, allow_unsigned=allow_unsigned)
    except BundleError as e:
        raise UserError(str(e)) from None
    if encoder_only:
        try:
            predictor.encoder_only()
        except BundleError as e:
            raise UserError(f"--encoder-only: {e}") from None
    labels = predictor.labels
    problem = evaluation_problem(predictor.single_label, read_problem(data), model, data)
    x_valid, y_valid, x_test, y_test = load_eval_data(data, labels)
    log.info("%s: scoring %d validation and %d test texts with %s", problem, len(x_valid), len(x_test), model)
    p_valid = score_texts(predictor, x_valid, batch_size, "valid")
    p_test = score_texts(predictor, x_test, batch_size, "test")
    report = evaluate_probs(bundle_name(predictor), labels, y_valid, p_valid, y_test, p_test,
                            min_positives, problem)
    if predictor.label_names:  # the names the bundle's answers show (label_names.json), for the report's tables
        report["label_names"] = predictor.label_names
    write_report(report, Path(out), p_test, y_test, labels)
    return report


def bundle_metrics(report: dict) -> dict:
    """The headline of a report, as a bundle's metrics.json keeps it (no per-label tables)."""
    return ({k: report[k] for k in ("model", "problem", "labels", "valid_rows", "test_rows")}
            | {k: _summary(report[k]) for k in ("test", "test_global_threshold") if k in report})


def encoder_frozen(training: dict) -> bool:
    """A model `train` ran for no epochs: its encoder is the base model's own, and only `refit-head`
    fitted its last layer (the shipped Papers with Code bundle)."""
    return bool(training.get("head_refit")) and training.get("frozen_epochs", 1) + training.get("epochs", 1) == 0


def warm_started_from_refit(training: dict) -> bool:
    """Fine-tuned from a frozen encoder whose label layer `refit-head` fitted first (linear probing,
    then fine-tuning): a head that already separates the labels, which a small training set needs."""
    warm = training.get("warm_start") or {}
    return bool(warm.get("head_refit")) and encoder_frozen(warm)


def bundle_name(predictor) -> str:
    """What reports call a bundle: its base model, fine-tuned or frozen, and whether its ONNX graph is
    int8-quantized."""
    import onnx

    graph = onnx.load(str(predictor.model_dir / "model.onnx"), load_external_data=False).graph
    quantized = any(node.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul") for node in graph.node)
    base = Path(predictor.config.get("base_model") or "model").name
    training = predictor.config.get("training") or {}
    pooled = " (mean-pooled)" if training.get("pooling") == "mean" else ""
    encoder = f"frozen {base}{pooled} + refitted head" if encoder_frozen(training) else f"fine-tuned {base}{pooled}"
    if warm_started_from_refit(training):
        encoder += " from a refitted head"
    name = f"{encoder}, {'int8' if quantized else 'fp32'} ONNX"
    if predictor.bag is not None:
        name += f" + bag of n-grams (encoder weight {predictor.encoder_weight:g})"
    return name


def evaluation_problem(single_label_model: bool, data_problem: str, model, data) -> str:
    """The bundle decides: a softmax bundle is judged by its top class (multi-class or binary, as the
    data says), a sigmoid bundle by its thresholds, which are tuned and written back even on
    single-label data (it was trained with --problem multi-label; top-class thresholds would make
    it predict every label)."""
    if not single_label_model:
        if data_problem != "multi-label":
            log.info("%s is %s but %s scores each label with a sigmoid: evaluated as multi-label", data,
                     data_problem, model)
        return "multi-label"
    if data_problem == "multi-label":
        raise UserError(f"{model} is a single-label model (one class per paper) but {data} is multi-label; "
                        "evaluate it on the single-label data it was trained for")
    return data_problem


def score_texts(predictor, texts, batch_size, name):
    """Probabilities as `evaluate` computes them (chunks of 512, a progress bar); int8 activations are
    quantized per batch, so anything compared with a report should be scored the same way."""
    from tqdm.auto import tqdm

    chunks = [texts[i:i + 512] for i in range(0, len(texts), 512)]
    return np.concatenate([predictor.predict_proba(c, batch_size=batch_size)
                           for c in tqdm(chunks, desc=f"scoring {name}", unit="x512")]) if texts else \
        np.zeros((0, len(predictor.labels)))


def is_single_label(report: dict) -> bool:
    return report.get("problem", "multi-label") != "multi-label"


def write_report(report: dict, out: Path, p_test: np.ndarray, y_test: np.ndarray, labels: list[str]) -> None:
    """metrics.json, report.md (headline + per-label table), the test scores (for `compare`'s
    bootstrap) and plots: per-label F1 with the precision-recall curve (multi-label) or the
    confusion matrix (single-label)."""
    from papertasks.test_scores import write_test_scores

    write_test_scores(out, p_test, y_test, labels)
    write_json(out / "metrics.json", report)
    _plot_per_label(report["test"]["per_label"], out / "per_label_f1.png")
    t = report["test"]
    if is_single_label(report):
        _plot_confusion(np.array(t["confusion_matrix"]), labels, out / "confusion_matrix.png")
        log.info("test: accuracy %.3f, macro-F1 %.3f, weighted-F1 %.3f; report in %s", t["accuracy"], t["f1_macro"],
                 t["f1_weighted"], out)
    else:
        _plot_pr(y_test, p_test, out / "precision_recall.png")
        log.info("test: micro-F1 %.3f, macro-F1 %.3f, P@1 %.3f; report in %s", t["f1_micro"], t["f1_macro"],
                 t["precision_at_1"], out)
    write_text(out / "report.md", render_report(report))


def _fmt(value) -> str:
    return f"{value:.3f}" if value is not None else "n/a"


def headline_row(report: dict) -> str:
    """One row under `headline_header(report)`: the test metrics of the report's problem."""
    t = report["test"]
    if is_single_label(report):
        return (f"| {report['model']} | {t['accuracy']:.3f} | {t['f1_macro']:.3f} | {t['f1_weighted']:.3f} | "
                f"{_fmt(t['top3_accuracy'])} | {_fmt(t['roc_auc'])} |")
    return (f"| {report['model']} | {t['f1_micro']:.3f} | {t['f1_macro']:.3f} | {t['f1_samples']:.3f} | "
            f"{t['precision_at_1']:.3f} | {t['precision_at_3']:.3f} | {_fmt(t['roc_auc_micro'])} | {_fmt(t['roc_auc_macro'])} |")


HEADLINE_HEADER = ("| model | micro-F1 | macro-F1 | samples-F1 | P@1 | P@3 | ROC-AUC micro | ROC-AUC macro |\n"
                   "|---|---:|---:|---:|---:|---:|---:|---:|")
SINGLE_LABEL_HEADER = ("| model | accuracy | macro-F1 | weighted-F1 | top-3 accuracy | ROC-AUC |\n"
                       "|---|---:|---:|---:|---:|---:|")


def headline_header(report: dict) -> str:
    return SINGLE_LABEL_HEADER if is_single_label(report) else HEADLINE_HEADER


OTHER_SETTINGS = {"test_global_threshold": "the global threshold alone",
                  "test_per_label_thresholds": "each label's best threshold on validation, unshrunk, no relative cut",
                  "test_threshold_0.5": "0.5"}


def policy_summary(thresholds: dict) -> str:
    """The tuned policy in words, for reports and model cards."""
    text = f"global {thresholds['global']}, {len(thresholds['per_label'])} labels with their own threshold"
    if thresholds.get("per_label") and thresholds.get("shrink"):
        text += f" shrunk toward it by n / (n + {thresholds['shrink']:g})"
    if thresholds.get("relative_to_top"):
        text += f", a label kept only if it scores at least {thresholds['relative_to_top']:g} x the paper's best"
    return text


def render_report(report: dict) -> str:
    if is_single_label(report):
        return _render_single_label(report)
    th = report["thresholds"]
    lines = [f"# Evaluation: {report['model']}", "",
             f"{report['labels']} labels; thresholds tuned on {report['valid_rows']} validation papers "
             f"({policy_summary(th)}); measured on {report['test_rows']} test papers.",
             "", HEADLINE_HEADER, headline_row(report), "",
             "Same test set, other thresholds (micro-F1 / macro-F1): "
             + "; ".join(f"{name} {report[key]['f1_micro']:.3f} / {report[key]['f1_macro']:.3f}"
                         for key, name in OTHER_SETTINGS.items() if key in report) + ".",
             "", "![per-label F1](per_label_f1.png) ![precision-recall](precision_recall.png)", "",
             "| label | precision | recall | F1 | support | threshold |", "|---|---:|---:|---:|---:|---:|"]
    rows = sorted(report["test"]["per_label"].items(), key=lambda kv: -kv[1]["support"])
    lines += [f"| {_named(report, lab)} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} | "
              f"{m['threshold']:.2f} |" for lab, m in rows]
    return "\n".join(lines) + "\n"


def _named(report: dict, label: str) -> str:
    """'cs.IT — Information Theory' where the bundle names the label, as the app shows it."""
    name = report.get("label_names", {}).get(label)
    return f"{label} — {name}" if name else label


def _render_single_label(report: dict) -> str:
    t, v = report["test"], report["valid"]
    lines = [f"# Evaluation: {report['model']}", "",
             f"{report['problem']}, {report['labels']} classes; the top class is predicted (no thresholds); "
             f"measured on {report['test_rows']} test papers (macro averages over the {t['labels_in_macro']} "
             "classes present there).", "", SINGLE_LABEL_HEADER, headline_row(report), "",
             f"Validation ({report['valid_rows']} papers): accuracy {v['accuracy']:.3f}, macro-F1 {v['f1_macro']:.3f}.",
             "", "![per-class F1](per_label_f1.png) ![confusion matrix](confusion_matrix.png)", "",
             "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    rows = sorted(t["per_label"].items(), key=lambda kv: -kv[1]["support"])
    lines += [f"| {_named(report, lab)} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
              for lab, m in rows]
    return "\n".join(lines) + "\n"


def _save_fig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _plot_per_label(per_label: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = sorted(per_label.items(), key=lambda kv: -kv[1]["support"])
    fig = Figure(figsize=(max(6, 0.25 * len(rows)), 4))
    ax = fig.subplots()
    ax.bar(range(len(rows)), [m["f1"] for _, m in rows])
    ax.set_xticks(range(len(rows)), [lab for lab, _ in rows], rotation=90, fontsize=7)
    ax.set_ylabel("test F1")
    ax.set_ylim(0, 1)
    ax.set_title("Per-label F1 (labels by test support, most frequent first)")
    fig.tight_layout()
    _save_fig(fig, path)


def _plot_pr(y: np.ndarray, probs: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve

    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    if y.sum():
        precision, recall, _ = precision_recall_curve(y.ravel(), probs.ravel())
        ax.plot(recall, precision)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Micro precision-recall (test)")
    fig.tight_layout()
    _save_fig(fig, path)


def _plot_confusion(counts: np.ndarray, labels: list[str], path: Path) -> None:
    """Rows are the true classes, normalized to sum to 1, so rare classes read as clearly as common ones."""
    from matplotlib.figure import Figure

    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = max(5.0, 0.3 * len(labels) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test, share of each true class)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save_fig(fig, path)
