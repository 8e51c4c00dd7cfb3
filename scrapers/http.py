"""A polite HTTP client: one shared delay between requests, Retry-After, capped backoff, a clear User-Agent.

Every source fetches through `PoliteClient`, so the rules that keep us welcome on arXiv and PwC
mirrors (about one request every 3 s, back off when told) live in one place. So do the limits that
keep a server from holding us: `timeout` is a deadline for the request as a whole, from connecting through
the status line and headers to the last byte of its body (a server dripping its headers or body a byte at
a time is cut off there), and a body is read in pieces up to `max_body_bytes`, never whole. Only a
streamed download (the PwC dump) is read by its caller, `timeout` then bounding each read of its body.
"""
from __future__ import annotations

import contextlib
import email.utils
import functools
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from papertasks.errors import UserError

log = logging.getLogger(__name__)

AGENT_NAME = "papertasks-scraper"
AGENT_VERSION = "0.1"
BACKOFF_CAP_S = 120.0  # longest wait between retries of a 5xx / timeout / bad body
RETRY_AFTER_CAP_S = 600.0  # never sleep longer than this on one Retry-After
READ_PIECE = 65536  # bytes asked for per read of a body; a read returns whatever has arrived

T = TypeVar("T")


class FetchError(Exception):
    """A request that still failed after every retry (or failed in a way retrying cannot fix)."""


class HttpStatusError(FetchError):
    """A 4xx answer (other than 429): the request itself is wrong, so it is not retried."""

    def __init__(self, url: str, status: int, body: str):
        super().__init__(f"GET {url}: HTTP {status}")
        self.status = status
        self.body = body


class BodyTooLarge(FetchError):
    """An answer larger than --max-body-mb: not retried (it would be as large again)."""


class BadResponse(ValueError):
    """Raised by a parse callback when a 200 body is unusable (truncated XML, ...): retried like a 5xx."""


@dataclass
class HttpSettings:
    delay: float = 3.0  # seconds between the end of one request and the start of the next
    timeout: float = 30.0  # seconds for the whole answer, head and body; a streamed body: the most between two reads
    max_body_bytes: int = 64 * 2**20  # the largest answer read (after gzip): far above any page, far below a dump
    max_retries: int = 5
    backoff: float = 2.0  # first wait after a 5xx/timeout; doubles each retry up to BACKOFF_CAP_S
    contact: str | None = None

    @property
    def user_agent(self) -> str:
        contact = f"; mailto:{self.contact}" if self.contact else ""
        return f"{AGENT_NAME}/{AGENT_VERSION} (paper-abstract dataset builder{contact})"


def require_http_url(url: str, what: str) -> str:
    """Reject anything but an absolute http(s) URL with one clear line."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"{what} must be an http:// or https:// URL, got {url!r}")
    return url


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _HeadByDeadline:
    """Mixed into urllib3's connection classes. http.client reads the status line and headers with the socket
    timeout bounding each read, so a server dripping them held us as long as it liked; here a watchdog shuts
    the socket down once `self.timeout` has passed (urllib3 sets it to what Timeout.total leaves after
    connecting), and that is a timeout whatever the cut read made of the head."""

    def getresponse(self):
        cut = threading.Event()
        watchdog = threading.Timer(self.timeout, self._cut, args=(cut,))
        watchdog.start()
        try:
            response = super().getresponse()
        finally:
            watchdog.cancel()
            watchdog.join()  # no thread outlives the request, and `cut` is settled
            if cut.is_set():  # urllib3 turns this into a ReadTimeoutError
                raise TimeoutError(f"no status line and headers within {self.timeout:g} s")
        return response

    def _cut(self, cut: threading.Event) -> None:
        cut.set()
        sock = self.sock  # None once http.client has closed a connection it will not reuse
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)


@functools.cache
def _head_by_deadline(pool_class: type) -> type:
    """`pool_class` (plain, TLS, through a proxy) with connections that read the head by the deadline."""
    connection_class = type(f"Deadline{pool_class.ConnectionCls.__name__}",
                            (_HeadByDeadline, pool_class.ConnectionCls), {})
    return type(f"Deadline{pool_class.__name__}", (pool_class,), {"ConnectionCls": connection_class})


class _DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose pool managers, direct and for each proxy, open `_head_by_deadline` pools."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self._use_deadline_pools(self.poolmanager)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        known = proxy in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not known:
            self._use_deadline_pools(manager)
        return manager

    @staticmethod
    def _use_deadline_pools(manager: urllib3.PoolManager) -> None:
        manager.pool_classes_by_scheme = {scheme: _head_by_deadline(pool_class)
                                          for scheme, pool_class in manager.pool_classes_by_scheme.items()}


class PoliteClient:
    """GET with a minimum gap between requests and retries for 429/5xx/timeouts/bad bodies."""

    def __init__(self, settings: HttpSettings):
        self.settings = settings
        self.session = requests.Session()
        self.session.mount("http://", _DeadlineAdapter())
        self.session.mount("https://", _DeadlineAdapter())
        self.session.headers["User-Agent"] = settings.user_agent
        self.requests_made = 0
        self._last_request_end: float | None = None

    def fetch(self, url: str, params: dict | None = None, parse: Callable[[requests.Response], T] | None = None,
              stream: bool = False):
        """GET `url`; return `parse(response)` (or the response). Raises FetchError when retries run out."""
        attempts = self.settings.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._get_once(url, params, stream)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                timed_out = isinstance(e, requests.exceptions.ReadTimeout)  # ours, with a one-line message
                problem = f"{type(e).__name__} ({e})" if timed_out else type(e).__name__
                wait = self._backoff(attempt)
            else:
                status = response.status_code
                if status in (429, 503):
                    hinted = retry_after_seconds(response.headers.get("Retry-After"))
                    problem = f"HTTP {status}"
                    wait = min(hinted, RETRY_AFTER_CAP_S) if hinted is not None else self._backoff(attempt)
                elif status >= 500:
                    problem, wait = f"HTTP {status}", self._backoff(attempt)
                elif status >= 400:
                    raise HttpStatusError(response.url, status, response.text[:2000])
                elif parse is None:
                    return response
                else:
                    try:
                        return parse(response)
                    except BadResponse as e:
                        problem, wait = f"unusable body ({e})", self._backoff(attempt)
            if attempt == attempts:
                raise FetchError(f"GET {url} failed after {attempts} attempts: {problem}")
            log.warning("GET %s: %s; retry %d/%d in %.1fs", url, problem, attempt, attempts - 1, wait)
            time.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        return min(BACKOFF_CAP_S, self.settings.backoff * 2 ** (attempt - 1))

    def _get_once(self, url: str, params: dict | None, stream: bool) -> requests.Response:
        if self._last_request_end is not None:
            gap = self._last_request_end + self.settings.delay - time.monotonic()
            if gap > 0:
                time.sleep(gap)
        self.requests_made += 1
        log.debug("GET %s %s", url, params or "")
        deadline = time.monotonic() + self.settings.timeout
        try:
            response = self._get_head(url, params)
            if not stream or not response.ok:  # an error page is read as a page is, a dump by its caller
                self._read_body(response, deadline)
            else:
                self._set_read_timeout(response, self.settings.timeout)  # for each read, not what the head left
            return response
        finally:
            self._last_request_end = time.monotonic()

    def _get_head(self, url: str, params: dict | None) -> requests.Response:
        """The status line and headers, the body left unread. Timeout.total makes urllib3 give connecting the
        deadline and the head what is left of it, which `_HeadByDeadline` holds for the head as a whole."""
        try:
            return self.session.get(url, params=params, timeout=urllib3.Timeout(total=self.settings.timeout),
                                    stream=True)
        except requests.exceptions.ReadTimeout:
            raise self._no_answer() from None

    def _read_body(self, response: requests.Response, deadline: float) -> None:
        """Read the body into `response.content` by the deadline and under the size cap; the connection is
        closed afterwards (the socket's timeout was the deadline's, so it is not reused)."""
        cap = self.settings.max_body_bytes
        declared = response.headers.get("Content-Length", "")
        try:
            if declared.isdigit() and int(declared) > cap:
                raise self._too_large(response, f"says it is {int(declared):,} bytes")
            body = bytearray()
            while piece := self._read_piece(response, deadline):
                body += piece
                if len(body) > cap:
                    raise self._too_large(response, f"goes on past {cap:,} bytes")
            response._content = bytes(body)  # what response.content, .text and .json() return
        finally:
            response.close()

    def _read_piece(self, response: requests.Response, deadline: float) -> bytes:
        """Whatever part of the body has arrived (b"" at its end), waiting no later than the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._no_answer()
        self._set_read_timeout(response, remaining)
        try:
            return response.raw.read1(READ_PIECE, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            raise self._no_answer() from None
        except (urllib3.exceptions.HTTPError, OSError) as e:  # a connection cut short, a broken gzip stream
            raise requests.exceptions.ChunkedEncodingError(str(e)) from None

    @staticmethod
    def _set_read_timeout(response: requests.Response, seconds: float) -> None:
        connection = response.raw.connection
        if connection is not None and connection.sock is not None:
            connection.sock.settimeout(seconds)

    def _no_answer(self) -> requests.exceptions.ReadTimeout:
        return requests.exceptions.ReadTimeout(f"no complete answer within {self.settings.timeout:g} s")

    def _too_large(self, response: requests.Response, what: str) -> BodyTooLarge:
        return BodyTooLarge(f"GET {response.url}: the answer {what}, over the {self.settings.max_body_bytes / 2**20:g} MiB "
                            "limit; raise --max-body-mb if it is meant to be that large")
