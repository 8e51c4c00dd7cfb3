"""The three notebooks run end to end in tiny mode (PAPERTASKS_NB_TINY=1) and write only under their WORK folder.

Tiny mode samples 600 arXiv abstracts, trains on 64 of them for one epoch, exports, evaluates and runs the
TF-IDF baseline: it checks the notebooks' plumbing against the real library, not model quality.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = ["01_explore_and_prune.ipynb", "02_fine_tune.ipynb", "03_export_and_try.ipynb"]
RAW = REPO.parent / "shared" / "data" / "arxiv_cs.jsonl.gz"
PROTECTED = [REPO / "json_files", REPO / "deployment" / "models"]  # what only full mode may write
CELL_TIMEOUT_S = 300


def snapshot(folders: list[Path]) -> dict[str, tuple[int, str]]:
    """(mtime, sha256) of every file under the folders, and the folders' own listing times."""
    state = {}
    for folder in folders:
        if not folder.exists():
            state[str(folder)] = (0, "absent")
            continue
        state[str(folder)] = (folder.stat().st_mtime_ns, "dir")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                state[str(path)] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and 'os.environ.get("PAPERTASKS_NB_TINY") == "1"' in code[0].source
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{name}: code cells {dirty} have outputs; clear them before committing"


@pytest.mark.skipif(not RAW.is_file(), reason=f"{RAW} (the real arXiv abstracts) is absent")
def test_notebooks_run_in_tiny_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERTASKS_NB_TINY", "1")  # the kernel inherits this environment
    monkeypatch.setenv("PAPERTASKS_NB_WORK", str(tmp_path))
    monkeypatch.delenv("PAPERTASKS_NB_RAW", raising=False)
    before = snapshot(PROTECTED)

    timings = {}
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / name, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(NB_DIR)}})
        t0 = time.time()
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as e:
            pytest.fail(f"{name} failed in tiny mode:\n{str(e)[-4000:]}")
        timings[name] = round(time.time() - t0, 1)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    print("notebook timings (s):", timings)

    data = tmp_path / "data" / "arxiv_tiny"
    model = tmp_path / "models" / "arxiv_tiny"
    refit = tmp_path / "models" / "arxiv_refit_tiny"  # 02's refitted head, what 03 exports
    bundle = tmp_path / "models" / "arxiv_tiny_bundle"
    expected = [
        *(data / f for f in ("train.jsonl", "valid.jsonl", "test.jsonl", "labels.json", "report.md",
                             "label_frequency.png")),
        model / "model.safetensors", model / "training_config.json", model / "labels.json",
        refit / "model.safetensors", refit / "training_config.json",
        *(bundle / f for f in ("model.onnx", "tokenizer.json", "labels.json", "thresholds.json", "metrics.json",
                               "MODEL_CARD.md")),
        tmp_path / "reports" / "arxiv_tiny" / "metrics.json",
        *(tmp_path / "reports" / f"{name}_arxiv_tiny" / "metrics.json" for name in ("tfidf", "embeddings")),
        tmp_path / "reports" / "compare_arxiv_tiny" / "compare.md",
    ]
    missing = [str(p.relative_to(tmp_path)) for p in expected if not p.is_file()]
    assert not missing, f"not written: {missing}"
    assert "refit-head" in (bundle / "MODEL_CARD.md").read_text()

    after = snapshot(PROTECTED)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tiny mode touched the repository: {changed}"
