"""Batch prediction on a Dask cluster: the same predictor, one process per worker, many machines.

`papertasks predict` uses the cores of one machine (`--workers`). For more, point this at a Dask
scheduler: each JSONL input is split into byte blocks, every worker scores its blocks with its own
`Predictor` (loaded once per worker process), and each block becomes one output file
`part-NNNNN.jsonl` in order. Workers need the bundle at the same path (or a shared file system).

    dask scheduler                      # on one machine
    dask worker tcp://HOST:8786         # on each machine
    papertasks predict-dask 'papers/*.jsonl' -o predictions/ --scheduler tcp://HOST:8786

Without `--scheduler` it runs a local cluster (all cores of this machine), which is how it is tested.
"""
from __future__ import annotations

import glob
import json
import logging
import shutil
from functools import lru_cache
from pathlib import Path

from papertasks.errors import UserError

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _predictor(model_dir: str):
    from deployment.predictor import Predictor

    return Predictor(model_dir)


def score_lines(lines: list[str], model_dir: str, top_k: int | None, batch_size: int) -> list[str]:
    """One partition of JSONL lines -> output lines (same format as `papertasks predict`)."""
    from serving.batch import row_id, row_text

    rows = [json.loads(line) for line in lines if line.strip()]
    texts = [row_text(row, None, "dask partition") for row in rows]
    results = _predictor(model_dir).predict(texts, top_k=top_k, batch_size=batch_size)
    return [json.dumps({"id": row_id(row, None), **result}, ensure_ascii=False)
            for row, result in zip(rows, results)]


def predict_with_dask(inputs: str, output_dir: str, model_dir: str, scheduler: str | None = None,
                      blocksize: str = "16MiB", top_k: int | None = None, batch_size: int = 32,
                      local_workers: int | None = None) -> list[str]:
    import dask.bag as db
    from dask.distributed import Client, LocalCluster

    from deployment.predictor import BundleError

    model_dir = str(Path(model_dir).resolve())
    try:
        _predictor(model_dir)
    except BundleError as e:
        raise UserError(str(e)) from None
    files = sorted(glob.glob(inputs))
    if not files:
        raise UserError(f"{inputs}: no input files match")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new output folder")
    staging = out.with_name(f".{out.name}.partial")  # renamed to `out` only when every part is written
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cluster = None if scheduler else LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                                   processes=True, dashboard_address=None)
    with Client(scheduler or cluster) as client:
        log.info("dask: %s", client)
        bag = db.read_text(files, blocksize=blocksize)
        scored = bag.map_partitions(score_lines, model_dir, top_k, batch_size)
        written = scored.to_textfiles(str(staging / "part-*.jsonl"), name_function=lambda i: f"{i:05d}",
                                      last_endline=True)
    if cluster is not None:
        cluster.close()
    if out.exists():
        out.rmdir()
    staging.rename(out)
    log.info("wrote %d part files to %s", len(written), out)
    return sorted(str(p) for p in out.glob("part-*.jsonl"))
