"""Load test of the REST API: N concurrent clients POSTing real abstracts to /predict.

Bounded and loopback only: it starts `papertasks serve` itself on a free 127.0.0.1 port (or takes
--url, which must be a loopback address), sends a fixed number of requests per concurrency level
(or runs for --seconds), stops by itself, prints a table (throughput, p50/p95/p99/max latency,
errors, and the requests the server's rate limit turned away with 429, counted apart: that is its
intended backpressure, not a failure; for a server it started, its resident memory before and after
each level and the most it reached) and writes the numbers as JSON. Exit status 1 if any request failed.

    python bench/load_api.py --model deployment/models/arxiv --concurrency 1 4 16 --requests 400
    python bench/load_api.py --url http://127.0.0.1:8000 --concurrency 16 --seconds 20
    python bench/load_api.py --concurrency 64 --requests 4000 --rate-limit off   # the server without its limit

Each client is a thread with one keep-alive HTTP connection (standard library only); a request is
an error if it raises, times out (--timeout) or does not answer 200 with labels and scores.
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.predict_scale import rss_mb  # noqa: E402


def load_texts(path: Path | None) -> list[str]:
    """Abstracts to send: the app's examples, or the `text` / title + abstract of a JSONL file."""
    if path is None:
        return [ex["text"] for ex in json.loads((REPO / "deployment" / "examples.json").read_text())]
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                texts.append(row.get("text") or f"{row.get('title', '')}. {row.get('abstract', '')}")
            if len(texts) >= 2000:
                break
    return texts


def check_loopback(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise SystemExit(f"load_api: error: {url}: only http:// on a loopback address (127.0.0.1, ::1, localhost)")
    return host, parts.port or 80


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, log_path: Path, rate_limit: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "w")
    limit = ["--rate-limit", rate_limit] if rate_limit else []
    proc = subprocess.Popen([sys.executable, "-m", "papertasks.cli", "serve", "--model", model, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", *limit], stdout=log,
                            stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"load_api: error: the server exited:\n{log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise SystemExit("load_api: error: the server did not start within 120 s")
            time.sleep(0.3)


class MemoryWatch(threading.Thread):
    """Samples a process's resident memory every `interval` s until stopped: memory before, after and at
    its highest during a level, so a leak under load shows as a rising `after`."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.stopped = pid, interval, threading.Event()
        self.before = self.peak = rss_mb(pid)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> dict:
        self.stopped.set()
        self.join()
        after = rss_mb(self.pid)
        return {"before": round(self.before, 1), "peak": round(max(self.peak, after), 1), "after": round(after, 1)}


def run_level(host: str, port: int, texts: list[str], concurrency: int, requests: int | None,
              seconds: float | None, timeout: float, server_pid: int | None = None) -> dict:
    """`concurrency` threads share a budget of `requests` (or a deadline); returns the numbers."""
    lock = threading.Lock()
    budget = {"left": requests if requests is not None else float("inf")}
    latencies: list[float] = []
    errors: list[str] = []
    limited = {"n": 0}  # 429: the server's per-client rate limit answering as it should
    deadline = time.perf_counter() + seconds if seconds else None
    start_gate = threading.Barrier(concurrency + 1)

    def client(index: int):
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        n = index
        start_gate.wait()
        while True:
            with lock:
                if budget["left"] <= 0 or (deadline and time.perf_counter() >= deadline):
                    break
                budget["left"] -= 1
            body = json.dumps({"text": texts[n % len(texts)]})
            n += concurrency
            t0 = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - t0
                if response.status == 429:
                    with lock:
                        limited["n"] += 1
                    continue
                ok = response.status == 200 and "scores" in json.loads(payload)
                problem = None if ok else f"HTTP {response.status}: {payload[:200]!r}"
            except Exception as e:  # a timeout, a reset connection, ...
                elapsed = time.perf_counter() - t0
                problem = f"{type(e).__name__}: {e}"
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            with lock:
                if problem:
                    errors.append(problem)
                else:
                    latencies.append(elapsed)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    memory = MemoryWatch(server_pid) if server_pid else None
    if memory:
        memory.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server_rss_mb = memory.stop() if memory else None
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"concurrency": concurrency, "requests": len(latencies) + len(errors) + limited["n"],
            "ok": len(latencies), "errors": len(errors), "rate_limited": limited["n"], "error_examples": sorted(set(errors))[:5], "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1) if wall else 0.0,
            "latency_ms": {q: round(float(np.percentile(ms, p)), 1)
                           for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
            "server_rss_mb": server_rss_mb}


def print_table(runs: list[dict]) -> None:
    print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'429':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'RSS MB before/peak/after':>25}")
    for r in runs:
        lat, rss = r["latency_ms"], r["server_rss_mb"]
        memory = f"{rss['before']:.0f} / {rss['peak']:.0f} / {rss['after']:.0f}" if rss else "-"
        print(f"{r['concurrency']:>7} {r['requests']:>8} {r['errors']:>6} {r['rate_limited']:>6} {r['throughput_rps']:>7.1f} "
              f"{lat['p50']:>8.1f} {lat['p95']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f} {memory:>25}")
        for example in r["error_examples"]:
            print(f"        error: {example}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server (loopback only); default: start one")
    where.add_argument("--model", default=str(REPO / "deployment" / "models" / "arxiv"),
                       help="bundle for the server it starts")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="clients, one run per value")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    amount.add_argument("--seconds", type=float, default=None, help="run each level this long instead")
    parser.add_argument("--warmup", type=int, default=8, help="unmeasured requests first")
    parser.add_argument("--texts", type=Path, default=None, help="JSONL of papers (default: deployment/examples.json)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as an error")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load_api.json", help="JSON report")
    parser.add_argument("--rate-limit", help="the started server's --rate-limit, e.g. off (default: the server's own)")
    args = parser.parse_args(argv)
    if any(c < 1 for c in args.concurrency) or (args.seconds is None and args.requests < 1):
        parser.error("--concurrency and --requests must be at least 1")
    if args.url and args.rate_limit:
        parser.error("--rate-limit sets the server this bench starts; a server at --url keeps its own")

    texts = load_texts(args.texts)
    server = None
    if args.url:
        url = args.url.rstrip("/")
        host, port = check_loopback(url)
    else:
        log_path = args.out.with_suffix(".server.log")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        server, url = start_server(args.model, log_path, args.rate_limit)
        host, port = check_loopback(url)
    try:
        health = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())
        if args.warmup:
            run_level(host, port, texts, 1, args.warmup, None, args.timeout)
        runs = []
        for concurrency in args.concurrency:
            runs.append(run_level(host, port, texts, concurrency, None if args.seconds else args.requests,
                                  args.seconds, args.timeout, server.pid if server else None))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    print_table(runs)
    report = {"url": url, "model": health.get("model"), "texts": len(texts), "endpoint": "POST /predict",
              "rate_limit": health.get("limits", {}).get("rate_limit"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
