"""MODEL_CARD.md for a bundle, rendered from the JSON files in it, so it never disagrees with them.

`export` writes it first (data, sizes, parity); `evaluate` renders it again once metrics.json and
thresholds.json are in the bundle.
"""
from __future__ import annotations

import json
from pathlib import Path

from export import DEFAULT_MAX_PROB_DIFF, DEFAULT_MIN_SAME_SET
from papertasks.evaluate import MICRO_F1_SLACK, encoder_frozen, policy_summary, warm_started_from_refit
from papertasks.io import write_text
from papertasks.paths import OFFLINE_BASE_NAME


def _load(bundle: Path, name: str) -> dict:
    path = bundle / name
    return json.loads(path.read_text()) if path.is_file() else {}


def quantization_options(quantization: dict) -> list[tuple[str, str]]:
    """(words for the card, `export` flag) for each way the bundle's weights differ from the default
    signed 8-bit ones."""
    options = []
    if quantization.get("reduce_range"):
        options.append(("7-bit weights", "--reduce-range"))
    if quantization.get("weights", "").startswith("u8"):
        options.append(("unsigned weights", "--weights u8"))
    return options


def render_model_card(bundle: Path, name: str | None = None) -> str:
    """The card of the bundle in `bundle`, to be served as `name` (default: the folder's name; export
    renders it in a staging folder before the rename)."""
    name = name or bundle.name
    config, report = _load(bundle, "config.json"), _load(bundle, "export_report.json")
    quantized = report.get("quantization", {})
    quantization = quantization_options(quantized)
    metrics, thresholds = _load(bundle, "metrics.json"), _load(bundle, "thresholds.json")
    labels = _load(bundle, "labels.json")
    data = config.get("trained_on") or {}
    single_label = config.get("problem_type") == "single_label_classification"
    kind = ("Single-label classifier (softmax: one class per paper)" if single_label
            else "Multi-label classifier (a sigmoid per label)")
    window = ("the first and last halves of a" if config.get("truncation") == "head_tail" else "the start of a")
    lines = [
        "# papertasks model card", "",
        f"{kind} over {len(labels)} labels, "
        + (f"the encoder `{config.get('base_model')}` ({config.get('architecture')}) kept frozen as it was "
           "pretrained, its last layer fitted on the training rows (`train` with no epochs, then `refit-head`)"
           if encoder_frozen(config.get("training") or {}) else
           f"fine-tuned from `{config.get('base_model')}` ({config.get('architecture')}) with fastai"
           + (", starting from its label layer fitted on the frozen encoder's features (`refit-head`; "
              "`train --base-model` on that folder)" if warm_started_from_refit(config.get("training") or {}) else "")
           + (", its last layer then refitted on the training rows (`refit-head`)"
              if config.get("training", {}).get("head_refit") else ""))
        + (", the label layer reading the mean of the token vectors (`--pooling mean`)"
           if (config.get("training") or {}).get("pooling") == "mean" else "")
        + ", exported to ONNX and quantized to int8 "
        f"(dynamic, per-channel{''.join(f', {words}' for words, _ in quantization)}"
        + (", the output layer kept in fp32" if quantized.get("output_layer") == "fp32" else "")
        + f"). Inputs are 'Title. Abstract'; a long one keeps {window} "
        f"{config.get('max_length')}-token window.",
    ]
    hybrid = config.get("hybrid")
    if hybrid:
        w = hybrid["encoder_weight"]
        lines += ["", f"A hybrid: the served score of a label is {w:g} x the encoder's + {1 - w:g} x that of a bag of "
                  f"word-piece unigrams and bigrams over the whole abstract ({hybrid['features']:,} TF-IDF features, a "
                  f"logistic regression per label, `{hybrid['file']}`), the weight chosen on validation."]
    lines += ["", "## Data", ""]
    if data:
        cfg = data.get("config", {})
        lines += [
            f"- source: {', '.join(cfg.get('inputs', []))}",
            "- split: " + (f"time split on `{cfg.get('split_by')}`, test from {cfg.get('test_from')}"
                            if cfg.get("split_by") else "random, stratified by label (iterative stratification)")
            + f", seed {cfg.get('seed')}",
            f"- labels: {data.get('labels_before')} -> {data.get('labels_after')} after pruning "
            f"(min-count {cfg.get('min_count')}, top-k {cfg.get('top_k')})",
            "- rows: " + ", ".join(f"{k} {v}" for k, v in data.get("rows", {}).items()),
        ]
    else:
        lines.append("- not recorded")
    sizes = report.get("sizes", {})
    if sizes:
        lines += ["", "## Size", "", "| torch (safetensors) | ONNX fp32 | ONNX int8 (this bundle) |", "|---:|---:|---:|",
                  f"| {sizes['torch_safetensors_mb']} MB | {sizes['onnx_fp32_mb']} MB | {sizes['onnx_int8_mb']} MB |"]
    parity = report.get("parity")
    if parity:
        fp32, int8 = parity["onnx_fp32_vs_torch"], parity["onnx_int8_vs_torch"]
        where = parity.get("measured_on")  # bundles exported before it was recorded lack it
        where = f"; on {where['cpu']}, int8 kernels: {where['int8_kernels']}" if where else ""
        lines += ["", f"## Parity (on {parity['texts']} validation texts{where})", "",
                  "| vs torch | max prob diff | mean prob diff | same label set |", "|---|---:|---:|---:|",
                  f"| ONNX fp32 | {fp32['max_prob_diff']:.2e} | {fp32['mean_prob_diff']:.2e} | {100 * fp32['same_label_set']:.1f}% |",
                  f"| ONNX int8 | {int8['max_prob_diff']:.3f} | {int8['mean_prob_diff']:.4f} | {100 * int8['same_label_set']:.1f}% |"]
    if metrics and single_label:
        scalars = {k: v for k, v in metrics["test"].items() if isinstance(v, (int, float))}
        lines += ["", f"## Test metrics ({metrics.get('test_rows')} papers, this int8 bundle, top class)", "",
                  "| " + " | ".join(scalars) + " |", "|" + "---:|" * len(scalars),
                  "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in scalars.values()) + " |"]
    elif metrics:
        t = {k: (f"{v:.3f}" if isinstance(v, float) else "n/a") for k, v in metrics["test"].items()}
        lines += ["", f"## Test metrics ({metrics.get('test_rows')} papers, this int8 bundle, the tuned thresholds)", "",
                  "| micro-F1 | macro-F1 | samples-F1 | P@1 | P@3 | ROC-AUC (micro) | ROC-AUC (macro) |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {t['f1_micro']} | {t['f1_macro']} | {t['f1_samples']} | {t['precision_at_1']} | "
                  f"{t['precision_at_3']} | {t['roc_auc_micro']} | {t['roc_auc_macro']} |"]
        g = metrics.get("test_global_threshold")
        if g:
            lines += ["", f"With the global threshold alone: micro-F1 {g['f1_micro']:.3f}, macro-F1 {g['f1_macro']:.3f}, "
                      f"samples-F1 {g['f1_samples']:.3f} (the app's checkbox and `--policy global` switch to it)."]
    if thresholds and not single_label:
        lines += ["", "## Thresholds", "",
                  f"The tuned policy: {policy_summary(thresholds)}. Labels with fewer than "
                  f"{thresholds.get('min_positives', '?')} validation positives use the global threshold. The policy "
                  "was chosen on halves of the validation split: the best held-out macro-F1 that keeps held-out "
                  f"micro-F1 within {100 * MICRO_F1_SLACK:g} point of the global threshold's."]
    source = "REFIT_DIR" if config.get("training", {}).get("head_refit") else "MODEL_DIR"
    export = f"papertasks export --model {source} --data DATA_DIR --out deployment/models/{name}"
    export += "".join(f" {flag}" for _, flag in quantization)
    if hybrid:
        export += " --hybrid"
    tolerance = report.get("parity", {}).get("tolerance", {})
    if tolerance.get("int8_max_prob_diff", DEFAULT_MAX_PROB_DIFF) != DEFAULT_MAX_PROB_DIFF:
        export += f" --max-prob-diff {tolerance['int8_max_prob_diff']}"
    if tolerance.get("int8_min_same_label_set", DEFAULT_MIN_SAME_SET) != DEFAULT_MIN_SAME_SET:
        export += f" --min-same-set {tolerance['int8_min_same_label_set']}"
    # bundles from before head_tail record no truncation: they were trained (and are served) with the head
    # bundles exported before the base model was recorded by name were trained from the offline MiniLM
    training = {**config.get("training", {}), "truncation": config.get("truncation", "head")}
    training["base_model"] = training.get("base_model") or OFFLINE_BASE_NAME
    lines += ["", "## Reproduce", "", "```bash", *reproduce_commands(data.get("config", {}), training),
              export,
              f"papertasks evaluate --model deployment/models/{name} --data DATA_DIR --out reports/{name} --update-bundle",
              "```", ""]
    return "\n".join(lines)


def reproduce_commands(prepare: dict, training: dict) -> list[str]:
    """The prepare and train commands that made this model, from the configs recorded with it."""
    prep = ["papertasks prepare", *prepare.get("inputs", ["INPUT"]), "--out DATA_DIR",
            f"--min-count {prepare.get('min_count', 1)}"]
    if prepare.get("top_k"):
        prep.append(f"--top-k {prepare['top_k']}")
    if prepare.get("split_by"):
        prep.append(f"--split-by {prepare['split_by']} --test-from {prepare['test_from']}")
        if prepare.get("valid_from"):
            prep.append(f"--valid-from {prepare['valid_from']}")
    if prepare.get("fold_aliases") is False:
        prep.append("--no-fold-aliases")
    prep.append(f"--seed {prepare.get('seed', 42)}")
    return [" ".join(prep), *training_commands(training)]


def training_commands(training: dict, prefix: str = "") -> list[str]:
    """The train (and refit-head) commands that made a model, those of the model it was warm-started
    from first (its folders named START_MODEL_DIR, START_REFIT_DIR)."""
    warm = training.get("warm_start")
    commands = training_commands(warm, "START_" + prefix) if warm else []
    base = (f"START_{prefix}REFIT_DIR" if warm.get("head_refit") else f"START_{prefix}MODEL_DIR") if warm else None
    train = [f"papertasks train --data DATA_DIR --out {prefix}MODEL_DIR"]
    for key in ("base_model", "max_length", "truncation", "pooling", "loss", "focal_gamma", "pos_weight_clip",
                "oversample_to", "batch_size", "lr", "frozen_epochs", "epochs", "max_train", "max_valid", "seed"):
        value = base if key == "base_model" and base else training.get(key)
        off = (value in (None, "cls") or (key in ("pos_weight_clip", "oversample_to") and not value)
               or (key == "focal_gamma" and training.get("loss") != "focal") or (key == "loss" and value == "bce"))
        if not off:
            train.append(f"--{key.replace('_', '-')} {value}")
    commands.append(" ".join(train))
    refit = training.get("head_refit")
    if refit:  # the model was trained to MODEL_DIR, then its head refitted into REFIT_DIR
        line = [f"papertasks refit-head --model {prefix}MODEL_DIR --data DATA_DIR --out {prefix}REFIT_DIR"]
        for key in ("loss", "focal_gamma", "pos_weight_clip", "oversample_to", "epochs", "lr", "batch_size",
                    "max_train", "seed"):
            if refit.get(key) is not None and not (key == "focal_gamma" and refit.get("loss") != "focal"):
                line.append(f"--{key.replace('_', '-')} {refit[key]}")
        commands.append(" ".join(line))
    return commands


def write_model_card(bundle: Path, name: str | None = None) -> None:
    write_text(Path(bundle) / "MODEL_CARD.md", render_model_card(Path(bundle), name))
