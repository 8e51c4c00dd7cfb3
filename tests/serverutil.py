"""Real server processes for the API, worker and browser tests: uvicorn, RQ workers, redis-server.

Each runs as a subprocess on a free loopback port with its output in a log file (never a pipe that
could fill up and stall it), and is stopped by its own pid when the block ends."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from apputil import free_port
from conftest import REPO
from deployment.limits import RATE_LIMIT_ENV

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CONF = REPO / "serving" / "redis.conf"  # the documented setup: AOF, maxmemory with noeviction


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Call check() until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Process:
    def __init__(self, command: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._file = open(log, "w")
        self.proc = subprocess.Popen(command, stdout=self._file, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
        self.pid = self.proc.pid

    def output(self) -> str:
        self._file.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


def _answers(url: str, proc: Process):
    if not proc.alive():
        raise AssertionError(f"server exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def api_server(model: Path, log_dir: Path, *args: str, timeout: float = 90, env: dict | None = None):
    """`papertasks serve` on a free port; yields (base_url, Process). Its per-client rate limit is off
    (every test client is 127.0.0.1, and module fixtures send hundreds of requests) unless `args` or
    `env` set one."""
    port = free_port()
    proc = Process([sys.executable, "-m", "papertasks.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
                    "--port", str(port), "--log-level", "warning", *args], log_dir / f"api-{port}.log",
                   env={RATE_LIMIT_ENV: "off", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url + "/health", proc), timeout, f"the API on {url}", interval=0.3)
        yield url, proc
    finally:
        proc.stop()


@contextlib.contextmanager
def worker(model: Path, redis_url: str, log_dir: Path, *args: str, env: dict | None = None, name: str = "worker"):
    """`papertasks worker ARGS`; yields the Process once it listens on the queue."""
    log = log_dir / f"{name}-{time.time_ns()}.log"
    proc = Process([sys.executable, "-m", "papertasks.cli", "worker", "--model", str(model),
                    "--redis-url", redis_url, *args], log, env=env)
    try:
        def listening():
            if not proc.alive():
                raise AssertionError(f"worker exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
            return "Listening on" in proc.output()

        wait_until(listening, 60, "the worker to listen", interval=0.2)
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def redis_server(tmp_dir: Path, *options: str | Path, port: int | None = None):
    """A redis-server keeping its files in `tmp_dir`, on `port` (default: a free one); yields (url, Process).
    `options`: a config file and/or flags, e.g. (REDIS_CONF,); without them, no persistence. Started again
    on the same folder and port with the same options, it reads back what it had written."""
    port = port or free_port()
    options = options or ("--save", "", "--appendonly", "no")
    proc = Process([REDIS_SERVER, *options, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_dir)],
                   tmp_dir / f"redis-{port}-{time.time_ns()}.log")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        def pong():
            if not proc.alive():
                raise AssertionError(f"redis-server exited:\n{proc.output()[-2000:]}")
            try:
                return redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            except redis.exceptions.ConnectionError:
                return False

        wait_until(pong, 20, f"redis-server on port {port}")
        yield url, proc
    finally:
        proc.stop()
