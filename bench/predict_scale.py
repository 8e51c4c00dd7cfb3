"""Batch prediction at scale: `papertasks predict` on N abstracts, memory sampled as it runs.

Builds an input of N rows by cycling the real test abstracts (each row a unique id), runs the CLI as
a user would, samples the process's resident memory every second, and reports throughput and memory
at each tenth of the run: flat memory means the input is streamed, not loaded.

    python bench/predict_scale.py --rows 100000 --data data/arxiv --bundle deployment/models/arxiv
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children (the --workers processes), from /proc."""
    total = 0
    for proc in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    return kids + [g for k in kids for g in children(k)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data", default="data/arxiv")
    parser.add_argument("--bundle", default="deployment/models/arxiv")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="bench/results/predict_scale.json")
    args = parser.parse_args()

    source = [json.loads(line)["text"] for line in open(Path(args.data) / "test.jsonl")]
    work = Path(tempfile.mkdtemp(prefix="predict-scale-"))
    src = work / "papers.jsonl"
    with open(src, "w") as f:
        for i, text in zip(range(args.rows), itertools.cycle(source)):
            f.write(json.dumps({"id": f"row-{i}", "text": text}) + "\n")
    cmd = [sys.executable, "-m", "papertasks.cli", "predict", str(src), "-o", str(work / "out.jsonl"),
           "--model", args.bundle, "--workers", str(args.workers)]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
    samples = []  # (seconds, rows written so far, rss MB)
    partial, offset, done = work / "out.jsonl.partial", 0, 0
    while proc.poll() is None:
        time.sleep(1)
        if partial.exists():  # count only the newly written bytes' lines
            with open(partial, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            done += chunk.count(b"\n")
        memory = rss_mb(proc.pid)
        if memory:  # 0 once the process has exited
            samples.append((time.time() - start, done, memory))
    seconds = time.time() - start
    if proc.returncode:
        sys.exit(f"predict failed with {proc.returncode}")
    written = sum(1 for _ in open(work / "out.jsonl"))
    shutil.rmtree(work)
    assert written == args.rows, (written, args.rows)
    scoring = [s for s in samples if s[1] > 0]
    steady = (scoring[-1][1] - scoring[0][1]) / (scoring[-1][0] - scoring[0][0]) if len(scoring) > 1 else float("nan")
    marks = []
    for tenth in range(1, 11):
        at = next((s for s in samples if s[1] >= tenth * args.rows / 10), samples[-1])
        marks.append({"progress": f"{10 * tenth}%", "seconds": round(at[0], 1), "rss_mb": round(at[2], 1)})
    result = {"rows": args.rows, "workers": args.workers, "seconds": round(seconds, 1),
              "texts_per_s_overall": round(args.rows / seconds, 1), "texts_per_s_steady": round(steady, 1),
              "peak_rss_mb": round(max(s[2] for s in samples), 1), "memory_by_progress": marks}
    print(f"{args.rows} abstracts, --workers {args.workers}: {seconds:.0f} s, {result['texts_per_s_overall']} texts/s "
          f"overall ({result['texts_per_s_steady']} once scoring), peak RSS {result['peak_rss_mb']} MB")
    print("| progress | " + " | ".join(m["progress"] for m in marks) + " |")
    print("|---|" + "---:|" * len(marks))
    print("| RSS MB | " + " | ".join(str(m["rss_mb"]) for m in marks) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
