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

import functools
import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from deployment.predictor import normalize_whitespace
from deployment.truncation import STRATEGIES, encode_windows
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

    if truncation not in STRATEGIES:
        raise UserError(f"truncation must be one of {', '.join(STRATEGIES)}, not {truncation!r}")
    tokenizer, backend, model = load_encoder(base_model)
    windows = encode_windows(backend, [normalize_whitespace(t) for t in texts], max_length, truncation)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vectors = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(w) for w in windows], kind="stable")
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="embedding", unit="batch"):
            rows = order[start:start + batch_size]
            longest = max(len(windows[i]) for i in rows)
            input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for k, i in enumerate(rows):
                input_ids[k, :len(windows[i])] = torch.as_tensor(windows[i])
                mask[k, :len(windows[i])] = 1
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            vectors[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return vectors


@functools.lru_cache(maxsize=1)
def load_encoder(base_model: str):
    """Tokenizer, its `tokenizers` backend (the object saved as tokenizer.json and served) and the
    encoder in eval mode; loaded once for all the splits of a run."""
    from tokenizers import Tokenizer
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModel.from_pretrained(base_model).eval()
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load base model '{base_model}': {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"'{base_model}' has no fast tokenizer (tokenizer.json), so its windows cannot be fitted "
                        "as the served model fits them")
    return tokenizer, Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), model
