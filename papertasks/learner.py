"""Hugging Face encoders inside a fastai Learner: what Blurr (ohmeow-blurr) did, in one small module.

Blurr's last release pins torch<2 and fails on current fastai/transformers, so this replaces the
four pieces of it the original project used:

1. `tokenized_dataloaders`: texts are tokenized once (with the bundle's tokenizer.json and the
   predictor's own window fitting, `papertasks/modeling.py`), and each batch is padded only to
   its own longest text (Blurr's batch tokenization), yielding (input_ids, attention_mask, targets).
2. `HFSequenceClassifier` (papertasks/modeling.py, also what export traces): wraps an
   `AutoModelForSequenceClassification` so fastai can call it with positional tensors and get plain
   logits back.
3. `hf_splitter`: three parameter groups (embeddings / encoder / head) for discriminative
   learning rates and fastai's freeze / unfreeze.
4. `classifier_learner`: a Learner with the loss and metrics of the problem: BCE-with-logits (or
   focal loss, optionally with clipped positive-class weights) and multi-label metrics, or
   cross-entropy with accuracy and macro-F1 for single-label (multi-class and binary) data.

It also adds fastai's mixed precision on the device the batches are on (`use_precision`).
"""
from __future__ import annotations

import logging

import fastai.callback.progress  # noqa: F401  (fastai's progress bar)
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat, FocalLossFlat
from fastai.metrics import F1Score, F1ScoreMulti, accuracy, accuracy_multi
from torch import nn

from papertasks.modeling import HFSequenceClassifier, pad_id_of, pad_windows, text_windows

log = logging.getLogger(__name__)


class TokenizedDataset(torch.utils.data.Dataset):
    """Token ids (fitted to the window, unpadded) and a target per text: the multi-hot row for
    multi-label data, the class index for single-label data."""

    def __init__(self, tokenizer, texts: list[str], targets: np.ndarray, max_length: int, truncation: str,
                 single_label: bool):
        self.input_ids = text_windows(tokenizer, texts, max_length, truncation)
        self.targets = (torch.as_tensor(targets.argmax(axis=1), dtype=torch.long) if single_label
                        else torch.as_tensor(targets, dtype=torch.float32))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, i):
        return self.input_ids[i], self.targets[i]


def pad_batch(items, pad_id: int):
    """Pad a list of (ids, target) to the batch's longest ids -> (input_ids, attention_mask, targets)."""
    return *pad_windows([ids for ids, _ in items], pad_id), torch.stack([t for _, t in items])


def tokenized_dataloaders(tokenizer, train: tuple[list[str], np.ndarray], valid: tuple[list[str], np.ndarray],
                          max_length: int, batch_size: int, truncation: str = "head_tail", single_label: bool = False,
                          device=None) -> DataLoaders:
    """fastai DataLoaders over pre-tokenized texts; batches padded per batch."""
    pad_id = pad_id_of(tokenizer)

    def make(texts_targets, shuffle):
        ds = TokenizedDataset(tokenizer, *texts_targets, max_length=max_length, truncation=truncation,
                              single_label=single_label)
        return DataLoader(ds, bs=batch_size, shuffle=shuffle, drop_last=shuffle, device=device,
                          create_batch=lambda items: pad_batch(items, pad_id))

    dls = DataLoaders(make(train, True), make(valid, False), device=device)
    dls.n_inp = 2
    return dls


def hf_splitter(model: HFSequenceClassifier) -> list[list[nn.Parameter]]:
    """Embeddings / encoder body / task head, for fastai's discriminative learning rates.

    Works for any AutoModelForSequenceClassification: the body is `base_model` less its pooler;
    the pooler (new for sentence-transformer checkpoints) and the classifier are the head."""
    hf = model.hf_model
    named_body = list(hf.base_model.named_parameters())
    embeddings = [p for n, p in named_body if "embeddings" in n]
    encoder = [p for n, p in named_body if "embeddings" not in n and "pooler" not in n]
    body_ids = {id(p) for p in embeddings + encoder}
    head = [p for p in hf.parameters() if id(p) not in body_ids]
    return [embeddings, encoder, head]


class SigmoidFocalLoss(nn.Module):
    """Multi-label focal loss (Lin et al., 2017): BCE scaled by (1 - p_t)^gamma, so the many easy
    negatives of a rare label stop dominating its gradient. `pos_weight` as in BCEWithLogitsLoss."""

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits, targets):
        targets = targets.float()
        bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight,
                                                             reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        return ((1 - p_t) ** self.gamma * bce).mean()

    def activation(self, x):  # fastai's get_preds applies the loss's activation
        return torch.sigmoid(x)

    def decodes(self, x):
        return x > 0


def positive_weights(targets: np.ndarray, clip: float) -> np.ndarray:
    """negatives / positives per label (per class, relative to the mean, for single-label), clipped
    to [1, clip] so a label with a handful of examples cannot swamp the loss."""
    positives = np.maximum(targets.sum(axis=0), 1)
    if targets.shape[1] and (targets.sum(axis=1) == 1).all():
        weights = positives.mean() / positives
    else:
        weights = (len(targets) - positives) / positives
    return np.clip(weights, 1.0, clip).astype(np.float32)


def make_loss(single_label: bool, loss: str = "bce", gamma: float = 2.0, weights: np.ndarray | None = None):
    """The training loss: BCE / focal over sigmoids (multi-label) or CE / focal over a softmax."""
    w = torch.as_tensor(weights) if weights is not None else None
    if single_label:
        return FocalLossFlat(gamma=gamma, weight=w) if loss == "focal" else CrossEntropyLossFlat(weight=w)
    if loss == "focal":
        return SigmoidFocalLoss(gamma=gamma, pos_weight=w)
    return BCEWithLogitsLossFlat(pos_weight=w)


def classifier_learner(hf_model, dls: DataLoaders, path, loss_func, single_label: bool = False,
                       weight_decay: float = 0.01) -> Learner:
    if single_label:
        metrics = [accuracy, F1Score(average="macro")]
        metrics[1].name = "f1_macro"
    else:
        metrics = [accuracy_multi, F1ScoreMulti(average="micro"), F1ScoreMulti(average="macro")]
        metrics[1].name, metrics[2].name = "f1_micro", "f1_macro"
    return Learner(dls, HFSequenceClassifier(hf_model), loss_func=loss_func,
                   metrics=metrics, splitter=hf_splitter, wd=weight_decay, path=path, model_dir="checkpoints")


class DeviceMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision, autocasting on the device the batches are on: fastai's own autocasts
    on CUDA only, which would leave a CPU bf16 run (and its test) in fp32 without a word."""

    def before_fit(self):
        device = (self.dls.device or torch.device("cpu")).type
        dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
        self.kwargs["enabled"] = dtype == torch.float16  # bf16 has fp32's range: no loss scaling
        self.autocast = torch.autocast(device, dtype=dtype)
        self.learn.scaler, self.scales = torch.amp.GradScaler(device, **self.kwargs), []


def use_precision(learn: Learner, precision: str) -> Learner:
    """Mixed precision (fp16 or bf16 autocast; the weights stay fp32, so checkpoints load anywhere)."""
    return learn if precision == "fp32" else learn.add_cb(DeviceMixedPrecision(amp_mode=precision))


def distributed_run() -> bool:
    """Launched as one of several processes (`accelerate launch` / torchrun set WORLD_SIZE)."""
    from fastai.torch_core import num_distrib

    return num_distrib() > 1


def distributed_learner(learn: Learner, cpu: bool) -> Learner:
    """fastai's distributed training (accelerate's DDP, each process a shard of every epoch) with one
    fix: fastai's DistributedDL broadcasts the shuffled order as a CUDA tensor, which the gloo
    process group of CPU processes cannot take, so the order travels on the model's own device."""
    from fastai.callback.progress import ProgressCallback
    from fastai.distributed import DistributedDL, DistributedTrainer
    from fastai.torch_core import num_distrib, rank_distrib

    class DeviceDistributedDL(DistributedDL):
        def _broadcast(self, t, rank):
            t = torch.LongTensor(t).to(self.device)
            torch.distributed.broadcast(t, rank)
            return t.cpu().tolist()

    class DeviceDistributedTrainer(DistributedTrainer):
        def _wrap_dl(self, dl):
            return dl if isinstance(dl, DistributedDL) else DeviceDistributedDL(dl, device=self.learn.model.device)

    learn.add_cb(DeviceDistributedTrainer(sync_bn=False, cpu=cpu))
    log.info("process %d of %d (%s): each trains on its share of every epoch", rank_distrib(), num_distrib(),
             torch.distributed.get_backend())
    if rank_distrib():
        learn.remove_cb(ProgressCallback)
    return learn


def mean_over_processes(value: float) -> float:
    """A number every process computed on its own shard (fastai's losses are per process), averaged:
    the shards are equal in size, so this is the loss over the whole set, the same in every process."""
    if not distributed_run():
        return value
    nccl = "nccl" in str(torch.distributed.get_backend())  # NCCL reduces CUDA tensors only
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if nccl else "cpu")
    torch.distributed.all_reduce(t)
    return float(t.item()) / torch.distributed.get_world_size()
