"""`papertasks predict`: score a JSONL / CSV / Parquet file of papers with the served predictor.

Input is read in chunks, so memory stays bounded by the chunk size, and output goes to a temp file
renamed into place at the end: an interrupted or failed run leaves no half-written output.
Each output line keeps the input `id` (or the row number) and adds `labels` and `scores`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from deployment.predictor import BundleError, Predictor, compose_text, normalize_whitespace
from papertasks.data import ID_FIELDS
from papertasks.errors import UserError
from papertasks.io import atomic_path

log = logging.getLogger(__name__)

CHUNK_ROWS = 512


def _chunks(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_rows(path: Path) -> Iterator[dict]:
    """Rows as dicts, streamed; a malformed line stops the run with its line number."""
    import gzip

    name = path.name.lower().removesuffix(".gz")
    opener = (lambda: gzip.open(path, "rt", encoding="utf-8")) if path.suffix == ".gz" else \
        (lambda: open(path, encoding="utf-8"))
    try:
        if name.endswith((".jsonl", ".json", ".ndjson")):
            with opener() as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise UserError(f"{path}:{lineno}: expected a JSON object per line")
                    yield row
        elif name.endswith((".csv", ".tsv")):
            import pandas as pd

            for frame in pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS,
                                     sep="\t" if name.endswith(".tsv") else ","):
                yield from frame.to_dict("records")
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
                yield from batch.to_pylist()
        else:
            raise UserError(f"{path}: unknown format (use .jsonl, .csv, .tsv or .parquet)")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except (OSError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:120]})") from None


def row_text(row: dict, text_field: str | None, where: str) -> str:
    if text_field:
        if text_field not in row:
            raise UserError(f"{where}: no '{text_field}' field (fields: {', '.join(row)})")
        return normalize_whitespace(str(row[text_field] or ""))
    if "text" in row:
        return normalize_whitespace(str(row["text"] or ""))
    if "title" in row or "abstract" in row:
        return compose_text(row.get("title") or "", row.get("abstract") or "")
    raise UserError(f"{where}: needs a 'text' field or 'title' + 'abstract' (fields: {', '.join(row)})")


def row_id(row: dict, index: int):
    return next((row[k] for k in ID_FIELDS if k in row), index)


def predict_file(input: str, output: str, model_dir: str, batch_size: int = 32, text_field: str | None = None,
                 top_k: int | None = None) -> int:
    from tqdm.auto import tqdm

    src = Path(input)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    try:
        predictor = Predictor(model_dir)
    except BundleError as e:
        raise UserError(str(e)) from None
    written = empty = 0
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as out, \
            tqdm(desc="predict", unit=" papers", dynamic_ncols=True) as bar:
        for chunk in _chunks(iter_rows(src), CHUNK_ROWS):
            texts = [row_text(row, text_field, f"{src} row {written + i + 1}") for i, row in enumerate(chunk)]
            empty += sum(not t for t in texts)
            results = predictor.predict(texts, top_k=top_k, batch_size=batch_size)
            for i, (row, result) in enumerate(zip(chunk, results)):
                record = {"id": row_id(row, written + i), **result}
                if not texts[i]:
                    record = {"id": record["id"], "labels": [], "scores": {}, "error": "empty text"}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += len(chunk)
            bar.update(len(chunk))
    if empty:
        log.warning("%d rows had no text; they are in the output with an 'error' field", empty)
    log.info("wrote %d predictions to %s", written, output)
    return written
