"""A local OpenAI-compatible server for tests: real HTTP on 127.0.0.1, scripted faults, every request recorded.

It answers like a knowledgeable LLM about the demo world: a descriptor prompt (one demo class named in the last
user message) gets a bullet list of ``generic_descriptors(name)``; a differential prompt (the messages mention
"attr_type" and the last user message names two classes) gets the JSON list of ``differential_descriptions``;
a CuPL prompt (the system message asks for "one sentence") gets one sentence built from the same attributes as the
descriptors, worded by the question asked. Unknown class names get a plausible generic answer.

Faults are scripted per test, in the order requests arrive, or per class (consumed when that class is asked):

    server.script(["429:retry-after=1", "500", "slow:3", "malformed", "empty", "ok"])
    server.fault_for("zorblax", ["slow:5", "slow:5", "slow:5"])

Fault words: ``ok``; ``429`` (optionally ``:retry-after=S`` or ``:retry-after-date=S``, an HTTP date S seconds
ahead); ``500``/``502``/``503``; ``400``/``401``; ``slow:S`` (answer after S seconds); ``malformed`` (200 with
prose, no list); ``empty`` (200 with empty text); ``emptylist`` (200 with ``[]``); ``badjson`` (200 whose body is
not JSON); ``drip:S`` (headers at once, then the body one byte every S seconds, giving up after
``DRIP_GIVE_UP_S``); ``parts`` (the answer's content as a list of content parts); ``badusage`` (usage token counts
that are not numbers).
"""

from __future__ import annotations

import email.utils
import json
import re
import socket
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from vlmcls.demo import world

__all__ = ["FakeLLMServer", "RecordedRequest", "llm_server", "track", "close_tracked_clients"]

_GENERIC_FEATURES = ["a distinctive outline", "a characteristic colour", "a recognisable surface texture"]
_DESCRIPTOR_QUESTION = re.compile(r"distinguishing an? (.+?)(?: \([^)]*\))? in a photo", re.IGNORECASE)
_PAIR_QUESTION = re.compile(r"tell an? (.+?) from an? (.+?) in a photo", re.IGNORECASE)
_CUPL_REQUEST = re.compile(r"\bone sentence\b", re.IGNORECASE)
# Sentence frames for CuPL answers; the question's wording picks one, so each question variant reads differently.
_CUPL_FRAMES = (
    "A {name} is an object with {attributes}.",
    "You can recognise a {name} by {attributes}.",
    "A photo of a {name} shows {attributes}.",
    "In this picture, a {name} stands out with {attributes}.",
    "A {name} seen from the front, showing {attributes}.",
)
DRIP_GIVE_UP_S = 8.0  # a drip ends (connection closed) after this long, so a client without a deadline fails, not hangs


@dataclass
class RecordedRequest:
    """One HTTP request the server received, and what it did with it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    fault: str
    received_at: float = field(default_factory=time.monotonic)

    @property
    def last_user_message(self) -> str:
        messages = (self.body or {}).get("messages", [])
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        return users[-1] if users else ""


class FakeLLMServer:
    """The server object tests drive: ``base_url``, ``script``, ``fault_for``, ``requests``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[str] = deque()
        self._class_faults: dict[str, deque[str]] = {}
        self._answers: dict[str, str] = {}
        self._stop = threading.Event()
        self._in_flight = 0
        self.max_in_flight = 0
        self.requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._httpd = _TrackingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True
        )

    # -- lifecycle --------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping in a "slow" fault
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:  # keep-alive connections would otherwise outlive the test
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        self._thread.join(timeout=5)

    # -- scripting --------------------------------------------------------------------------------------
    def script(self, faults: list[str]) -> None:
        """Queue faults for the next chat requests, in arrival order (then every request is answered ``ok``)."""
        with self._lock:
            self._script.extend(faults)

    def fault_for(self, class_name: str, faults: list[str]) -> None:
        """Queue faults for requests that ask about ``class_name`` (checked before the global script)."""
        with self._lock:
            self._class_faults.setdefault(class_name, deque()).extend(faults)

    def answer_for(self, class_name: str, text: str) -> None:
        """Answer every descriptor request about ``class_name`` with ``text`` instead of the demo-world one."""
        with self._lock:
            self._answers[class_name] = text

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def requests_about(self, class_name: str) -> list[RecordedRequest]:
        return [r for r in self.chat_requests if class_name in _named_classes(r.last_user_message)]

    # -- answering --------------------------------------------------------------------------------------
    def _next_fault(self, classes: list[str]) -> str:
        with self._lock:
            for name in classes:
                queue = self._class_faults.get(name)
                if queue:
                    return queue.popleft()
            return self._script.popleft() if self._script else "ok"

    def _answer_text(self, body: dict[str, Any]) -> str:
        messages = body.get("messages", [])
        last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        differential = any("attr_type" in str(m.get("content", "")) for m in messages)
        names = _named_classes(last_user)
        if differential:
            if len(names) < 2:
                match = _PAIR_QUESTION.search(last_user)
                names = [match.group(1), match.group(2)] if match else ["the first object", "the second object"]
            return json.dumps(_pair_answer(names[0], names[1]), indent=1)
        system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        if _CUPL_REQUEST.search(system):
            return _cupl_answer(names[0] if names else "object", last_user)
        if re.search(r"mistake|look-?alike", system, re.IGNORECASE):  # the negatives prompt: near misses
            with self._lock:
                if names and names[0] in self._answers:
                    return self._answers[names[0]]
            near = world.near_miss_negatives(names[0]) if names else ["a plain grey stone", "an empty table"]
            return " " + "\n- ".join(near)
        if not names:
            match = _DESCRIPTOR_QUESTION.search(last_user)
            names = [match.group(1)] if match else ["object"]
        with self._lock:
            if names[0] in self._answers:
                return self._answers[names[0]]
        descriptors = world.generic_descriptors(names[0]) if names[0] in world.DEMO_CLASSES else _GENERIC_FEATURES
        # The prompt leaves the first "-" open, so the answer continues that bullet, as a completion model would.
        return " " + "\n- ".join(descriptors)


class _TrackingHTTPServer(ThreadingHTTPServer):
    """A threading server that remembers its open connections, so ``stop`` can close them all."""

    daemon_threads = True
    fake: FakeLLMServer

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        with self.fake._lock:
            self.fake._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # type: ignore[no-untyped-def]
        with self.fake._lock:
            self.fake._connections.discard(request)
        super().shutdown_request(request)


def _named_classes(text: str) -> list[str]:
    """Demo class names mentioned in ``text``, in order of first mention."""
    found = []
    for name in world.DEMO_CLASSES:
        match = re.search(rf"\b{re.escape(name)}\b", text)
        if match:
            found.append((match.start(), name))
    return [name for _, name in sorted(found)]


def _pair_answer(a: str, b: str) -> list[dict[str, str]]:
    if a in world.DEMO_CLASSES and b in world.DEMO_CLASSES:
        return [{"attr_type": t, "a": ca, "b": cb} for t, ca, cb in world.differential_descriptions(a, b)]
    return [
        {"attr_type": "overall shape", "a": f"a photo of a {a}, which has its usual outline.",
         "b": f"a photo of a {b}, which has its usual outline."},
    ]


def _cupl_answer(name: str, question: str) -> str:
    """One CuPL sentence: the class's descriptor attributes, in the frame the question's wording picks."""
    features = world.generic_descriptors(name) if name in world.DEMO_CLASSES else _GENERIC_FEATURES
    attributes = ", ".join(features[:-1]) + " and " + features[-1] if len(features) > 1 else features[0]
    frame = _CUPL_FRAMES[zlib.crc32(question.replace(name, "").encode("utf-8")) % len(_CUPL_FRAMES)]
    return frame.format(name=name, attributes=attributes)


def _hostile_answer(kind: str, arg: str, body: dict[str, Any]) -> str:
    """What a runaway or hostile LLM sends: ``many:N`` items (default 100,000), ``long:N`` characters in one word
    of each item (default 60,000), ``deep:N`` levels of nested JSON (default 100,000); in the shape the request
    asks for (differential pairs or descriptors)."""
    differential = any("attr_type" in str(m.get("content", "")) for m in body.get("messages", []))
    if kind == "deep":
        depth = int(arg or 100_000)
        return "[" * depth + "]" * depth
    if kind == "many":
        n = int(arg or 100_000)
        if differential:
            return json.dumps([{"attr_type": f"trait {i}", "a": f"a has trait {i}", "b": f"b lacks trait {i}"}
                               for i in range(n)])
        return " " + "\n- ".join(f"feature number {i}" for i in range(n))
    word = "x" * int(arg or 60_000)
    if differential:
        return json.dumps([{"attr_type": "size", "a": f"a {word} one", "b": f"a small {word} one"}])
    return " " + "\n- ".join([f"a {word} part", "four legs"])


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _make_handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to do
                pass

        def _drip(self, payload: dict[str, Any], every_s: float) -> None:
            raw = json.dumps(payload).encode("utf-8")
            given_up_at = time.monotonic() + DRIP_GIVE_UP_S
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.flush()
                for i in range(len(raw)):
                    if server._stop.wait(every_s) or time.monotonic() > given_up_at:
                        break
                    self.wfile.write(raw[i:i + 1])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": "fake_error", "code": status}}, headers)

        def do_GET(self) -> None:
            server.requests.append(RecordedRequest("GET", self.path, dict(self.headers), None, "ok"))
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "fake-llm", "object": "model", "owned_by": "tests"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                body = None
            if not self.path.rstrip("/").endswith("/chat/completions") or not isinstance(body, dict):
                server.requests.append(RecordedRequest("POST", self.path, dict(self.headers), None, "ok"))
                self._error(400 if body is None else 404, "bad request")
                return
            last_user = next(
                (m.get("content", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), ""
            )
            fault = server._next_fault(_named_classes(last_user))
            server.requests.append(RecordedRequest("POST", self.path, dict(self.headers), body, fault))
            with server._lock:
                server._in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server._in_flight)
            try:
                self._respond(body, fault)
            finally:
                with server._lock:
                    server._in_flight -= 1

        def _respond(self, body: dict[str, Any], fault: str) -> None:
            kind, _, arg = fault.partition(":")
            if kind == "429":
                headers = {}
                if arg.startswith("retry-after="):
                    headers["Retry-After"] = arg.split("=", 1)[1]
                elif arg.startswith("retry-after-date="):
                    when = time.time() + float(arg.split("=", 1)[1])
                    headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
                self._error(429, "rate limited", headers)
                return
            if kind == "401":  # like OpenAI, echo the key: the client must keep it out of logs and errors
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                self._error(401, f"Incorrect API key provided: {key}")
                return
            if kind in {"400", "500", "502", "503"}:
                self._error(int(kind), f"scripted {kind}")
                return
            if kind == "slow":
                if server._stop.wait(float(arg or 1)):
                    return
            if kind == "badjson":
                self._send(200, b"<html>this is not json</html>")
                return
            if kind == "malformed":
                text = "I am sorry, but I cannot describe that. Perhaps ask about something else?"
            elif kind == "empty":
                text = ""
            elif kind == "emptylist":
                text = "[]"
            elif kind in {"many", "long", "deep"}:
                text = _hostile_answer(kind, arg, body)
            else:
                text = server._answer_text(body)
            prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
            completion_tokens = _tokens(text) if text else 0
            content: Any = text
            if kind == "parts":  # as some gateways answer: a list of typed parts, the text split across two
                half = len(text) // 2
                content = [{"type": "text", "text": text[:half]}, {"type": "image_url", "image_url": {"url": "x"}},
                           {"type": "text", "text": text[half:]}]
            usage: dict[str, Any] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if kind == "badusage":
                usage = {"prompt_tokens": [prompt_tokens], "completion_tokens": "many", "total_tokens": None}
            payload = {
                "id": f"chatcmpl-fake-{len(server.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-llm"),
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }
            if kind == "drip":
                self._drip(payload, float(arg or 1))
            else:
                self._send(200, payload)

    return Handler


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    """A fresh fake OpenAI-compatible server on 127.0.0.1 for one test."""
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()


_open_clients: list = []


def track(client):
    """Remember an LLMClient so :func:`close_tracked_clients` closes it after the test."""
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def close_tracked_clients() -> Iterator[None]:
    """Close every tracked client a test made, so no connection outlives the test (autouse where imported)."""
    yield
    while _open_clients:
        _open_clients.pop().close()
