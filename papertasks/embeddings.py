"""Frozen sentence embeddings of the base model, cached on disk per split, for the embeddings baseline
and the imbalance bench (a linear head over these is cheap where fine-tuning is not).

An embedding is the sentence-transformers recipe: the encoder's last hidden states mean-pooled over
the attention mask, then L2-normalized. Texts are fitted to the window exactly as the served model
fits them (`deployment/truncation.py`), so the baseline sees what the fine-tuned model sees.

The cache lives in `<data>/embeddings/<model>-<max_length>-<truncation>/<name>.npy` beside a JSON
file with the row count and a hash of the texts: if the split changes, it is recomputed, never
silently reused.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from deployment.truncation import STRATEGIES
from papertasks.errors import UserError
from papertasks.io import atomic_path, read_json, write_json
from papertasks.paths import OFFLINE_BASE_NAME, offline_base_model

log = logging.getLogger(__name__)


def cache_dir(data_dir, base_model: str, max_length: int, truncation: str) -> Path:
    """One folder per embedding setting; named after the model's last two path parts (the offline
    MiniLM by its hub name), its full name is checked against the cache's JSON anyway."""
    name = OFFLINE_BASE_NAME if base_model == offline_base_model() else base_model
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", "/".join(Path(name).parts[-2:])).strip("-")
    return Path(data_dir) / "embeddings" / f"{slug}-{max_length}-{truncation}"


def texts_hash(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def cached_embeddings(data_dir, name: str, texts: list[str], base_model: str | None = None, max_length: int = 128,
                      truncation: str = "head_tail", batch_size: int = 64) -> np.ndarray:
    """Embeddings of `texts` (the rows of split `name`), from the cache when it holds exactly these
    texts embedded with these settings, else computed and written."""
    base_model = base_model or offline_base_model()
    meta = {"rows": len(texts), "texts_sha256": texts_hash(texts), "base_model": base_model,
            "max_length": max_length, "truncation": truncation}
    return cached_array(cache_dir(data_dir, base_model, max_length, truncation), name, meta,
                        lambda: embed_texts(texts, base_model, max_length, truncation, batch_size), "embeddings")


def cached_array(folder: Path, name: str, meta: dict, compute, kind: str) -> np.ndarray:
    """`folder/name.npy` when its JSON twin equals `meta` (rows, texts hash, settings), else
    `compute()` written there (array first, then its JSON, so a half-written cache is never read).
    `kind` names the vectors in the log ("train embeddings: 100 rows from ...")."""
    array_path, meta_path = Path(folder) / f"{name}.npy", Path(folder) / f"{name}.json"
    if meta_path.is_file() and array_path.is_file() and read_json(meta_path) == meta:
        vectors = np.load(array_path)
        if vectors.shape[0] == meta["rows"]:
            log.info("%s %s: %d rows from %s", name, kind, meta["rows"], folder)
            return vectors
    log.info("%s %s: computing %d rows (cache %s)", name, kind, meta["rows"], folder)
    vectors = compute()
    with atomic_path(array_path) as tmp, open(tmp, "wb") as f:
        np.save(f, vectors)
    write_json(meta_path, meta)
    return vectors


def embed_texts(texts: list[str], base_model: str, max_length: int = 128, truncation: str = "head_tail",
                batch_size: int = 64) -> np.ndarray:
    """(len(texts), hidden size) float32, unit-length rows. Batches are sorted by length so each is
    padded only to its own longest window; rows come back in input order."""
    import torch
    from tqdm.auto import tqdm

    from papertasks.modeling import (length_sorted_batches, load_encoder, masked_mean, pad_id_of, pad_windows,
                                     text_windows)

    if truncation not in STRATEGIES:
        raise UserError(f"truncation must be one of {', '.join(STRATEGIES)}, not {truncation!r}")
    tokenizer, model = load_encoder(base_model)
    windows = text_windows(tokenizer, texts, max_length, truncation)
    vectors = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for rows in tqdm(length_sorted_batches([len(w) for w in windows], batch_size), desc="embedding",
                         unit="batch"):
            input_ids, mask = pad_windows([windows[i] for i in rows], pad_id_of(tokenizer))
            pooled = masked_mean(model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
            vectors[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return vectors
