"""`papertasks predict`: score a JSONL / CSV / Parquet file of papers with the served predictor.

Input is read in chunks, so memory stays bounded by the chunk size, and output goes to a temp file
renamed into place at the end: an interrupted or failed run leaves no half-written output.
Each output line keeps the input `id` (or the row's position, from 0) and adds `labels` and `scores`;
a row without a usable text gets `error` instead (deployment.inputs.read_row: the same rule and
messages as the app, the API and the jobs), and the other rows are still scored.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from deployment.explain import add_explanations
from deployment.inputs import InputError, check_text_columns, csv_records, json_object_line, predict_rows, read_row
from deployment.predictor import POLICIES, BundleError, Predictor
from papertasks.cli_support import check_count
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


def iter_rows(path: Path, text_field: str | None = None) -> Iterator[dict]:
    """Rows as dicts, streamed; a malformed line, or a CSV/Parquet without the text columns, stops the
    run with its line number or the columns it has."""
    import gzip

    name = path.name.lower().removesuffix(".gz")
    opener = (lambda: gzip.open(path, "rt", encoding="utf-8-sig", newline="")) if path.suffix == ".gz" else \
        (lambda: open(path, encoding="utf-8-sig", newline=""))
    try:
        if name.endswith((".jsonl", ".json", ".ndjson")):
            with opener() as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield json_object_line(line, f"{path}:{lineno}")
        elif name.endswith((".csv", ".tsv")):
            with opener() as f:  # the uploads' reader: a line with too many cells becomes an error row
                records = csv_records(f, str(path), "\t" if name.endswith(".tsv") else ",")
                check_text_columns(next(records)[1], text_field, str(path))
                for _, row in records:
                    yield row
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path)
            check_text_columns(table.schema_arrow.names, text_field, str(path))
            for batch in table.iter_batches(batch_size=CHUNK_ROWS):
                yield from batch.to_pylist()
        else:
            raise UserError(f"{path}: unknown format (use .jsonl, .csv, .tsv or .parquet)")
    except InputError as e:
        raise UserError(str(e)) from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:120]})") from None


_predictor: Predictor | None = None  # one per worker process


def _init_worker(model_dir: str, threads: int | None) -> None:
    global _predictor
    _predictor = Predictor(model_dir, threads=threads)


def _score_chunk(job: tuple) -> list[str]:
    """Output lines for one chunk of input rows, in input order."""
    first_index, rows, text_field, top_k, threshold, policy, batch_size, explain = job
    rows = [read_row(row, first_index + i, text_field) for i, row in enumerate(rows)]
    results = predict_rows(_predictor, rows, threshold=threshold, top_k=top_k, chunk_rows=max(len(rows), 1),
                           batch_size=batch_size, warnings=False, policy=policy)
    if explain:
        add_explanations(_predictor, rows, results, threshold, policy=policy)
    return [json.dumps(record, ensure_ascii=False) + "\n" for record in results]


def check_output(src: Path, out: Path) -> None:
    """Refuse an output that would destroy something: the input itself, a symbolic link (its target
    would be replaced), or anything but a regular file (a directory, a device, a pipe), also for the
    files written beside it (.partial, .partial.json, .lock)."""
    for path in (out, *_siblings(out)):
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link; write to a new path, not through a link")
        if path.exists() and not path.is_file():
            raise UserError(f"{path} exists and is not a regular file (a directory, device or pipe); "
                            "choose another -o")
        if path.exists() and path.samefile(src):
            raise UserError(f"{path} is the input itself; choose another -o")


def _siblings(out: Path) -> tuple[Path, Path, Path]:
    """The run's partial output, its resume state and its lock."""
    return tuple(out.with_name(out.name + suffix) for suffix in (".partial", ".partial.json", ".lock"))


def _lock(path: Path, out: Path) -> int:
    """An exclusive lock on `path` held for the run (as the scrapers lock their output): a second
    `predict` to the same output is refused instead of writing every row twice."""
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # the holder just finished and removed it
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        raise UserError(f"{out} is being written by another `papertasks predict`; wait for it or use "
                        "another -o") from None
    return fd


def check_threshold(threshold: float | None, policy: str = "tuned") -> None:
    if threshold is not None and not 0 <= threshold <= 1:  # the API's bounds
        raise UserError(f"--threshold {threshold}: give a probability between 0 and 1")
    if policy not in POLICIES:
        raise UserError(f"--policy {policy}: use one of {', '.join(POLICIES)}")


def _run_fingerprint(src: Path, model_dir: str, text_field, top_k, threshold, policy, explain) -> dict:
    stat = src.stat()
    return {"input": str(src.resolve()), "size": stat.st_size, "mtime": stat.st_mtime,
            "model": str(Path(model_dir).resolve()), "text_field": text_field, "top_k": top_k, "threshold": threshold,
            "policy": policy, "explain": explain}


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
                 top_k: int | None = None, workers: int = 1, threshold: float | None = None,
                 explain: bool = False, policy: str = "tuned") -> int:
    """Stream `input` through the predictor into `output` (JSONL); `threshold`: one for every label
    instead of the bundle's tuned ones (as the API's `threshold` and the app's slider); `policy`:
    the bundle's tuned thresholds or its global one (deployment.predictor.POLICIES); `explain`:
    each line gets the `explanation` the API's `explain: true` answers (deployment/explain.py).

    Lines go to `OUTPUT.partial` as each chunk is scored; the finished file is renamed to `output`,
    so `output` never holds a partial result. Run the same command again after an interruption and
    it continues after the last complete line. `workers` > 1 scores chunks in that many processes
    (order kept), each with its share of the cores."""
    import os

    src, out = Path(input), Path(output)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    check_count("--workers", workers, os.cpu_count() or 1)
    check_count("--batch-size", batch_size)
    if top_k is not None:  # 0 or less would cut the scores from the wrong end
        check_count("--top-k", top_k)
    check_threshold(threshold, policy)
    check_output(src, out)
    try:
        Predictor(model_dir)  # fail fast, in this process, on a bad bundle
    except BundleError as e:
        raise UserError(str(e)) from None
    partial, state, lock = _siblings(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(lock, out)
    except OSError as e:  # under a file, a read-only folder: before anything is scored
        raise UserError(f"{out}: cannot write there ({e.strerror})") from None
    try:
        return _predict_locked(src, out, partial, state, model_dir, batch_size, text_field, top_k, workers,
                               threshold, explain, policy)
    finally:
        lock.unlink(missing_ok=True)
        os.close(lock_fd)


def _predict_locked(src: Path, out: Path, partial: Path, state: Path, model_dir: str, batch_size: int,
                    text_field: str | None, top_k: int | None, workers: int, threshold: float | None, explain: bool,
                    policy: str) -> int:
    """predict_file's run, once its arguments are checked and its output locked."""
    import itertools
    import multiprocessing
    import os

    from tqdm.auto import tqdm

    fingerprint = _run_fingerprint(src, model_dir, text_field, top_k, threshold, policy, explain)
    try:
        done = _resume_point(partial, state, fingerprint)
        state.write_text(json.dumps(fingerprint))
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror})") from None
    if done:
        log.info("resuming after %d predictions already in %s", done, partial)

    rows = itertools.islice(iter_rows(src, text_field), done, None)
    jobs = ((done + n * CHUNK_ROWS, chunk, text_field, top_k, threshold, policy, batch_size, explain)
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
