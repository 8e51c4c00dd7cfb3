"""Hugging Face encoders inside a fastai Learner: what Blurr (ohmeow-blurr) did, in one small module.

Blurr's last release pins torch<2 and fails on current fastai/transformers, so this replaces the
four pieces of it the original project used:

1. `TokenizedDataLoaders`: texts are tokenized once, and each batch is padded only to its own
   longest text (Blurr's batch tokenization), yielding (input_ids, attention_mask, targets).
2. `HFSequenceClassifier`: wraps an `AutoModelForSequenceClassification` so fastai can call it
   with positional tensors and get plain logits back.
3. `hf_splitter`: three parameter groups (embeddings / encoder / head) for discriminative
   learning rates and fastai's freeze / unfreeze.
4. `multilabel_learner`: a Learner with BCE-with-logits and multi-label metrics.
"""
from __future__ import annotations

import fastai.callback.fp16  # noqa: F401  (adds Learner.to_fp16)
import fastai.callback.progress  # noqa: F401  (fastai's progress bar)
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import BCEWithLogitsLossFlat
from fastai.metrics import F1ScoreMulti, accuracy_multi
from torch import nn


class TokenizedDataset(torch.utils.data.Dataset):
    """Token ids (truncated, unpadded) and a multi-hot target per text."""

    def __init__(self, tokenizer, texts: list[str], targets: np.ndarray, max_length: int):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
        self.input_ids = enc["input_ids"]
        self.targets = torch.as_tensor(targets, dtype=torch.float32)

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, i):
        return self.input_ids[i], self.targets[i]


def pad_batch(items, pad_id: int):
    """Pad a list of (ids, target) to the batch's longest ids -> (input_ids, attention_mask, targets)."""
    longest = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), longest), dtype=torch.long)
    for row, (ids, _) in enumerate(items):
        input_ids[row, :len(ids)] = torch.as_tensor(ids)
        attention[row, :len(ids)] = 1
    return input_ids, attention, torch.stack([t for _, t in items])


def tokenized_dataloaders(tokenizer, train: tuple[list[str], np.ndarray], valid: tuple[list[str], np.ndarray],
                          max_length: int, batch_size: int, device=None) -> DataLoaders:
    """fastai DataLoaders over pre-tokenized texts; batches padded per batch."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def make(texts_targets, shuffle):
        ds = TokenizedDataset(tokenizer, *texts_targets, max_length=max_length)
        return DataLoader(ds, bs=batch_size, shuffle=shuffle, drop_last=shuffle, device=device,
                          create_batch=lambda items: pad_batch(items, pad_id))

    dls = DataLoaders(make(train, True), make(valid, False), device=device)
    dls.n_inp = 2
    return dls


class HFSequenceClassifier(nn.Module):
    """fastai calls model(*xb); Hugging Face models want keywords and return an output object."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, input_ids, attention_mask):
        return self.hf_model(input_ids=input_ids, attention_mask=attention_mask).logits


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


def multilabel_learner(hf_model, dls: DataLoaders, path, weight_decay: float = 0.01) -> Learner:
    metrics = [accuracy_multi, F1ScoreMulti(average="micro"), F1ScoreMulti(average="macro")]
    metrics[1].name, metrics[2].name = "f1_micro", "f1_macro"
    return Learner(dls, HFSequenceClassifier(hf_model), loss_func=BCEWithLogitsLossFlat(),
                   metrics=metrics, splitter=hf_splitter, wd=weight_decay, path=path, model_dir="checkpoints")
