"""Batch prediction on a Dask cluster: the same predictor, one process per worker, many machines.

`papertasks predict` uses the cores of one machine (`--workers`). For more, point this at a Dask
scheduler: each JSONL input is split into byte blocks, every worker scores its blocks with its own
`Predictor` (loaded once per worker process), and each block becomes one output file
`part-NNNNN.jsonl` in order. Workers need the bundle at the same path (or a shared file system).

    dask scheduler                      # on one machine
    dask worker tcp://HOST:8786         # on each machine
    papertasks predict-dask 'papers/*.jsonl' -o predictions/ --scheduler tcp://HOST:8786

Without `--scheduler` it runs a local cluster (all cores of this machine), which is how it is tested.

Rows are read by deployment.inputs.read_row, as everywhere else: a row keeps its id, else gets its
position in the input (all files, in order, from 0), and a row without a usable text gets an `error`.
A malformed line stops the run with its file:line. The input is read twice: once to count each
block's lines, once to score it.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path

from papertasks.cli_support import check_count
from papertasks.errors import UserError

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _predictor(model_dir: str):
    from deployment.predictor import Predictor

    return Predictor(model_dir)


def partition_shape(lines: list[tuple[str, str]]) -> tuple[str | None, int, int]:
    """(file, lines, rows) of one partition of (line, file) pairs; a row is a non-blank line."""
    return (lines[0][1] if lines else None), len(lines), sum(1 for line, _ in lines if line.strip())


def partition_starts(shapes: list[tuple[str | None, int, int]]) -> list[tuple[int, int]]:
    """For each partition, in order: its first line's number in its file (from 1) and its first row's
    position in the whole input (from 0; the files in the order given), as `papertasks predict` counts."""
    starts, lines_before, rows_before = [], {}, 0
    for path, n_lines, n_rows in shapes:
        starts.append((lines_before.get(path, 0) + 1, rows_before))
        lines_before[path] = lines_before.get(path, 0) + n_lines
        rows_before += n_rows
    return starts


def score_lines(lines: list[tuple[str, str]], first_line: int, first_index: int, model_dir: str,
                top_k: int | None, batch_size: int, threshold: float | None = None, policy: str = "tuned") -> list[str]:
    """One partition of (JSONL line, file) pairs -> its output (lines as `papertasks predict` writes
    them), as one string, or nothing for a partition without rows (its part file stays empty); each
    row is read by deployment.inputs.read_row, its id defaulting to its position in the input."""
    from deployment.inputs import json_object_line, predict_rows, read_row

    rows = []
    for n, (line, path) in enumerate(lines):
        if line.strip():
            rows.append(read_row(json_object_line(line, f"{path}:{first_line + n}"), first_index + len(rows)))
    results = predict_rows(_predictor(model_dir), rows, threshold=threshold, top_k=top_k, chunk_rows=max(len(rows), 1),
                           batch_size=batch_size, warnings=False, policy=policy)
    return ["".join(json.dumps(record, ensure_ascii=False) + "\n" for record in results)] if results else []


def predict_with_dask(inputs: str, output_dir: str, model_dir: str, scheduler: str | None = None,
                      blocksize: str = "16MiB", top_k: int | None = None, batch_size: int = 32,
                      local_workers: int | None = None, threshold: float | None = None,
                      policy: str = "tuned") -> list[str]:
    import dask
    import dask.bag as db
    from dask.distributed import Client, LocalCluster

    from deployment.inputs import InputError
    from deployment.predictor import BundleError

    from serving.batch import check_threshold

    check_count("--batch-size", batch_size)
    if top_k is not None:
        check_count("--top-k", top_k)
    if local_workers is not None:  # a local cluster of 0 workers would wait for one forever
        check_count("--local-workers", local_workers, os.cpu_count() or 1)
    check_threshold(threshold, policy)
    try:
        dask.utils.parse_bytes(blocksize)
    except ValueError:
        raise UserError(f"--blocksize {blocksize}: give a size such as 16MiB or 64MB") from None
    model_dir = str(Path(model_dir).resolve())
    try:
        _predictor(model_dir)
    except BundleError as e:
        raise UserError(str(e)) from None
    files = sorted(path for path in glob.glob(inputs) if os.path.isfile(path))
    if not files:
        raise UserError(f"{inputs}: no input files match")
    for path in files:  # refused here, in one line, rather than by a failed task on a worker
        with open(path, "rb") as f:
            if b"\x00" in f.read(65536):
                raise UserError(f"{path}: a binary file, not JSON Lines text")
    out = Path(output_dir)
    if out.is_symlink() or out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder (or is a symbolic link); choose a new output folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new output folder")
    staging = out.with_name(f".{out.name}.partial")  # renamed to `out` only when every part is written
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror})") from None
    cluster = None if scheduler else LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                                   processes=True, dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            log.info("dask: %s", client)
            parts = db.read_text(files, blocksize=blocksize, include_path=True).to_delayed()
            # a first pass counts each partition's lines and rows, so every row knows its position in
            # the input (its id when it has none) and a malformed line its file:line
            starts = partition_starts(dask.compute(*[dask.delayed(partition_shape)(part) for part in parts]))
            scored = db.from_delayed([dask.delayed(score_lines)(part, first_line, first_index, model_dir, top_k,
                                                                batch_size, threshold, policy)
                                      for part, (first_line, first_index) in zip(parts, starts)])
            written = scored.to_textfiles(str(staging / "part-*.jsonl"), name_function=lambda i: f"{i:05d}")
    except (InputError, UnicodeDecodeError) as e:  # a malformed line or file: keep nothing
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(str(e) if isinstance(e, InputError) else f"{inputs}: not UTF-8 text") from None
    finally:
        if cluster is not None:
            cluster.close()
    if out.exists():
        out.rmdir()
    staging.rename(out)
    log.info("wrote %d part files to %s", len(written), out)
    return sorted(str(p) for p in out.glob("part-*.jsonl"))
