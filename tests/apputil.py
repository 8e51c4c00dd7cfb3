"""Start the Gradio app as a real server process on a free loopback port, and lay out model
registries like deployment/models, for tests."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

SHIPPED_REGISTRY = Path(__file__).resolve().parents[1] / "deployment" / "models" / "models.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(command: list[str], port: int, timeout: float = 120):
    """Run `command` (which must serve on `port`), wait until it answers, yield its URL, stop it."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"app exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError(f"app did not answer on {url} within {timeout}s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def models_folder(folder: Path, **bundles: Path | None) -> Path:
    """A folder laid out like deployment/models: each bundle linked in under its name, and models.json
    listing them in the order given, titled as in the shipped one. A None bundle is listed but absent."""
    shipped = json.loads(SHIPPED_REGISTRY.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for name, bundle in bundles.items():
        if bundle is not None:
            (folder / name).symlink_to(bundle, target_is_directory=True)
    listing = {name: shipped.get(name, {"title": f"{name} model", "description": f"Tags papers with {name}."})
               for name in bundles}
    (folder / "models.json").write_text(json.dumps(listing, indent=2))
    return folder
