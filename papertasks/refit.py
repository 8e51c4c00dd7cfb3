"""`papertasks refit-head`: retrain only the last layer of a fine-tuned model, on all its training rows.

On a CPU the encoder gets about one epoch, and a long tail is lost in the head: labels with a few
hundred examples get too few gradient steps to move off "no". Classifier re-training (Kang et al.,
2020, "Decoupling representation and classifier for long-tailed recognition") keeps the fine-tuned
encoder and fits its last linear layer again, from scratch, on the encoder's own features of every
training row, with `train`'s imbalance options (`--pos-weight-clip`, `--loss focal`,
`--oversample-to`). The features take one forward pass (no backward) and are cached beside the
model; each head then takes seconds, so trying a loss costs a fraction of a fine-tuning epoch.

The head is the model's last `nn.Linear` with one output per label (BERT's `classifier`, RoBERTa's
`classifier.out_proj`, ...); its input is captured with a forward hook, so what it is refitted on is
exactly what it sees when served. The output is a complete model folder (`save_pretrained`) that
`export` takes as it is; `training_config.json` records the refit and its validation metrics
beside those of the head it replaced, so a refit that does not help is seen before it is shipped.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from papertasks.data import label_matrix, read_labels, read_split
from papertasks.errors import UserError
from papertasks.io import atomic_dir, write_json

log = logging.getLogger(__name__)


@dataclass
class RefitConfig:
    model: str
    data: str
    out: str
    loss: str = "bce"  # or "focal"
    focal_gamma: float = 2.0
    pos_weight_clip: float = 0.0  # 0: no positive-class weights (as in train)
    oversample_to: int = 0  # 0: no oversampling
    epochs: int = 480  # 30 and 120 left the arXiv head under-trained (bench/refit_head.py)
    lr: float = 3e-3
    batch_size: int = 256
    max_train: int | None = None
    min_positives: int = 10
    seed: int = 42


def head_inputs(hf_model, tokenizer, texts: list[str], max_length: int, truncation: str,
                batch_size: int = 64) -> np.ndarray:
    """What the last linear layer receives for each text, in eval mode, on the windows the predictor
    builds. Batches are sorted by length so each is padded only to its own longest window."""
    import torch
    from tqdm.auto import tqdm

    from papertasks.modeling import (HFSequenceClassifier, last_linear, length_sorted_batches, pad_id_of, pad_windows,
                                     text_windows)

    classifier = HFSequenceClassifier(hf_model).eval()  # the pooling the model was trained and is served with
    layer = last_linear(hf_model, hf_model.config.num_labels)
    windows = text_windows(tokenizer, texts, max_length, truncation)
    features = np.zeros((len(texts), layer.in_features), dtype=np.float32)
    captured = []
    hook = layer.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    try:
        with torch.inference_mode():
            for rows in tqdm(length_sorted_batches([len(w) for w in windows], batch_size), desc="head features",
                             unit="batch"):
                input_ids, mask = pad_windows([windows[i] for i in rows], pad_id_of(tokenizer))
                captured.clear()
                classifier(input_ids, mask)
                features[rows] = captured[-1].float().numpy()
    finally:
        hook.remove()
    return features


def fit_linear_head(x: np.ndarray, y: np.ndarray, loss_func, single_label: bool, epochs: int, lr: float,
                    batch_size: int, seed: int):
    """A fresh linear layer fitted with minibatch Adam; returns it and the number of optimizer steps."""
    import torch

    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    inputs = torch.as_tensor(x)
    targets = torch.as_tensor(y.argmax(axis=1)) if single_label else torch.as_tensor(y, dtype=torch.float32)
    order = torch.Generator().manual_seed(seed)
    steps = 0
    for _ in range(epochs):
        for rows in torch.randperm(len(inputs), generator=order).split(batch_size):
            optimizer.zero_grad()
            loss_func(head(inputs[rows]), targets[rows]).backward()
            optimizer.step()
            steps += 1
    return head, steps


def head_probabilities(weight, bias, x: np.ndarray, single_label: bool) -> np.ndarray:
    """Probabilities from a linear layer's weights over cached features (softmax or sigmoids)."""
    import torch

    with torch.no_grad():
        logits = torch.as_tensor(x) @ torch.as_tensor(weight).T + torch.as_tensor(bias)
    return (torch.softmax(logits, dim=1) if single_label else torch.sigmoid(logits)).numpy()


def _cached_head_inputs(model_dir: Path, hf_model, tokenizer, name: str, texts: list[str], max_length: int,
                        truncation: str) -> np.ndarray:
    """head_inputs, cached in <model>/head_features/ and keyed on the texts and the weights' hash."""
    from papertasks.embeddings import cached_array, texts_hash

    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    meta = {"rows": len(texts), "texts_sha256": texts_hash(texts), "weights_sha256": weights,
            "max_length": max_length, "truncation": truncation}
    return cached_array(model_dir / "head_features", name, meta,
                        lambda: head_inputs(hf_model, tokenizer, texts, max_length, truncation), "head features")


def refit_head(cfg: RefitConfig) -> Path:
    import torch

    from papertasks.evaluate import evaluate_probs
    from papertasks.kfold import sample_rows
    from papertasks.learner import make_loss, positive_weights
    from papertasks.modeling import last_linear, load_trained, trained_window, training_record
    from papertasks.train import oversample_rows

    model_dir, out = Path(cfg.model), Path(cfg.out)
    if out.resolve() == model_dir.resolve():
        raise UserError("--out must be a new folder: the refitted model is written beside the original, not over it")
    if cfg.loss not in ("bce", "focal"):
        raise UserError("--loss must be bce or focal")
    hf_model, tokenizer, labels = load_trained(model_dir)
    if labels != read_labels(cfg.data):
        raise UserError(f"{model_dir} was trained on other labels than {cfg.data}")
    training = training_record(model_dir)
    max_length, truncation = trained_window(training)
    single_label = hf_model.config.problem_type == "single_label_classification"
    problem = training.get("problem") or ("multi-class" if single_label else "multi-label")

    train_df = sample_rows(read_split(cfg.data, "train"), cfg.max_train, cfg.seed)
    valid_df = read_split(cfg.data, "valid")
    x, y = {}, {}
    for name, df in (("train", train_df), ("valid", valid_df)):
        x[name] = _cached_head_inputs(model_dir, hf_model, tokenizer, name, df["text"].tolist(), max_length,
                                      truncation)
        y[name] = label_matrix(df["labels"], labels)

    t0 = time.time()
    weights = positive_weights(y["train"], cfg.pos_weight_clip) if cfg.pos_weight_clip else None
    rows = oversample_rows(y["train"], cfg.oversample_to, cfg.seed) if cfg.oversample_to else np.arange(len(x["train"]))
    loss_func = make_loss(single_label, cfg.loss, cfg.focal_gamma, weights)
    head, steps = fit_linear_head(x["train"][rows], y["train"][rows], loss_func, single_label, cfg.epochs, cfg.lr,
                                  cfg.batch_size, cfg.seed)
    seconds = round(time.time() - t0, 1)

    layer = last_linear(hf_model, len(labels))
    before = (layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())
    after = (head.weight.detach().numpy(), head.bias.detach().numpy())
    valid = {}
    for name, (w, b) in (("fine-tuned head", before), ("refitted head", after)):
        probs = head_probabilities(w, b, x["valid"], single_label)
        report = evaluate_probs(name, labels, y["valid"], probs, y["valid"], probs, cfg.min_positives, problem)
        keys = ("accuracy", "f1_macro") if single_label else ("f1_micro", "f1_macro", "precision_at_1", "roc_auc_macro")
        valid[name] = {k: report["test"][k] for k in keys}
    log.info("validation (thresholds tuned on it, so optimistic for both): %s", valid)

    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(after[0]))
        layer.bias.copy_(torch.as_tensor(after[1]))
    with atomic_dir(out) as staging:  # an interrupted save leaves no half model at --out
        hf_model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json(staging / "labels.json", {lab: i for i, lab in enumerate(labels)})
        write_json(staging / "training_config.json", {
            **training, "head_refit": {**asdict(cfg), "train_rows": len(rows), "steps": steps, "seconds": seconds,
                                       "valid": valid}})
    log.info("head refitted on %d rows (%d steps, %.1fs); model saved to %s", len(rows), steps, seconds, out)
    return out
