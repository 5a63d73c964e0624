"""The LLM client: any OpenAI-compatible chat endpoint, with retries, a concurrency limit and a response cache.

Every answer is stored in the cache the moment it arrives, keyed by the rendered messages, the model, the base
URL and the sampling settings, so a re-run makes no calls and an interrupted run loses nothing. The API key is
read from an environment variable when the first call is made; it never enters a cache key, a cached value, a
log line or an error message. Credentials in the base URL (``http://user:KEY@host``) are treated the same way:
they are sent as HTTP basic auth, and the URL is shown only through :func:`redact_url`.

Every request is bounded in total (``timeout_s``, however slowly a server drips its answer), Ctrl-C during
:meth:`LLMClient.complete_many` stops every worker at once, and after ``breaker_failures`` failed requests in a row
the client stops asking that endpoint (one warning, every remaining request an LLMError saying why).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from ..encode.store import Store, cache_key
from ..sources.limits import current_limits, variable_for
from ..errors import ConfigError, LLMError, LLMResponseError, LLMUnreachableError
from .config import (  # noqa: F401  (the client's names, as callers import them)
    _MAX_RETRY_AFTER_S,
    _NO_KEY_PLACEHOLDER,
    _RETRYABLE_STATUS,
    DEFAULT_BASE_URL,
    Messages,
    CallEstimate,
    Completion,
    LLMConfig,
    Usage,
    _is_refused,
    _message_text,
    _retry_after_seconds,
    _split_credentials,
    _usage_field,
    approx_tokens,
    redact_url,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "Messages",
    "LLMConfig",
    "Usage",
    "Completion",
    "CallEstimate",
    "LLMClient",
    "approx_tokens",
    "redact_url",
]

log = logging.getLogger(__name__)

class LLMClient:
    """Ask an OpenAI-compatible chat endpoint, through the cache; safe to share between threads.

    Use it as a context manager (or call :meth:`close`) so its keep-alive connections are closed.
    """

    def __init__(self, config: LLMConfig, store: Store | None, refresh: bool = False):
        config.validate()
        self.config = config
        self.store = store  # None: no cache (every call goes to the network)
        self.refresh = refresh  # True: ignore cached answers (they are overwritten by the new ones)
        # base_url: without credentials (they go to HTTP basic auth), so they reach no cache key, log or message.
        self.base_url, self._url_credentials = _split_credentials(config.resolved_base_url())
        self.display_url = redact_url(config.resolved_base_url())
        self.usage = Usage()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._sdk_client: Any = None
        self._secrets = [c for c in self._url_credentials or () if len(c) >= 4]  # only to scrub them from text
        self._failures_in_a_row = 0
        self._breaker_message: str | None = None  # set once the endpoint failed breaker_failures requests in a row
        self._unreachable: LLMUnreachableError | None = None  # set once a connection is refused: ask no more

    def close(self) -> None:
        """Close the HTTP connections (the store belongs to the caller and stays open)."""
        with self._lock:
            if self._sdk_client is not None:
                self._sdk_client.close()
                self._sdk_client = None

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys and the SDK -------------------------------------------------------------------------------
    def key_for(self, messages: Messages, variant: int = 0) -> str:
        """The cache key of one request (the API key is deliberately not part of it)."""
        parts: dict[str, Any] = dict(
            messages=messages,
            model=self.config.model,
            base_url=self.base_url,
            temperature=self.config.temperature,
            seed=self._seed(variant),
            max_tokens=self.config.max_tokens,
        )
        if variant:
            parts["variant"] = variant
        return cache_key("llm", **parts)

    def _seed(self, variant: int) -> int | None:
        return None if self.config.seed is None else self.config.seed + variant

    def _sdk(self) -> Any:
        """The openai SDK client, built on first network use so cached runs need neither key nor network."""
        with self._lock:
            if self._sdk_client is None:
                import openai

                key = os.environ.get(self.config.api_key_env, "").strip()
                if not key:
                    host = urlsplit(self.base_url).hostname or ""
                    if host.endswith("openai.com"):
                        raise ConfigError(
                            f"no API key: the environment variable '{self.config.api_key_env}' is not set, "
                            f"and '{self.display_url}' requires one. Export it (export "
                            f"{self.config.api_key_env}=...), or point --llm base_url=URL at a local server."
                        )
                    log.debug("$%s is not set; sending a placeholder key to %s", self.config.api_key_env,
                              self.display_url)
                    key = _NO_KEY_PLACEHOLDER
                else:
                    self._secrets.append(key)
                from .http import make_http_client

                self._sdk_client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.config.timeout_s,
                                                 max_retries=0, http_client=make_http_client(self._url_credentials))
            return self._sdk_client

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- asking -----------------------------------------------------------------------------------------
    def cached(self, messages: Messages, variant: int = 0) -> Completion | None:
        """The cached answer to ``messages``, or None (always None with ``refresh``)."""
        if self.store is None or self.refresh:
            return None
        key = self.key_for(messages, variant)
        value = self.store.get_json(key)
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            return None
        usage = value.get("usage")
        with self._lock:
            self.usage.cached += 1
        return Completion(
            text=value["text"],
            usage=Usage(
                prompt_tokens=_usage_field(usage, "prompt_tokens"),
                completion_tokens=_usage_field(usage, "completion_tokens"),
            ),
            cached=True,
            key=key,
            model=str(value.get("model", "")),
            finish_reason=value.get("finish_reason") if isinstance(value.get("finish_reason"), str) else None,
        )

    def forget(self, messages: Messages, variant: int = 0) -> None:
        """Drop the cached answer to ``messages`` (one that could not be used), so a later run asks again."""
        if self.store is not None:
            self.store.delete(self.key_for(messages, variant))

    def complete(self, messages: Messages, variant: int = 0) -> Completion:
        """Answer one request: from the cache, else from the endpoint (then cached). Raises LLMError.

        ``variant`` > 0 asks again with a different seed and its own cache entry (used to re-ask once after a
        garbage answer, so a re-run replays both answers without calling).
        """
        hit = self.cached(messages, variant)
        if hit is not None:
            return hit
        self._sdk()  # a missing key is a ConfigError for the whole run, raised before any thread starts
        return self._fetch(messages, variant)

    def complete_many(self, requests: Sequence[Messages], variant: int = 0) -> list[Completion | LLMError]:
        """Answer many requests concurrently (at most ``max_concurrency`` in flight), in input order.

        A request that fails after its retries comes back as its LLMError; the others still finish, and every
        answer is cached as it arrives, so an interrupted run keeps what it already got. An interrupt (Ctrl-C)
        stops every worker within a fraction of a second and is re-raised.
        """
        keys = [self.key_for(m, variant) for m in requests]
        answers: dict[str, Completion | LLMError] = {}
        pending: dict[str, Messages] = {}  # one call per distinct request, however often it repeats
        for key, messages in zip(keys, requests):
            if key in answers or key in pending:
                continue
            hit = self.cached(messages, variant)
            if hit is None:
                pending[key] = messages
            else:
                answers[key] = hit
        if pending:
            self._sdk()
            log.info("asking %s for %d answers (%d cached)", self.config.model, len(pending), len(answers))

            cancel = threading.Event()

            def fetch(key: str) -> Completion | LLMError:
                if self._unreachable is not None:
                    return self._unreachable
                try:
                    return self._fetch(pending[key], variant, cancel)
                except LLMError as exc:
                    return exc

            workers = min(self.config.max_concurrency, len(pending))
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlmcls-llm")
            try:
                answers.update(zip(pending, pool.map(fetch, pending)))
            except BaseException:  # Ctrl-C: the workers see the event at their next read slice, retry wait or slot
                cancel.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
            if self._unreachable is not None:  # one message for the run, not one row per request
                raise self._unreachable
        return [answers[key] for key in keys]

    def estimate(self, requests: Sequence[Messages], variant: int = 0) -> CallEstimate:
        """How many calls and roughly how many tokens ``requests`` would cost now (nothing is sent)."""
        unique = {self.key_for(m, variant): m for m in requests}
        to_call = [m for key, m in unique.items() if self.refresh or self.store is None or key not in self.store]
        per_answer = self.config.max_tokens or 300
        return CallEstimate(
            requests=len(unique),
            cached=len(unique) - len(to_call),
            to_call=len(to_call),
            approx_prompt_tokens=sum(approx_tokens(msg["content"]) + 4 for m in to_call for msg in m),
            approx_completion_tokens=per_answer * len(to_call),
        )

    def _fetch(self, messages: Messages, variant: int, cancel: threading.Event | None = None) -> Completion:
        """One request over the network with retries; the answer is cached before it is returned.

        Each attempt is bounded in total by ``timeout_s``; ``cancel`` (set on Ctrl-C) ends it within a fraction of
        a second."""
        import openai

        from .http import RequestCancelled, request_limits

        sdk = self._sdk()
        key = self.key_for(messages, variant)
        extra: dict[str, Any] = {}
        if self._seed(variant) is not None:
            extra["seed"] = self._seed(variant)
        if self.config.max_tokens is not None:
            extra["max_tokens"] = self.config.max_tokens
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            self._check_breaker()
            retry_after: float | None = None
            rate_limited = False
            try:
                with self._slot(cancel), request_limits(self.config.timeout_s, cancel):
                    response = sdk.chat.completions.create(
                        model=self.config.model, messages=messages, temperature=self.config.temperature, **extra
                    )
            except openai.APIStatusError as exc:
                status = exc.status_code
                reason = f"HTTP {status}: {self._scrub(str(exc.message))}"
                if status not in _RETRYABLE_STATUS and status < 500:
                    self._count_failure()
                    self._note_failure(reason)
                    hint = (
                        f" Check that ${self.config.api_key_env} holds a valid key for {self.display_url}."
                        if status in (401, 403)
                        else " Check the model name and the endpoint."
                    )
                    raise LLMError(f"the LLM at '{self.display_url}' refused the request ({reason}).{hint}") from None
                retry_after = _retry_after_seconds(exc.response.headers)
                rate_limited = status == 429  # the server is alive and asks us to wait: not a failure in a row
            except openai.APITimeoutError:
                reason = f"no answer within {self.config.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                if isinstance(exc.__cause__, RequestCancelled) or (cancel is not None and cancel.is_set()):
                    raise LLMError("the run was interrupted before this answer arrived") from None
                if _is_refused(exc):  # nothing listens there: retrying (or asking again) cannot help
                    self._count_failure()
                    self._unreachable = LLMUnreachableError(
                        f"cannot connect to the LLM at '{self.display_url}' ({self._scrub(str(exc.__cause__ or exc))}). "
                        "Start the server, or point --llm base_url=URL (or $OPENAI_BASE_URL) at one that runs."
                    )
                    raise self._unreachable from None
                reason = f"connection failed ({self._scrub(str(exc))})"
            except (ValueError, openai.APIResponseValidationError) as exc:
                reason = f"unreadable response ({type(exc).__name__})"
            else:
                self._note_success()
                return self._store_answer(key, response)
            if not rate_limited:
                self._note_failure(reason)
            if attempt + 1 >= attempts or self._breaker_message is not None:
                break
            delay = self._delay(attempt, retry_after)
            log.warning(
                "LLM request failed (%s); retry %d of %d in %.1f s", reason, attempt + 1, attempts - 1, delay
            )
            with self._lock:
                self.usage.retries += 1
            if cancel is not None and cancel.wait(delay):
                raise LLMError("the run was interrupted before this answer arrived")
            if cancel is None:
                time.sleep(delay)
        self._count_failure()
        if self._breaker_message is not None:
            raise LLMError(self._breaker_message)
        raise LLMError(
            f"the LLM at '{self.display_url}' (model '{self.config.model}') failed after {attempts} attempts: {reason}. "
            "Answers already fetched are cached; re-run to retry only the failed requests "
            "(raise --llm-timeout or --llm-retries, or lower --llm-concurrency, if this keeps happening)."
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Honour the server exactly (plus a little spread so parallel workers do not return in lockstep).
            return min(retry_after, _MAX_RETRY_AFTER_S) + random.uniform(0.0, 0.1 * self.config.backoff_base_s)
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt)
        return random.uniform(0.5 * ceiling, ceiling)

    def _count_failure(self) -> None:
        with self._lock:
            self.usage.failed += 1

    @contextmanager
    def _slot(self, cancel: threading.Event | None) -> Iterator[None]:
        """One of the ``max_concurrency`` request slots, given up on when the run is interrupted."""
        while not self._slots.acquire(timeout=0.2):
            if cancel is not None and cancel.is_set():
                raise LLMError("the run was interrupted before this request was sent")
        try:
            yield
        finally:
            self._slots.release()

    # -- the circuit breaker ----------------------------------------------------------------------------
    def _check_breaker(self) -> None:
        if self._breaker_message is not None:
            self._count_failure()
            raise LLMError(self._breaker_message)

    def _note_success(self) -> None:
        with self._lock:
            self._failures_in_a_row = 0

    def _note_failure(self, reason: str) -> None:
        limit = self.config.breaker_failures
        with self._lock:
            self._failures_in_a_row += 1
            if not limit or self._failures_in_a_row < limit or self._breaker_message is not None:
                return
            self._breaker_message = (
                f"the LLM at '{self.display_url}' failed {self._failures_in_a_row} requests in a row (last: "
                f"{reason}), so vlmcls stopped asking it for the rest of this run. Check that the server is up and "
                "that --llm base_url=… and model=… and the key are right, then run again: answers already fetched "
                "are cached and are not asked again."
            )
        log.error("%s", self._breaker_message)

    def _store_answer(self, key: str, response: Any) -> Completion:
        try:
            choice = response.choices[0]
            text = _message_text(choice.message.content)
            finish_reason = choice.finish_reason if isinstance(choice.finish_reason, str) else None
        except (AttributeError, IndexError, TypeError) as exc:
            raise LLMResponseError(
                f"the LLM at '{self.display_url}' answered without a message ({type(response).__name__}). "
                "Check that the endpoint speaks the OpenAI chat-completions API."
            ) from exc
        usage = Usage(
            calls=1,
            prompt_tokens=_usage_field(response.usage, "prompt_tokens"),
            completion_tokens=_usage_field(response.usage, "completion_tokens"),
        )
        model = str(getattr(response, "model", "") or self.config.model)
        limit = current_limits().answer_bytes
        if len(text) > limit // 4 and len(text.encode("utf-8", "surrogatepass")) > limit:  # never cached
            raise LLMResponseError(
                f"the LLM at '{self.display_url}' answered {len(text.encode('utf-8', 'surrogatepass')):,} bytes, over "
                f"the limit of {limit:,} (raise {variable_for('answer_bytes')} if answers this long are meant)"
            )
        if self.store is not None:
            self.store.set_json(key, {
                "text": text,
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
                "model": model,
                "finish_reason": finish_reason,
                "fetched_at": time.time(),
            })
        with self._lock:
            self.usage.add(usage)
        return Completion(text=text, usage=usage, cached=False, key=key, model=model, finish_reason=finish_reason)
