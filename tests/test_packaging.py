"""A plain (not editable) `pip install .` ships the bundled models: `papertasks predict` answers
from another folder with the model inside the installed package, not the checkout's."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from conftest import REPO


def test_a_non_editable_install_predicts_from_any_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("papertasks-*.whl"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies come from the test environment (a path line: its editable-install hooks do not run)
    (site / "test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "papers.jsonl").write_text(json.dumps({"id": "p1", "title": "Attention is all you need",
                                                        "abstract": "We propose the Transformer, a network "
                                                        "architecture based solely on attention mechanisms, for "
                                                        "machine translation."}) + "\n")
    where = subprocess.run([str(python), "-c", "import deployment, papertasks; print(deployment.__file__)"],
                           check=True, capture_output=True, text=True, cwd=elsewhere).stdout
    assert where.startswith(str(site)), where
    run = subprocess.run([str(env_dir / "bin" / "papertasks"), "predict", "papers.jsonl", "-o", "out.jsonl"],
                         capture_output=True, text=True, cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    result = json.loads((elsewhere / "out.jsonl").read_text())
    assert result["id"] == "p1" and "cs.CL" in result["scores"] and result["labels"]
    assert (site / "deployment" / "models" / "arxiv" / "model.onnx").is_file()
