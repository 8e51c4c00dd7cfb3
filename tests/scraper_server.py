"""A scripted local HTTP server for the scraper tests: routes answer with queued replies, every request is logged.

Runs in a thread on 127.0.0.1 with a port of its own, so tests exercise real sockets, real timeouts
and real status codes without touching the network.
"""
from __future__ import annotations

import io
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    body: bytes | str = b""
    status: int = 200
    headers: dict = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    delay: float = 0.0  # seconds to stall before answering (timeouts, a run to kill mid-page)
    drip: float = 0.0  # seconds between the body's bytes, sent one at a time (a server holding the client)
    head_drip: float = 0.0  # the same for the status line and headers
    repeat: int = 1  # the body is sent this many times (a huge answer without holding it in memory)
    length: bool = True  # send Content-Length; without it the body ends when the connection closes


@dataclass
class Hit:
    path: str
    query: dict  # single values
    headers: dict
    at: float  # time.monotonic() on arrival


@dataclass
class _Route:
    path: str | re.Pattern
    query: dict
    replies: deque

    def matches(self, path: str, query: dict) -> bool:
        path_ok = self.path.fullmatch(path) if isinstance(self.path, re.Pattern) else self.path == path
        return bool(path_ok) and all(query.get(k) == str(v) for k, v in self.query.items())


class ScriptedServer:
    """`add(path, *replies, **query)`: requests to `path` whose query holds `query` get the replies
    in order, the last one repeating. Routes are tried newest first; no match -> 404."""

    def __init__(self):
        self.hits: list[Hit] = []
        self._routes: list[_Route] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str | re.Pattern, *replies: Reply, **query) -> None:
        with self._lock:
            self._routes.insert(0, _Route(path, query, deque(replies)))

    def requests_to(self, path: str, **query) -> list[Hit]:
        return [h for h in list(self.hits)
                if h.path == path and all(h.query.get(k) == str(v) for k, v in query.items())]

    def wait_for(self, path: str, timeout: float = 30.0, **query) -> Hit:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests_to(path, **query)
            if found:
                return found[0]
            time.sleep(0.02)
        raise TimeoutError(f"no request to {path} {query} within {timeout}s")

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_reply(self, path: str, query: dict) -> Reply:
        with self._lock:
            for route in self._routes:
                if route.matches(path, query):
                    return route.replies.popleft() if len(route.replies) > 1 else route.replies[0]
        return Reply(b"not found", status=404, content_type="text/plain")

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                server.hits.append(Hit(parts.path, query, dict(self.headers), time.monotonic()))
                reply = server._next_reply(parts.path, query)
                if reply.delay and server._closing.wait(reply.delay):
                    return
                body = reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
                try:
                    wire, self.wfile = self.wfile, io.BytesIO()  # the head is collected, then sent as the body is
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    if reply.length:
                        self.send_header("Content-Length", str(len(body) * reply.repeat))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    head, self.wfile = self.wfile.getvalue(), wire
                    if not self.send_bytes(head, reply.head_drip):
                        return
                    for _ in range(reply.repeat):
                        if not self.send_bytes(body, reply.drip):
                            return
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test, a body over its limit): nothing to answer

            def send_bytes(self, data: bytes, drip: float) -> bool:
                """Write `data`, one byte every `drip` seconds if set; False when the server closes meanwhile."""
                if not drip:
                    self.wfile.write(data)
                    return True
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if server._closing.wait(drip):
                        return False
                return True

            def log_message(self, *args):
                pass

        return Handler
