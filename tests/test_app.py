"""The Gradio app: answers over HTTP through gradio_client, refuses bad input, needs no torch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from apputil import free_port, running_app
from conftest import REPO


def test_app_answers_through_gradio_client(tiny_bundle):
    from gradio_client import Client

    port = free_port()
    command = [sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(tiny_bundle),
               "--host", "127.0.0.1", "--port", str(port)]
    example = json.loads((REPO / "deployment" / "examples.json").read_text())[0]["text"]
    labels = set(json.loads((tiny_bundle / "labels.json").read_text()))
    with running_app(command, port) as url:
        client = Client(url, verbose=False)
        top, chosen = client.predict(example, 0.5, True, api_name="/classify")
        assert top["confidences"] and {c["label"] for c in top["confidences"]} <= labels
        assert chosen.startswith("Predicted:")
        # a global threshold of 0.05 must select at least the best label
        top, chosen = client.predict(example, 0.05, False, api_name="/classify")
        assert f"**{top['label']}**" in chosen
        for bad, message in (("   ", "Paste a paper's title and abstract"), ("x" * 30_000, "characters")):
            with pytest.raises(Exception, match=message):
                client.predict(bad, 0.5, True, api_name="/classify")
        # the server keeps serving after bad input
        assert client.predict(example, 0.5, True, api_name="/classify")[0]["confidences"]


def test_app_and_predictor_run_without_torch(tiny_bundle):
    """The Space installs deployment/requirements.txt only: torch and transformers must not be needed."""
    code = f"""
import sys
sys.modules["torch"] = None; sys.modules["transformers"] = None
sys.path.insert(0, {str(REPO / 'deployment')!r})
import app
from predictor import Predictor
predictor = Predictor({str(tiny_bundle)!r})
assert predictor.predict(["Object detection with transformers."])[0]["scores"]
app.build_demo(predictor)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_space_folder_is_self_contained():
    readme = (REPO / "deployment" / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    lines = (REPO / "deployment" / "requirements.txt").read_text().splitlines()
    packages = {line.split("==")[0].strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {"gradio", "onnxruntime", "tokenizers", "numpy"} <= packages
    assert not packages & {"torch", "transformers", "fastai"}
    imports = [line for f in ("app.py", "predictor.py") for line in (REPO / "deployment" / f).read_text().splitlines()
               if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "papertasks" in line or "torch" in line]
