"""The demo LLM: a small OpenAI-compatible endpoint on 127.0.0.1 that answers from the demo world's facts.

It lets ``describe``, ``--method cupl``, FuDD without a pairs file and prompt editing with ``--watch`` run offline on
the demo world (``vlmcls demo llm``). It is no language model: it reads which shipped prompt a request comes from
and which demo classes it names, and answers what :mod:`vlmcls.demo.world` knows about them:

- the descriptor prompt (one class) gets the class's generic descriptors as a bullet list, the same facts as
  ``data/demo/descriptors.json`` (an LLM asked about one class alone leaves out what separates it from its twin);
- the differential prompt (two classes) gets a JSON list of ``{"attr_type", "a", "b"}`` captions, one per
  attribute that differs, the same captions as ``data/demo/pairs.json``;
- the CuPL prompt (one class, one sentence wanted) gets one sentence about one or two of the class's generic
  attributes, picked by the question and the request's ``seed``, so the samples of one question differ.

A request that names no demo class is answered with HTTP 400 saying which classes it knows, so a run on other
classes fails visibly (an error row per class) instead of classifying on invented facts.

Bounded: request bodies over :data:`MAX_BODY_BYTES` are refused unread, every connection times out after
:data:`SOCKET_TIMEOUT_S` of silence, and at most :data:`MAX_CONNECTIONS` are served at once (more are closed).
Quiet: nothing is logged per request unless ``log_requests`` is set. Pure standard library, no model.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from .import world

__all__ = [
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "SOCKET_TIMEOUT_S",
    "MODEL_NAME",
    "DemoAnswer",
    "DemoLLMServer",
    "answer_messages",
]

DEFAULT_PORT = 8765  # what the README's commands point at; 0 picks any free port
MAX_BODY_BYTES = 256 * 1024  # the shipped prompts are ~3 KB rendered; anything near this is not a prompt
MAX_CONNECTIONS = 32  # vlmcls sends at most --llm-concurrency (default 8) at once
SOCKET_TIMEOUT_S = 15.0  # a connection silent this long (a stalled or idle keep-alive client) is closed
MODEL_NAME = "vlmcls-demo"  # listed by GET /v1/models; any model name in a request is accepted and echoed

_CLASS_WORDS = {name.lower(): name for name in world.DEMO_CLASSES}
_WORD = re.compile(r"[A-Za-z]+")
_ONE_SENTENCE = re.compile(r"\bone (?:full )?sentence\b", re.IGNORECASE)
# CuPL sentences in the forms the demo model was trained to read ("a photo of a {name}, which has …").
_CUPL_FRAMES = (
    "a photo of a {name}, which has {attributes}.",
    "{name}, which has {attributes}.",
    "an image of a {name}, which has {attributes}.",
    "a picture of a {name}, which shows {attributes}.",
    "a close-up photo of a {name}, which has {attributes}.",
)


@dataclass(frozen=True)
class DemoAnswer:
    """What the demo LLM says to one request: an HTTP status, the answer text (or the error message), its kind."""

    status: int
    text: str
    kind: str  # what the request asks for: "descriptors", "differential", "sentence" (the CuPL prompt), "negatives"
    classes: tuple[str, ...] = ()


_LOOK_ALIKES = re.compile(r"mistake|look-?alike", re.IGNORECASE)  # the negatives prompt asks for near misses


def _named_classes(text: str) -> list[str]:
    """The demo classes a text names (as whole words, any case), in order of first mention."""
    seen: list[str] = []
    for match in _WORD.finditer(text):
        name = _CLASS_WORDS.get(match.group(0).lower())
        if name is not None and name not in seen:
            seen.append(name)
    return seen


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _kind(system: str, everything: str, classes: list[str]) -> str:
    """Which shipped prompt a request comes from, by what it asks for (edited copies keep these words)."""
    if '"attr_type"' in everything or "attr_type" in everything or len(classes) >= 2:
        return "differential"
    if _ONE_SENTENCE.search(system):
        return "sentence"
    if _LOOK_ALIKES.search(system):
        return "negatives"
    return "descriptors"


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _cupl_sentence(name: str, question: str, seed: int | None) -> str:
    """One sentence about one or two of the class's generic attributes; the question and the seed pick which."""
    facts = world.generic_descriptors(name)
    pick = zlib.crc32(f"{question.replace(name, '{}')}|{seed}".encode("utf-8"))
    frame = _CUPL_FRAMES[pick % len(_CUPL_FRAMES)]
    first = (pick // len(_CUPL_FRAMES)) % len(facts)
    count = 1 + (pick // 97) % 2
    chosen = [facts[(first + i) % len(facts)] for i in range(min(count, len(facts)))]
    return frame.format(name=name, attributes=_join(chosen))


def answer_messages(messages: list[dict[str, Any]], seed: int | None = None) -> DemoAnswer:
    """The demo LLM's answer to one chat request (the function the server calls; no I/O)."""
    users = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    system = " ".join(_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "system")
    last_user = users[-1] if users else ""
    everything = " ".join(_text(m.get("content")) for m in messages if isinstance(m, dict))
    classes = _named_classes(last_user)
    kind = _kind(system, everything, classes)
    needed = 2 if kind == "differential" else 1
    if len(classes) < needed:
        known = ", ".join(world.DEMO_CLASSES)
        return DemoAnswer(400, f"the demo LLM answers only about the demo world's {len(world.DEMO_CLASSES)} classes "
                               f"({known}); this {kind} request names {len(classes)} of the {needed} it needs. "
                               "Use a real endpoint (--llm base_url=URL) for other classes.", kind, tuple(classes))
    if kind == "differential":
        a, b = classes[0], classes[1]
        rows = [{"attr_type": t, "a": ca, "b": cb} for t, ca, cb in world.differential_descriptions(a, b)]
        return DemoAnswer(200, json.dumps(rows, indent=1), kind, (a, b))
    name = classes[0]
    if kind == "sentence":
        return DemoAnswer(200, _cupl_sentence(name, last_user, seed), kind, (name,))
    if kind == "negatives":  # near misses: the class with one attribute changed, where that makes no other class
        return DemoAnswer(200, " " + "\n- ".join(world.near_miss_negatives(name)), kind, (name,))
    # The prompt leaves the first "-" open, so the answer continues that bullet as a completion model would.
    return DemoAnswer(200, " " + "\n- ".join(world.generic_descriptors(name)), kind, (name,))


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _BoundedServer(ThreadingHTTPServer):
    """A threading server that serves at most MAX_CONNECTIONS connections at once and closes the rest."""

    daemon_threads = True  # Ctrl-C never waits on a client
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: the client sees a closed connection and retries
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class DemoLLMServer:
    """The demo endpoint: ``start()`` serves in a thread (tests, notebooks); ``serve_forever()`` in this one (CLI).

    ``log_requests``: a stream that gets one line per request (kind, classes, status, milliseconds); None is quiet.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_requests: TextIO | None = None,
                 max_connections: int = MAX_CONNECTIONS):
        self.log_stream = log_requests
        self.requests_served = 0
        self._lock = threading.Lock()
        self._httpd = _BoundedServer((host, port), _make_handler(self), max_connections)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (KeyboardInterrupt propagates) or :meth:`stop` from another thread."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._httpd.server_close()

    def start(self) -> "DemoLLMServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="vlmcls-demo-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "DemoLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _note(self, method: str, path: str, status: int, answer: DemoAnswer | None, started: float) -> None:
        with self._lock:
            self.requests_served += 1
        if self.log_stream is not None:
            what = f" {answer.kind} {','.join(answer.classes)}" if answer else ""
            ms = (time.monotonic() - started) * 1000
            print(f"{method} {path} {status}{what} {ms:.1f} ms", file=self.log_stream, flush=True)


def _make_handler(server: DemoLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = SOCKET_TIMEOUT_S  # socketserver sets it on the connection: bounds every read and write
        server_version = "vlmcls-demo-llm"
        sys_version = ""

        def log_message(self, *args: Any) -> None:  # quiet: requests are logged by _note when asked
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            raw = json.dumps(payload).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:  # the client went away: nothing to answer
                self.close_connection = True

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

        def do_GET(self) -> None:
            started = time.monotonic()
            route = self.path.split("?", 1)[0].rstrip("/")
            if route.endswith("/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "vlmcls"}]})
                status = 200
            elif route in ("", "/health", "/v1"):
                self._send(200, {"status": "ok", "model": MODEL_NAME})
                status = 200
            else:
                status = 404
                self._error(404, f"no route '{route}': POST /v1/chat/completions or /v1/completions")
            server._note("GET", route, status, None, started)

        def _read_body(self) -> dict[str, Any] | None:
            """The JSON body, or None after answering the error (too large, no length, not a JSON object)."""
            length_text = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length_text is None:
                self.close_connection = True
                self._error(411, "send the body with a Content-Length")
                return None
            try:
                length = int(length_text)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                self.close_connection = True  # the body is left unread: this connection cannot be reused
                self._error(413, f"request body of {length_text} bytes; the demo LLM reads at most "
                                 f"{MAX_BODY_BYTES} bytes")
                return None
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (ValueError, RecursionError):
                body = None
            if not isinstance(body, dict):
                self._error(400, "the body is not a JSON object")
                return None
            return body

        def do_POST(self) -> None:
            started = time.monotonic()
            route = self.path.split("?", 1)[0].rstrip("/")
            chat = route.endswith("/chat/completions")
            if not chat and not route.endswith("/completions"):
                self.close_connection = True
                self._error(404, f"no route '{route}': POST /v1/chat/completions or /v1/completions")
                server._note("POST", route, 404, None, started)
                return
            body = self._read_body()
            if body is None:
                server._note("POST", route, 400, None, started)
                return
            if chat:
                messages = body.get("messages")
                messages = messages if isinstance(messages, list) else []
            else:  # the legacy completions API: the prompt is one user message
                prompt = body.get("prompt")
                prompt = "\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt or "")
                messages = [{"role": "user", "content": prompt}]
            seed = body.get("seed") if isinstance(body.get("seed"), int) else None
            answer = answer_messages(messages, seed)
            if answer.status != 200:
                self._error(answer.status, answer.text)
            else:
                self._send(200, _payload(body, messages, answer.text, chat))
            server._note("POST", route, answer.status, answer, started)

    return Handler


def _payload(body: dict[str, Any], messages: list[Any], text: str, chat: bool) -> dict[str, Any]:
    prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages if isinstance(m, dict))
    completion_tokens = _tokens(text)
    model = body.get("model") if isinstance(body.get("model"), str) else MODEL_NAME
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        kind = "text_completion"
    return {"id": f"demo-{zlib.crc32(text.encode('utf-8')):08x}", "object": kind, "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage}
