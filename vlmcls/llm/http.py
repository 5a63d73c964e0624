"""HTTP plumbing for the LLM client: each request bounded by a total deadline, and stoppable at once.

httpx bounds each socket operation (connect, one read), not a request: a server that sends its headers and then
one byte a second never trips a read timeout, however long the answer takes. Here every socket operation of a
request is bounded by the time left until that request's deadline, and reads wait in short slices so a cancel
(Ctrl-C in the thread that started the run) is noticed within a fraction of a second. The deadline and the cancel
event belong to the thread making the request (:func:`request_limits`), so one connection pool serves every worker.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import httpcore2
import httpx2
import openai

__all__ = ["RequestCancelled", "request_limits", "deadline_transport", "make_http_client"]

log = logging.getLogger(__name__)

_SLICE_S = 0.2  # how long a read waits before it looks at the cancel event again
_limits = threading.local()


class RequestCancelled(Exception):
    """The run was interrupted while this request was in flight (not an httpcore error: httpx passes it on)."""


@contextmanager
def request_limits(total_s: float, cancel: threading.Event | None = None) -> Iterator[None]:
    """Bound every request this thread makes inside the block: ``total_s`` seconds from now, and ``cancel``."""
    _limits.deadline = time.monotonic() + total_s
    _limits.cancel = cancel
    try:
        yield
    finally:
        _limits.deadline = None
        _limits.cancel = None


def _time_left(timeout: float | None, timeout_error: type[Exception]) -> float | None:
    """The longest the next socket operation may take: the smaller of its own timeout and the request's time left.
    Raises ``timeout_error`` once the deadline has passed, RequestCancelled once the run was interrupted."""
    cancel = getattr(_limits, "cancel", None)
    if cancel is not None and cancel.is_set():
        raise RequestCancelled("the run was interrupted")
    deadline = getattr(_limits, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise timeout_error("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while True:
            limit = _time_left(timeout, httpcore2.ReadTimeout)
            piece = _SLICE_S if limit is None else min(limit, _SLICE_S)
            try:
                return self._inner.read(max_bytes, piece)
            except httpcore2.ReadTimeout:
                # Only this slice ran out: a socket read that timed out can be repeated (nothing was consumed).
                if limit is not None and piece >= limit:
                    raise
                if timeout is not None:
                    timeout -= piece

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # Not sliced: a write that timed out part-way cannot be repeated. Requests are small; they rarely block.
        self._inner.write(buffer, _time_left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore2.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _time_left(timeout, httpcore2.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self, inner: httpcore2.NetworkBackend):
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        limit = _time_left(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, limit, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        limit = _time_left(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, limit, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(**transport_options: Any) -> httpx2.HTTPTransport:
    """An ``httpx2.HTTPTransport`` whose sockets honour :func:`request_limits`.

    httpx has no public hook for httpcore's network backend (httpcore's documented extension point), so the
    backend of the transport's pool is wrapped in place; if a future httpx moves it, requests still work, bounded
    per socket operation only, and a warning says so.
    """
    transport = httpx2.HTTPTransport(**transport_options)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore2.NetworkBackend):
        pool._network_backend = _DeadlineBackend(backend)
    else:
        log.warning("this httpx2 version hides its network backend: LLM requests are bounded per socket "
                    "operation only, not in total")
    return transport



class _HttpClient(openai.DefaultHttpxClient):
    """The SDK's default client settings; closed when garbage-collected, as the SDK's own client is, so a client
    nobody closed leaves no sockets behind."""

    def __del__(self) -> None:
        try:
            if not self.is_closed:
                self.close()
        except Exception:  # interpreter shutdown: nothing left to clean up with
            pass


def make_http_client(auth: tuple[str, str] | None = None) -> httpx2.Client:
    """The HTTP client the LLM client hands the openai SDK: deadline-bounded sockets, optional basic auth."""
    return _HttpClient(transport=deadline_transport(), auth=httpx2.BasicAuth(*auth) if auth else None)
