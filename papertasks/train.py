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

It runs on CUDA when torch sees a GPU (else the CPU, or `--device`), in fp16 mixed precision there
and fp32 on a CPU (or `--precision`); `--patience N` ends a phase after N epochs without a lower
validation loss. `lr-find` (`find_lr`) runs fastai's learning-rate finder on the same learner.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from papertasks.data import PROBLEMS, detect_problem, label_matrix, read_labels, read_problem, read_split, write_jsonl
from papertasks.errors import UserError
from papertasks.io import read_json, write_json
from papertasks.paths import OFFLINE_BASE_NAME, resolve_base_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: str
    base_model: str | None = None
    max_length: int = 128
    truncation: str = "head_tail"
    pooling: str = "cls"  # or "mean" (papertasks.modeling.HFSequenceClassifier)
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
    device: str | None = None  # None: CUDA if torch sees a GPU, else the CPU
    precision: str | None = None  # fp16, bf16 or fp32; None: fp16 on CUDA, fp32 on a CPU
    patience: int = 0  # end a phase after this many epochs without a lower validation loss; 0: off


PRECISIONS = ("fp16", "bf16", "fp32")


def training_device(requested: str | None = None):
    """CUDA when torch sees a GPU, else the CPU; `requested` ("cpu", "cuda", "cuda:1") overrides."""
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: training runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: torch {torch.__version__} sees no CUDA GPU here; install the "
                        "CUDA build of torch (docs/training.md) or use --device cpu")
    return device


def training_precision(requested: str | None, device) -> str:
    """fp16 on a GPU, fp32 on a CPU, unless `requested`; refuses what the device cannot do."""
    import torch

    precision = requested or ("fp16" if device.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; on a CPU use --precision bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bfloat16; use --precision fp16")
    return precision


def oversample_rows(y: np.ndarray, target: int, seed: int) -> np.ndarray:
    """Row indices with the rows of rare labels repeated: a row is drawn ceil(target / n) times in
    all, n being the count of its rarest label (at most 10x), so labels under `target` examples get
    about `target`. Frequent labels keep their rows once; the order is shuffled by fastai anyway."""
    counts = np.maximum(y.sum(axis=0), 1)
    rarest = np.where(y > 0, counts, np.inf).min(axis=1)
    repeats = np.clip(np.ceil(target / rarest), 1, 10).astype(int)
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(y)), repeats))


def _checkpointer_class():
    from fastai.callback.core import Callback, CancelEpochException, CancelFitException
    from fastai.torch_core import rank_distrib

    from papertasks.learner import mean_over_processes

    class Checkpointer(Callback):
        """Saves last (with optimizer) after each epoch and best (lowest valid loss) weights;
        on resume, skips the epochs already done. With `patience`, ends the phase after that many
        epochs without a new best. It keeps that count in the state file, so early stopping
        survives --resume, which fastai's EarlyStoppingCallback (its count in memory) would not."""
        order = 70

        def __init__(self, state_path: Path, phase: str, start_epoch: int, state: dict, patience: int = 0):
            self.state_path, self.phase, self.start_epoch, self.state = state_path, phase, start_epoch, state
            self.patience = patience

        def before_epoch(self):  # fastai sets pct_train from the epoch, so the schedule resumes in place
            if self.epoch < self.start_epoch:
                raise CancelEpochException

        def after_epoch(self):
            if self.epoch < self.start_epoch:
                return
            # metric_names: epoch, train_loss, valid_loss, <metrics>, time; values: all but epoch and time
            metrics = dict(zip(self.recorder.metric_names[1:-1], map(float, self.recorder.values[-1])))
            for loss in ("train_loss", "valid_loss"):  # the metrics are gathered from every process already
                metrics[loss] = mean_over_processes(metrics[loss])
            valid_loss = metrics["valid_loss"]
            self.state["history"].append({"phase": self.phase, "epoch": self.epoch, **metrics})
            stale = self.state.setdefault("epochs_without_best", {})
            if valid_loss < self.state["best_valid_loss"]:
                self.state["best_valid_loss"] = valid_loss
                self.state["best"] = {"phase": self.phase, "epoch": self.epoch}
                self.learn.save("best", with_opt=False)
                stale[self.phase] = 0
            else:
                stale[self.phase] = stale.get(self.phase, 0) + 1
            self.learn.save("last", with_opt=True)
            self.state["done"][self.phase] = self.epoch + 1
            stop = self.patience and stale[self.phase] >= self.patience and self.epoch + 1 < self.n_epoch
            if stop:  # nothing of this phase is left for --resume either
                self.state["done"][self.phase] = self.n_epoch
                self.state.setdefault("stopped_early", {})[self.phase] = self.epoch
            if not rank_distrib():
                write_json(self.state_path, self.state)
            if stop:
                log.info("%s phase stopped after epoch %d: no lower validation loss for %d epoch(s)",
                         self.phase, self.epoch, self.patience)
                raise CancelFitException

    return Checkpointer


def run_config(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the device and precision it runs on, checked before anything is loaded or written."""
    device = training_device(cfg.device)
    return replace(cfg, device=str(device), precision=training_precision(cfg.precision, device),
                   base_model=resolve_base_model(cfg.base_model))


def build_learner(cfg: TrainConfig, path: Path):
    """What `train` and `lr-find` share: the split (sampled, oversampled), the base model checked, the
    texts tokenized into the predictor's windows, and a Learner on cfg's device and precision whose
    checkpoints go to `path`/checkpoints. Returns (learner, tokenizer, labels, problem); writes nothing."""
    import torch
    from fastai.torch_core import set_seed

    from papertasks.learner import (classifier_learner, make_loss, positive_weights, tokenized_dataloaders,
                                    use_precision)
    from papertasks.modeling import load_base, longest_window

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

    from sklearn.exceptions import UndefinedMetricWarning

    warnings.filterwarnings("ignore", category=UndefinedMetricWarning)  # rare labels absent from a batch
    set_seed(cfg.seed, reproducible=True)
    base = cfg.base_model
    tokenizer, hf_model = load_base(base, labels, problem, cfg.pooling)
    if cfg.max_length > longest_window(tokenizer, hf_model):
        raise UserError(f"--max-length {cfg.max_length}: '{base}' takes at most "
                        f"{longest_window(tokenizer, hf_model)} tokens")
    device = torch.device(cfg.device)
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
    log.info("%s: tokenized %d train (%d distinct) / %d valid texts in %.1fs; %d labels; base %s; %s, %s",
             problem, len(train_texts), len(train_df), len(valid_df), time.time() - t0, len(labels), base, device,
             cfg.precision)
    loss_func = make_loss(single_label, cfg.loss, cfg.focal_gamma, weights)
    learn = classifier_learner(hf_model, dls, path=path, loss_func=loss_func, single_label=single_label,
                               weight_decay=cfg.weight_decay)
    return use_precision(learn, cfg.precision), tokenizer, labels, problem


def train(cfg: TrainConfig) -> Path:
    """Fine-tune and write the model folder. A fresh run that fails before its first epoch is saved
    leaves no folder behind; a later failure keeps the checkpoints for --resume."""
    cfg = run_config(cfg)
    out = Path(cfg.out)
    base = cfg.base_model
    state_path = out / "checkpoints" / "state.json"
    if cfg.resume:
        if not state_path.is_file():
            raise UserError(f"--resume: no checkpoint in {out}/checkpoints; start without --resume")
        state = read_json(state_path)
        if state["labels"] != read_labels(cfg.data) or state["base_model"] != base:
            raise UserError(f"--resume: {out} was trained on other labels or another base model")
    fresh = not out.exists()
    try:
        return _fit(cfg, out, state_path, state if cfg.resume else None)
    except BaseException:
        if fresh and not state_path.is_file():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _fit(cfg: TrainConfig, out: Path, state_path: Path, state: dict | None) -> Path:
    import torch

    from fastai.torch_core import distrib_barrier, rank_distrib

    from papertasks.learner import distributed_learner, distributed_run
    from papertasks.modeling import warm_start_record

    learn, tokenizer, labels, problem = build_learner(cfg, out)
    device = torch.device(cfg.device)
    if distributed_run():
        distributed_learner(learn, cpu=device.type == "cpu")
    if state is None:
        state = {"labels": labels, "base_model": cfg.base_model, "config": asdict(cfg),
                 "done": {}, "best_valid_loss": float("inf"), "best": None, "history": []}
    else:
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
        try:
            learn.fit_one_cycle(n_epochs, lr, cbs=[Checkpointer(state_path, phase, done, state, cfg.patience)])
        except torch.cuda.OutOfMemoryError:
            raise _out_of_memory(cfg) from None
    state["train_seconds"] = state.get("train_seconds", 0) + round(time.time() - t0, 1)

    frozen = cfg.frozen_epochs + cfg.epochs == 0  # a frozen encoder: `refit-head` fits its head next
    if frozen:
        state["best_valid_loss"] = None
    else:
        learn.load("best", device=device, with_opt=False)
    if not rank_distrib():  # the other processes hold the same weights
        save_trained(learn.model.hf_model, tokenizer, labels, cfg, state, out, problem)
    if distributed_run():
        distrib_barrier()
        torch.distributed.destroy_process_group()
    if frozen and warm_start_record(cfg.base_model):
        log.info("no epochs: %s saved unchanged to %s", cfg.base_model, out)
    elif frozen:
        log.info("no epochs: the base encoder saved with a fresh head to %s; fit the head with `papertasks "
                 "refit-head`", out)
    else:
        log.info("best epoch %s (valid loss %.4f); model saved to %s", state["best"], state["best_valid_loss"], out)
    return out


def _out_of_memory(cfg: TrainConfig) -> UserError:
    return UserError(f"the GPU ran out of memory at --batch-size {cfg.batch_size} --max-length {cfg.max_length}: "
                     "lower one of them")


LR_SUGGESTIONS = ("valley", "slide", "minimum", "steep")  # fastai's; valley is its default


def find_lr(cfg: TrainConfig, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100) -> dict:
    """fastai's learning-rate finder (a mock run raising the rate every batch) on the learner `train`
    builds, unfrozen as in train's second phase, whose head rate is --lr. Returns {method: lr} for
    fastai's suggestions and saves the loss curve as <out>/lr_find.png; nothing else is written."""
    import tempfile

    import matplotlib.pyplot as plt
    import torch
    from fastai.callback.schedule import SuggestionMethod

    cfg = run_config(cfg)
    with tempfile.TemporaryDirectory(prefix="papertasks-lr-find-") as tmp:  # fastai's own snapshot goes here
        learn, *_ = build_learner(cfg, Path(tmp))
        learn.unfreeze()
        methods = [getattr(SuggestionMethod, name.capitalize()) for name in LR_SUGGESTIONS]
        try:
            found = learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it, suggest_funcs=methods)
        except torch.cuda.OutOfMemoryError:
            raise _out_of_memory(cfg) from None
        except (IndexError, ValueError):  # fastai's suggestions need 16 batches past the first tenth and last 5
            raise UserError(f"lr-find stopped after {len(learn.recorder.losses)} batches, too few to suggest a "
                            "rate; raise --num-it or lower --end-lr") from None
    suggestions = {name: float(lr) for name, lr in zip(LR_SUGGESTIONS, found)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    plt.gcf().savefig(out / "lr_find.png", dpi=100, bbox_inches="tight")
    log.info("lr-find over %d batches: %s; loss curve in %s", len(learn.recorder.losses),
             ", ".join(f"{name} {lr:.1e}" for name, lr in suggestions.items()), out / "lr_find.png")
    return suggestions


def cross_validate_training(cfg: TrainConfig, folds: int) -> dict:
    """`train --folds K`: K-fold cross-validation of the fine-tune over train + valid (papertasks.kfold).
    Each fold trains a fresh model on its fit rows, a tenth of them held back to pick the epoch (the
    held-out fold stays unseen), and scores the held-out rows with it in torch, on the windows the
    predictor builds. The fold models are thrown away; cv.json and cv.md go to --out."""
    import tempfile

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
    from papertasks.modeling import warm_start_record

    hf_model.float().cpu().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json(out / "labels.json", {lab: i for i, lab in enumerate(labels)})
    write_json(out / "training_config.json", {
        **asdict(cfg), "problem": problem, "base_model": state["base_model"], "labels": len(labels),
        "best": state["best"], "best_valid_loss": state["best_valid_loss"], "history": state["history"],
        "stopped_early": state.get("stopped_early"),
        "train_seconds": state.get("train_seconds"), "data_report": _data_report(cfg.data),
        "warm_start": warm_start_record(state["base_model"]), "torch_threads": os.cpu_count()})


def _data_report(data_dir) -> dict | None:
    """What `prepare` recorded about the data (for the model card); None for data split elsewhere."""
    path = Path(data_dir) / "report.json"
    report = read_json(path) if path.is_file() else {}
    if "config" not in report:
        return None
    return {k: report.get(k) for k in ("config", "labels_before", "labels_after", "rows")}
