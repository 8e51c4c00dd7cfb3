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

from deployment.inputs import ID_FIELDS, InputError, json_object_line
from deployment.predictor import BundleError, Predictor, compose_text, normalize_whitespace
from papertasks.errors import UserError

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
                    if line.strip():
                        yield json_object_line(line, f"{path}:{lineno}")
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
    except InputError as e:
        raise UserError(str(e)) from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except (OSError, ValueError) as e:
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


_predictor: Predictor | None = None  # one per worker process


def _init_worker(model_dir: str, threads: int | None) -> None:
    global _predictor
    _predictor = Predictor(model_dir, threads=threads)


def _score_chunk(job: tuple) -> list[str]:
    """Output lines for one chunk of input rows, in input order."""
    first_index, rows, text_field, top_k, batch_size, where = job
    texts = [row_text(row, text_field, f"{where} row {first_index + i + 1}") for i, row in enumerate(rows)]
    results = _predictor.predict(texts, top_k=top_k, batch_size=batch_size)
    lines = []
    for i, (row, text, result) in enumerate(zip(rows, texts, results)):
        record = {"id": row_id(row, first_index + i), **result} if text else \
            {"id": row_id(row, first_index + i), "labels": [], "scores": {}, "error": "empty text"}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return lines


def _run_fingerprint(src: Path, model_dir: str, text_field, top_k) -> dict:
    stat = src.stat()
    return {"input": str(src.resolve()), "size": stat.st_size, "mtime": stat.st_mtime,
            "model": str(Path(model_dir).resolve()), "text_field": text_field, "top_k": top_k}


def _resume_point(partial: Path, state: Path, fingerprint: dict) -> int:
    """Complete lines already in `partial` from the same run (a torn last line is cut), else 0."""
    if not partial.exists() or not state.exists() or json.loads(state.read_text()) != fingerprint:
        partial.unlink(missing_ok=True)
        return 0
    data = partial.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(partial, "r+b") as f:
            f.truncate(keep)
    return data[:keep].count(b"\n")


def predict_file(input: str, output: str, model_dir: str, batch_size: int = 32, text_field: str | None = None,
                 top_k: int | None = None, workers: int = 1) -> int:
    """Stream `input` through the predictor into `output` (JSONL).

    Lines go to `OUTPUT.partial` as each chunk is scored; the finished file is renamed to `output`,
    so `output` never holds a partial result. Run the same command again after an interruption and
    it continues after the last complete line. `workers` > 1 scores chunks in that many processes
    (order kept), each with its share of the cores."""
    import itertools
    import multiprocessing
    import os

    from tqdm.auto import tqdm

    src, out = Path(input), Path(output)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    if workers < 1:
        raise UserError("--workers must be at least 1")
    try:
        Predictor(model_dir)  # fail fast, in this process, on a bad bundle
    except BundleError as e:
        raise UserError(str(e)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    partial, state = out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.json")
    fingerprint = _run_fingerprint(src, model_dir, text_field, top_k)
    done = _resume_point(partial, state, fingerprint)
    if done:
        log.info("resuming after %d predictions already in %s", done, partial)
    state.write_text(json.dumps(fingerprint))

    rows = itertools.islice(iter_rows(src), done, None)
    jobs = ((done + n * CHUNK_ROWS, chunk, text_field, top_k, batch_size, str(src))
            for n, chunk in enumerate(_chunks(rows, CHUNK_ROWS)))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (model_dir, threads)) if workers > 1 else None
    if pool is None:
        _init_worker(model_dir, threads)
    written = done
    try:
        with open(partial, "a", encoding="utf-8") as f, \
                tqdm(desc="predict", unit=" papers", initial=done, dynamic_ncols=True) as bar:
            for lines in (pool.imap(_score_chunk, jobs) if pool else map(_score_chunk, jobs)):
                f.write("".join(lines))
                f.flush()
                written += len(lines)
                bar.update(len(lines))
    except UserError:  # bad input fails the same way on every rerun: keep nothing
        partial.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
        raise
    finally:
        if pool:
            pool.terminate()
    os.replace(partial, out)
    state.unlink(missing_ok=True)
    log.info("wrote %d predictions to %s", written, out)
    return written
