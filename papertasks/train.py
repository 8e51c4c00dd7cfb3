"""`papertasks train`: fine-tune a Hugging Face encoder for multi-label tagging with fastai.

Schedule (ULMFiT-style, as in the original notebooks): `--frozen-epochs` of one-cycle training with
only the head trainable at 10x `--lr`, then `--epochs` with everything unfrozen and discriminative
learning rates (embeddings lr/10 ... head lr). After every epoch the model and optimizer are saved
to `<out>/checkpoints/last.pth` with a small state file, so `--resume` continues from there; the
epoch with the lowest validation loss is kept and written in Hugging Face format. With `--folds K`
it trains K models instead, one per fold of train + valid, and reports their mean and spread.

The problem comes from the data (`prepare` records multi-label, multi-class or binary): sigmoids
and BCE for multi-label, a softmax and cross-entropy for single-label. Imbalance options, each
off by default and each measured in the README: `--pos-weight-clip` (positive-class weights,
negatives/positives clipped), `--loss focal`, and `--oversample-to` (repeat the rows of rare
labels up to that many examples per label).
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from papertasks.data import PROBLEMS, detect_problem, label_matrix, read_labels, read_problem, read_split, write_jsonl
from papertasks.errors import UserError
from papertasks.io import read_json, write_json
from papertasks.paths import OFFLINE_BASE_NAME, offline_base_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: str
    base_model: str | None = None
    max_length: int = 128
    truncation: str = "head_tail"
    problem: str | None = None  # None: what `prepare` recorded for the data
    loss: str = "bce"  # or "focal"
    focal_gamma: float = 2.0
    pos_weight_clip: float = 0.0  # 0: no positive-class weights
    oversample_to: int = 0  # 0: no oversampling
    batch_size: int = 32
    lr: float = 1e-4
    frozen_epochs: int = 1
    epochs: int = 2
    max_train: int | None = None
    max_valid: int | None = None
    weight_decay: float = 0.01
    resume: bool = False
    seed: int = 42


def oversample_rows(y: np.ndarray, target: int, seed: int) -> np.ndarray:
    """Row indices with the rows of rare labels repeated: a row is drawn ceil(target / n) times in
    all, n being the count of its rarest label (at most 10x), so labels under `target` examples get
    about `target`. Frequent labels keep their rows once; the order is shuffled by fastai anyway."""
    counts = np.maximum(y.sum(axis=0), 1)
    rarest = np.where(y > 0, counts, np.inf).min(axis=1)
    repeats = np.clip(np.ceil(target / rarest), 1, 10).astype(int)
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(y)), repeats))


def _checkpointer_class():
    from fastai.callback.core import Callback, CancelEpochException

    class Checkpointer(Callback):
        """Saves last (with optimizer) after each epoch and best (lowest valid loss) weights;
        on resume, skips the epochs already done."""
        order = 70

        def __init__(self, state_path: Path, phase: str, start_epoch: int, state: dict):
            self.state_path, self.phase, self.start_epoch, self.state = state_path, phase, start_epoch, state

        def before_epoch(self):  # fastai sets pct_train from the epoch, so the schedule resumes in place
            if self.epoch < self.start_epoch:
                raise CancelEpochException

        def after_epoch(self):
            if self.epoch < self.start_epoch:
                return
            # metric_names: epoch, train_loss, valid_loss, <metrics>, time; values: all but epoch and time
            metrics = dict(zip(self.recorder.metric_names[1:-1], map(float, self.recorder.values[-1])))
            valid_loss = metrics["valid_loss"]
            self.state["history"].append({"phase": self.phase, "epoch": self.epoch, **metrics})
            if valid_loss < self.state["best_valid_loss"]:
                self.state["best_valid_loss"] = valid_loss
                self.state["best"] = {"phase": self.phase, "epoch": self.epoch}
                self.learn.save("best", with_opt=False)
            self.learn.save("last", with_opt=True)
            self.state["done"][self.phase] = self.epoch + 1
            write_json(self.state_path, self.state)

    return Checkpointer


def train(cfg: TrainConfig) -> Path:
    import torch
    from fastai.torch_core import set_seed

    from papertasks.learner import classifier_learner, make_loss, positive_weights, tokenized_dataloaders
    from papertasks.modeling import load_base

    out = Path(cfg.out)
    labels = read_labels(cfg.data)
    train_df, valid_df = read_split(cfg.data, "train"), read_split(cfg.data, "valid")
    if cfg.problem and cfg.problem not in PROBLEMS:
        raise UserError(f"--problem must be one of {', '.join(PROBLEMS)}")
    problem = detect_problem(train_df["labels"], len(labels), cfg.problem) if cfg.problem else read_problem(cfg.data)
    single_label = problem != "multi-label"
    if cfg.max_train and len(train_df) > cfg.max_train:
        train_df = train_df.sample(cfg.max_train, random_state=cfg.seed)
    if cfg.max_valid and len(valid_df) > cfg.max_valid:
        valid_df = valid_df.sample(cfg.max_valid, random_state=cfg.seed)
    if len(train_df) < cfg.batch_size:
        raise UserError(f"only {len(train_df)} training rows: fewer than one batch of {cfg.batch_size}")

    base = cfg.base_model or offline_base_model()
    state_path = out / "checkpoints" / "state.json"
    if cfg.resume:
        if not state_path.is_file():
            raise UserError(f"--resume: no checkpoint in {out}/checkpoints; start without --resume")
        state = read_json(state_path)
        if state["labels"] != labels or state["base_model"] != base:
            raise UserError(f"--resume: {out} was trained on other labels or another base model")
    else:
        state = {"labels": labels, "base_model": base, "config": asdict(cfg), "done": {},
                 "best_valid_loss": float("inf"), "best": None, "history": []}

    from sklearn.exceptions import UndefinedMetricWarning

    warnings.filterwarnings("ignore", category=UndefinedMetricWarning)  # rare labels absent from a batch
    set_seed(cfg.seed, reproducible=True)
    tokenizer, hf_model = load_base(base, labels, problem)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.time()
    train_texts, y_train = train_df["text"].tolist(), label_matrix(train_df["labels"], labels)
    weights = positive_weights(y_train, cfg.pos_weight_clip) if cfg.pos_weight_clip else None
    if cfg.oversample_to:
        rows = oversample_rows(y_train, cfg.oversample_to, cfg.seed)
        train_texts, y_train = [train_texts[i] for i in rows], y_train[rows]
    dls = tokenized_dataloaders(
        tokenizer, (train_texts, y_train), (valid_df["text"].tolist(), label_matrix(valid_df["labels"], labels)),
        max_length=cfg.max_length, batch_size=cfg.batch_size, truncation=cfg.truncation,
        single_label=single_label, device=device)
    log.info("%s: tokenized %d train (%d distinct) / %d valid texts in %.1fs; %d labels; base %s; device %s",
             problem, len(train_texts), len(train_df), len(valid_df), time.time() - t0, len(labels), base, device)
    loss_func = make_loss(single_label, cfg.loss, cfg.focal_gamma, weights)
    learn = classifier_learner(hf_model, dls, path=out, loss_func=loss_func, single_label=single_label,
                               weight_decay=cfg.weight_decay)
    if cuda:
        learn.to_fp16()
    if cfg.resume:
        learn.load("last", with_opt=True, device=device)
        log.info("resuming after %s", state["done"])

    Checkpointer = _checkpointer_class()
    phases = [("frozen", cfg.frozen_epochs, cfg.lr * 10), ("unfrozen", cfg.epochs, slice(cfg.lr / 10, cfg.lr))]
    t0 = time.time()
    for phase, n_epochs, lr in phases:
        done = state["done"].get(phase, 0)
        if n_epochs == 0 or done >= n_epochs:
            continue
        learn.freeze() if phase == "frozen" else learn.unfreeze()
        learn.fit_one_cycle(n_epochs, lr, cbs=[Checkpointer(state_path, phase, done, state)])
    state["train_seconds"] = state.get("train_seconds", 0) + round(time.time() - t0, 1)

    learn.load("best", device=device, with_opt=False)
    save_trained(learn.model.hf_model, tokenizer, labels, cfg, state, out, problem)
    log.info("best epoch %s (valid loss %.4f); model saved to %s", state["best"], state["best_valid_loss"], out)
    return out


def cross_validate_training(cfg: TrainConfig, folds: int) -> dict:
    """`train --folds K`: K-fold cross-validation of the fine-tune over train + valid (papertasks.kfold).
    Each fold trains a fresh model on its fit rows, a tenth of them held back to pick the epoch (the
    held-out fold stays unseen), and scores the held-out rows with it in torch, on the windows the
    predictor builds. The fold models are thrown away; cv.json and cv.md go to --out."""
    import tempfile
    from dataclasses import replace

    from papertasks.kfold import cross_validate
    from papertasks.modeling import load_trained, torch_probs

    if cfg.resume:
        raise UserError("--resume continues one training run; it does not apply to --folds")
    labels = read_labels(cfg.data)
    problem = cfg.problem or read_problem(cfg.data)

    def fit_predict(fit_df, heldout_df) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="papertasks-fold-") as tmp:
            data = Path(tmp) / "data"
            fit = fit_df.sample(frac=1.0, random_state=cfg.seed)
            n_pick = max(1, len(fit) // 10)
            write_jsonl(data / "train.jsonl", fit.iloc[n_pick:])
            write_jsonl(data / "valid.jsonl", fit.iloc[:n_pick])
            write_json(data / "labels.json", {lab: i for i, lab in enumerate(labels)})
            write_json(data / "report.json", {"problem": problem})
            model_dir = train(replace(cfg, data=str(data), out=str(Path(tmp) / "model"), problem=problem,
                                      max_train=None, max_valid=None))
            model, tokenizer, _ = load_trained(model_dir)
            return torch_probs(model, tokenizer, heldout_df["text"].tolist(), cfg.max_length, cfg.truncation)

    name = f"fine-tuned {Path(cfg.base_model or OFFLINE_BASE_NAME).name}"
    return cross_validate(cfg.data, fit_predict, folds, name, max_train=cfg.max_train, seed=cfg.seed, out=cfg.out)


def save_trained(hf_model, tokenizer, labels, cfg: TrainConfig, state: dict, out: Path, problem: str) -> None:
    """Hugging Face layout (safetensors + tokenizer.json) plus labels.json and training_config.json."""
    hf_model.float().cpu().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json(out / "labels.json", {lab: i for i, lab in enumerate(labels)})
    write_json(out / "training_config.json", {
        **asdict(cfg), "problem": problem, "base_model": state["base_model"], "labels": len(labels),
        "best": state["best"], "best_valid_loss": state["best_valid_loss"], "history": state["history"],
        "train_seconds": state.get("train_seconds"), "data_report": _data_report(cfg.data),
        "torch_threads": os.cpu_count()})


def _data_report(data_dir) -> dict | None:
    path = Path(data_dir) / "report.json"
    if not path.is_file():
        return None
    report = read_json(path)
    return {k: report.get(k) for k in ("config", "labels_before", "labels_after", "rows")}
