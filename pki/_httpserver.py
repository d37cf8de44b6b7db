"""The HTTP plumbing under :mod:`pki.service` that knows nothing of a CA: the rate-limited access log, the
server that caps connections per client and in total, and the readers that hold a request to one deadline and
one header budget. Split out so the service module stays about routes and the CA worker; the loggers keep the
``pki.service`` names operators configure."""

from __future__ import annotations

import http.client
import io
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger("pki.service")
access_log = logging.getLogger("pki.service.access")

#: Refused connections and timeouts logged per LOG_WINDOW seconds; beyond that they are counted, then summarised.
LOG_BURST = 20
LOG_WINDOW = 10.0


def _client(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


#: Field order of an access line; values that are not plain tokens are quoted, so a client cannot forge a line.
_LOG_FIELDS = ("op", "msg", "tid", "auth", "outcome", "serial", "status", "failinfo", "reason", "http")
_TOKEN = re.compile(r"[A-Za-z0-9._:/@+,\[\]-]{1,200}")


def _log_value(value: object, quote: bool = False) -> str:
    text = str(value)
    if not quote and _TOKEN.fullmatch(text):
        return text
    out = []
    for ch in text[:200]:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + ('..."' if len(text) > 200 else '"')


def _access_line(address: Any, fields: dict[str, object]) -> str:
    parts = [f"client={_client(address)}"]
    for name in _LOG_FIELDS:
        if fields.get(name) is not None:
            parts.append(f"{name}={_log_value(fields[name], quote=name == 'reason')}")
    return " ".join(parts)


class _AccessLog:
    """The ``pki.service.access`` lines: ``client=ADDR:PORT op=OP [msg= tid=] outcome=OUTCOME [serial= status=]
    [failinfo=] [reason="..."] [http=CODE]``, one per request, never a secret or a request body.

    Refused connections and timeouts cost a client nothing to provoke: at most ``burst`` of them per ``window``
    seconds are written; the rest are counted, and the count is written once the window is over."""

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._burst, self._window, self._clock = burst, window, clock
        self._lock = threading.Lock()
        self._start = clock()
        self._count = self._suppressed = 0

    def write(self, address: Any, fields: dict[str, object], *, limited: bool = False) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        summary = None
        with self._lock:
            now = self._clock()
            if now - self._start >= self._window:
                if self._suppressed:
                    summary = (f"client=- op=- outcome=suppressed count={self._suppressed} reason=\"refused "
                               f"connections and timeouts beyond {self._burst} per {self._window:g} s\"")
                self._start, self._count, self._suppressed = now, 0, 0
            if limited and self._count >= self._burst:
                self._suppressed += 1
                line = None
            else:
                self._count += limited
                line = _access_line(address, fields)
        if summary is not None:
            access_log.info("%s", summary)
        if line is not None:
            access_log.info("%s", line)


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on connections, in total and per client address (503 beyond either)."""

    daemon_threads = True
    #: Set on the EST listener: connections are TLS from the first byte, the handshake runs in the handler thread.
    ssl_context: ssl.SSLContext | None = None
    request_queue_size = 128  # listen backlog: socketserver's default of 5 drops SYNs under a burst

    def __init__(self, address: Any, handler: Any, limits: Any, access: _AccessLog) -> None:
        """``limits``: a :class:`pki.service.HttpLimits` (not imported: the service imports this module)."""
        self.limits = limits
        self.access = access
        self._lock = threading.Lock()
        self._open = 0
        self._per_client: dict[str, int] = {}
        super().__init__(address, handler)

    def _admit(self, host: str) -> str | None:
        """None when the connection may take a slot, else why not."""
        with self._lock:
            if self._open >= self.limits.max_connections:
                return f"{self._open} connections open, the limit for all clients"
            n = self._per_client.get(host, 0)
            if n >= self.limits.max_per_client:
                return f"{n} connections already open from this address, the limit per client"
            self._open += 1
            self._per_client[host] = n + 1
            return None

    def _release(self, host: str) -> None:
        with self._lock:
            self._open -= 1
            n = self._per_client.pop(host, 1) - 1
            if n > 0:
                self._per_client[host] = n

    def process_request(self, request: Any, client_address: Any) -> None:
        refusal = self._admit(client_address[0])
        if refusal is not None:
            self.access.write(client_address, {"op": "connect", "outcome": "refused", "reason": refusal,
                                               "http": 503}, limited=True)
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(client_address[0])
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address[0])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver would print a traceback to stderr; log it once instead."""
        log.exception("CA service: internal error serving %s", _client(client_address))


class _HttpServer6(_BoundedServer):
    address_family = socket.AF_INET6


class _DeadlineExceeded(Exception):
    """The request did not arrive whole before its deadline."""


class _DeadlineReader(io.RawIOBase):
    """A socket's receive side on which every read gets only what is left of one deadline: a client that sends
    a byte just before each read would time out gets no more time than one that sends nothing."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise _DeadlineExceeded from None
        except ssl.SSLError as exc:  # a bad record or alert from a TLS client: the connection is gone
            raise ConnectionResetError(f"TLS: {exc.reason or exc}") from None


class _HeaderBudget:
    """The reader ``http.client.parse_headers`` is given: all header lines share MAX_HEADER_BYTES (431 beyond)."""

    def __init__(self, rfile: Any, budget: int) -> None:
        self._rfile = rfile
        self._left = self._budget = budget

    def readline(self, limit: int = -1) -> bytes:
        size = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line: bytes = self._rfile.readline(size)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong(f"header section larger than {self._budget} bytes")
        return line
