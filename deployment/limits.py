"""Per-client request rates for the public front ends: the Space (deployment/app.py) and the REST API
(serving/api.py), which imports it from here since deployment/ imports nothing of the repo.

A public server must not let one client take every core: four maximum-size /predict/batch calls hold
2 cores for over a minute, and 64 clients in a loop push everyone's p95 to seconds. So each client
address gets a token bucket (the rule nginx's limit_req and most API gateways apply): `N/unit` allows a
burst of N requests, refilled at N per unit; a request finding the bucket empty is refused (the API:
429 with Retry-After, before its body is read; the app: a gr.Error saying when to retry).

In-process and per server process: enough for one uvicorn or Gradio process; behind several
processes each keeps its own buckets. No dependency: a dict of buckets under a lock, with the clock
injectable so tests need no sleeping.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

RATE_LIMIT_ENV = "PAPERTASKS_RATE_LIMIT"
UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


class RateSpecError(ValueError):
    """A rate that cannot be read; its message follows the flag or variable that gave it, in one line."""


def parse_rate(spec: str | int | None) -> tuple[int, float] | None:
    """'60/min' -> (60, 60.0): a burst of 60, refilled at 60 a minute; '0', 'off', '' or None -> None (no limit)."""
    if spec is None:
        return None
    text = str(spec).strip().lower()
    if text in ("", "0", "off", "none", "no"):
        return None
    match = _SPEC.match(text)
    if not match or match.group(2) not in UNITS:
        raise RateSpecError(f"{spec!r}: give requests per unit, such as 60/min, 5/s or 1000/hour (0 or off: no limit)")
    count = int(match.group(1))
    if count == 0:
        return None
    return count, UNITS[match.group(2)]


class TokenBucket:
    """Per-key token buckets: `capacity` tokens each, refilled at `capacity / period` a second.

    `take(key)` spends one token and answers 0.0, or, when the key's bucket is empty, spends nothing
    and answers the seconds until a token is back. Thread-safe (FastAPI and Gradio run sync handlers in a
    thread pool). Buckets of clients that have been away long enough to be full again are dropped
    once more than `max_keys` are held, so a crowd of addresses cannot grow the dict without bound."""

    def __init__(self, capacity: int, period: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        if capacity < 1 or period <= 0:
            raise ValueError("capacity must be at least 1 and period positive")
        self.capacity, self.period = capacity, period
        self.rate = capacity / period  # tokens a second
        self.clock, self.max_keys = clock, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when they were counted)
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, then = self._buckets.get(key, (float(self.capacity), now))
        return min(float(self.capacity), tokens + max(0.0, now - then) * self.rate)

    def take(self, key: str) -> float:
        with self._lock:
            now = self.clock()
            tokens = self._tokens(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self.max_keys:
                    self._prune(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Drop full buckets (a new one starts full: nothing is forgotten), then the least recent ones,
        down to 90% of max_keys, so a crowd of new addresses prunes once per tenth, not per request."""
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.capacity]:
            del self._buckets[key]
        keep = self.max_keys * 9 // 10
        if len(self._buckets) > keep:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in oldest[:len(self._buckets) - keep]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> int:
    """Retry-After in whole seconds (RFC 9110), never 0: a client retrying at once would be refused again."""
    return max(1, math.ceil(seconds))
