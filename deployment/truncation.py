"""Fit a long abstract into the model's window: the same code in training, evaluation and serving.

An arXiv title + abstract is ~250 word pieces; a 128-token window keeps only its first half, losing
the sentences that say what was done and on what. `head_tail` keeps the first and the last half of
the window instead (Sun et al., 2019, "How to Fine-Tune BERT for Text Classification"); `head` is
plain truncation. `bench/truncation.py` measures the two on a trained bundle.
"""
from __future__ import annotations

import numpy as np

STRATEGIES = ("head", "head_tail")


def padded_windows(windows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token-id windows -> (input_ids, attention_mask), int64, padded on the right to `width` (default:
    the longest window): the one padding rule of torch batches, benches and static int8 calibration."""
    input_ids = np.full((len(windows), width or max(map(len, windows))), pad_id, dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, ids in enumerate(windows):
        input_ids[row, :len(ids)], attention_mask[row, :len(ids)] = ids, 1
    return input_ids, attention_mask


def fit_window(ids: list[int], special_mask: list[int], max_length: int, strategy: str) -> list[int]:
    """Cut `ids` (with the tokenizer's special tokens around them) to `max_length`, keeping the
    leading and trailing special tokens ([CLS] ... [SEP], <s> ... </s>) in place."""
    if len(ids) <= max_length:
        return list(ids)
    if strategy not in STRATEGIES:
        raise ValueError(f"truncation must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    lead = 0
    while lead < len(ids) and special_mask[lead]:
        lead += 1
    trail = 0
    while trail < len(ids) - lead and special_mask[len(ids) - 1 - trail]:
        trail += 1
    body = ids[lead:len(ids) - trail]
    room = max(max_length - lead - trail, 0)
    if strategy == "head":
        kept = body[:room]
    else:
        head = (room + 1) // 2
        kept = body[:head] + (body[len(body) - (room - head):] if room - head else [])
    return list(ids[:lead]) + kept + list(ids[len(ids) - trail:])


def encode_windows(tokenizer, texts: list[str], max_length: int, strategy: str) -> list[list[int]]:
    """Token ids for each text, fitted to the window. `tokenizer` is a `tokenizers.Tokenizer`
    (the bundle's tokenizer.json); its own truncation and padding are switched off here."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [fit_window(e.ids, e.special_tokens_mask, max_length, strategy)
            for e in tokenizer.encode_batch(list(texts))]
