"""What an LLM request and its answer are: the endpoint's settings (:class:`LLMConfig`), token accounting
(:class:`Usage`), one answer (:class:`Completion`), a dry run's estimate (:class:`CallEstimate`), and the helpers that
read an SDK answer's fields, a ``Retry-After`` header and a refused connection, and keep credentials out of URLs.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import ConfigError, LLMError, LLMResponseError

__all__ = ["DEFAULT_BASE_URL", "LLMConfig", "Usage", "Completion", "CallEstimate", "approx_tokens", "redact_url"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Sent to endpoints that need no key (Ollama, vLLM, llama.cpp): the SDK insists on some string.
_NO_KEY_PLACEHOLDER = "no-key-needed"
_RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx
_MAX_RETRY_AFTER_S = 120.0  # a server asking for longer is capped, not obeyed for an hour

Messages = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": str}, ...]


@dataclass
class LLMConfig:
    """How to reach the LLM and how to sample from it."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None  # None: $OPENAI_BASE_URL, else the OpenAI API
    api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable holding the key, never the key itself
    timeout_s: float = 60.0  # per HTTP request; a slower answer counts as a failed attempt and is retried
    max_retries: int = 4  # extra attempts after the first, for 429, 5xx, timeouts and connection errors
    max_concurrency: int = 8  # requests in flight at once, across all threads using this client
    temperature: float = 0.0  # deterministic answers make the cache meaningful
    seed: int | None = 0  # honoured by OpenAI and vLLM; others ignore it
    max_tokens: int | None = 512
    backoff_base_s: float = 1.0  # first retry waits about this long (doubling after), unless Retry-After says
    backoff_max_s: float = 30.0
    # Failed requests in a row (any request, 429 excepted) after which the client stops asking the endpoint for
    # the rest of its life: a dead server then costs seconds, not every class its full retry budget. 0: never.
    breaker_failures: int = 10

    def resolved_base_url(self) -> str:
        """The endpoint actually used, normalised (it is part of every cache key)."""
        url = self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        return url.rstrip("/")

    def validate(self) -> None:
        problems = []
        if not self.model:
            problems.append("the model name is empty (pass --llm model=NAME)")
        if self.timeout_s <= 0:
            problems.append(f"timeout '{self.timeout_s}' must be > 0 seconds")
        if self.max_retries < 0:
            problems.append(f"max_retries '{self.max_retries}' must be >= 0")
        if self.max_concurrency < 1:
            problems.append(f"max_concurrency '{self.max_concurrency}' must be >= 1")
        if self.breaker_failures < 0:
            problems.append(f"breaker_failures '{self.breaker_failures}' must be >= 0 (0: never stop asking)")
        if self.api_key_env.startswith(("sk-", "Bearer")):
            problems.append("api_key_env must name an environment variable, not hold a key")
        url = urlsplit(self.resolved_base_url())
        if url.scheme not in ("http", "https") or not url.hostname:
            problems.append(f"base URL '{redact_url(self.resolved_base_url())}' is not an http(s) URL such as "
                            f"{DEFAULT_BASE_URL}")
        if problems:
            raise ConfigError("invalid LLM settings: " + "; ".join(problems) + ".")


@dataclass
class Usage:
    """Token and call counts; on a client, the running totals (network calls only, cache hits counted apart)."""

    calls: int = 0  # answers fetched over the network
    cached: int = 0  # answers read from the cache
    failed: int = 0  # requests that ended in an error after all retries
    retries: int = 0  # extra attempts made after a retryable failure
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Usage") -> None:
        for name in ("calls", "cached", "failed", "retries", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def record(self, result: Any) -> Any:
        """Count one answer of ``complete_many`` (a Completion, cached or fetched, or an LLMError) and return the
        Completion, or None for an error: the one accounting step of every method that asks (descriptors, FuDD's
        pairs, CuPL)."""
        if isinstance(result, LLMError):
            self.failed += 1
            return None
        if result.cached:
            self.cached += 1
        else:
            self.calls += 1
            self.prompt_tokens += result.usage.prompt_tokens
            self.completion_tokens += result.usage.completion_tokens
        return result

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass
class Completion:
    """One answer: its text, the tokens it cost when it was fetched, and whether it came from the cache."""

    text: str
    usage: Usage
    cached: bool
    key: str = ""
    model: str = ""  # the model name the endpoint reported
    finish_reason: str | None = None


@dataclass
class CallEstimate:
    """What a run would spend (for --dry-run); tokens are approximate: characters / 4."""

    requests: int  # distinct requests the run needs
    cached: int  # of those, already answered in the cache
    to_call: int  # requests that would go to the LLM
    approx_prompt_tokens: int
    approx_completion_tokens: int  # assumes max_tokens (or 300) per call: an upper-end guess

    @property
    def approx_total_tokens(self) -> int:
        return self.approx_prompt_tokens + self.approx_completion_tokens


def redact_url(url: str) -> str:
    """``url`` with any credentials in it (``user:KEY@``) replaced by ``***@``: the one form of a base URL that is
    logged, printed, or written to a warning row or report."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"  # not parseable: it could hide anything
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(the URL without ``user:password@``, (user, password) or None)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def _token_count(value: Any) -> int:
    """A usage field as a token count; 0 unless it is a plain non-negative number (some servers send lists)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return 0
    return int(value)


def _usage_field(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
    return _token_count(value)


def _message_text(content: Any) -> str:
    """An answer's text: a string, or a list of content parts (``[{"type": "text", "text": ...}]``) whose text
    parts are joined; other parts (images, refusals) carry no descriptor text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
            text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
            if isinstance(text, str) and kind in (None, "text", "output_text"):
                texts.append(text)
        return "".join(texts)
    raise LLMResponseError(f"the answer's content is a {type(content).__name__}, not text or a list of text parts.")


def approx_tokens(text: str) -> int:
    """A rough token count (4 characters per token, the usual rule of thumb for English)."""
    return (len(text) + 3) // 4


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds a server asked us to wait: ``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_refused(exc: BaseException) -> bool:
    """Whether a connection error means no server at all (refused, unknown host), not a slow or flaky one. The
    SDK's HTTP library varies by version, so its exception chain is read by kind, not by class."""
    import socket

    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (ConnectionRefusedError, socket.gaierror)) or type(cause).__name__ == "ConnectError":
            return True
        cause = cause.__cause__ or cause.__context__
    return False
