"""Peak memory of the Space as it runs: `python deployment/app.py` on the shipped models, both loaded.

Starts the app as the Space starts it, classifies an abstract with every model in models.json
through gradio_client (each model's Predictor is loaded on first use), explains one, then reads the
process's peak resident memory (VmHWM) from /proc: what a Space's memory limit meets.

    python bench/space_memory.py --out bench/results/space_memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load_api import free_port  # noqa: E402

MODELS = REPO / "deployment" / "models"


def memory_mb(pid: int) -> dict:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[field].split()[0]) / 1024 for key, field in (("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=str(MODELS), help="a models.json folder, as the Space serves")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "space_memory.json"))
    args = ap.parse_args()
    from gradio_client import Client

    names = list(json.loads((Path(args.models) / "models.json").read_text()))
    text = json.loads((REPO / "deployment" / "examples.json").read_text())[0]["text"]
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(REPO / "deployment" / "app.py"), "--model", args.models,
                             "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit("space_memory: the app did not start")
                time.sleep(0.5)
        stages = {"started": memory_mb(proc.pid)}
        client = Client(url, verbose=False)
        for name in names:
            client.predict(text, 0.5, True, name, 3, api_name="/classify")
            stages[f"after classifying with {name}"] = memory_mb(proc.pid)
        client.predict(text, 0.5, True, names[0], None, api_name="/explain")
        stages["after an explanation"] = memory_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {"models": names, "stages": stages, "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values())}
    for stage, mem in stages.items():
        print(f"{stage}: {mem['rss_mb']:.0f} MB resident, peak {mem['peak_rss_mb']:.0f} MB")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
