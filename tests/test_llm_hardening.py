"""The LLM client against hostile or dying endpoints: drip-fed answers, Ctrl-C, a dead server, odd answers, URL
credentials. Real HTTP to the local fake server throughout."""

from __future__ import annotations

import base64
import logging
import signal
import threading
import time
from pathlib import Path

import pytest

from llm_server import DRIP_GIVE_UP_S, FakeLLMServer, close_tracked_clients, llm_server, track  # noqa: F401
from vlmcls.encode.store import Store
from vlmcls.errors import LLMError
from vlmcls.llm.client import LLMClient, LLMConfig, redact_url


def question(name: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Q: What are useful visual features for distinguishing a {name} in a photo?\n-"}]


@pytest.fixture
def store(tmp_path) -> Store:
    with Store(tmp_path / "cache") as s:
        yield s


def make_client(server: FakeLLMServer, store: Store | None, **overrides) -> LLMClient:
    settings = dict(model="fake-llm", base_url=server.base_url, timeout_s=2.0, max_retries=0, backoff_base_s=0.01,
                    max_concurrency=4)
    settings.update(overrides)
    return track(LLMClient(LLMConfig(**settings), store))


def test_a_drip_fed_answer_cannot_outlast_the_total_deadline(llm_server, store):
    # One byte a second never trips a per-read timeout of 1.5 s; only a deadline on the whole request ends it.
    llm_server.script(["ok", "drip:1"])
    client = make_client(llm_server, store, timeout_s=1.5)
    assert client.complete(question("quintor")).text  # warm: the SDK is built and a connection is open
    started = time.monotonic()
    with pytest.raises(LLMError, match=r"no answer within 1.5 s"):
        client.complete(question("zorblax"))
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 < DRIP_GIVE_UP_S, elapsed
    assert client.complete(question("zorblax")).text  # the next request, on a fresh connection, is answered


def test_ctrl_c_stops_every_worker_at_once(llm_server, store):
    llm_server.script([f"slow:{DRIP_GIVE_UP_S}"] * 6)
    client = make_client(llm_server, store, timeout_s=30.0, max_concurrency=3)
    main = threading.get_ident()
    timer = threading.Timer(0.7, lambda: signal.pthread_kill(main, signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            client.complete_many([question(name) for name in ("zorblax", "quintor", "flimber", "wobbet")])
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 2.0
    workers = [t for t in threading.enumerate() if t.name.startswith("vlmcls-llm")]
    for worker in workers:
        worker.join(timeout=2.0)
    assert not any(w.is_alive() for w in workers)  # all stopped within a read slice, not after their answers
    assert time.monotonic() - started < 4.0
    assert len(llm_server.chat_requests) == 3  # the queued fourth request was never sent


def test_a_dead_endpoint_trips_the_breaker_after_a_bounded_number_of_requests(llm_server, store, caplog):
    llm_server.script(["503"] * 500)
    client = make_client(llm_server, store, max_retries=4, max_concurrency=2, breaker_failures=6)
    names = [f"class{i}" for i in range(24)]
    with caplog.at_level(logging.WARNING, logger="vlmcls.llm.client"):
        results = client.complete_many([question(n) for n in names])
    assert all(isinstance(r, LLMError) for r in results)
    # 24 classes x 5 attempts would be 120 requests; the breaker stops at 6 failures plus what was in flight.
    assert 6 <= len(llm_server.chat_requests) <= 6 + 2
    stopped = [r for r in caplog.records if "stopped asking" in r.getMessage()]
    assert len(stopped) == 1  # one message, not one per class
    assert "failed 6 requests in a row" in stopped[0].getMessage()
    assert all("stopped asking" in str(r) for r in results[-10:])
    assert client.usage.failed == 24


def test_rate_limits_do_not_trip_the_breaker(llm_server, store):
    llm_server.script(["429:retry-after=0"] * 4 + ["ok"])
    client = make_client(llm_server, store, max_retries=4, breaker_failures=2, max_concurrency=1)
    assert client.complete(question("zorblax")).text


def test_content_parts_are_joined_into_the_answer_text(llm_server, store):
    llm_server.script(["parts"])
    answer = make_client(llm_server, store).complete(question("zorblax"))
    assert "a red colour" in answer.text and "a round shape" in answer.text
    assert isinstance(answer.text, str) and "image_url" not in answer.text


def test_usage_fields_that_are_not_numbers_are_ignored(llm_server, store):
    llm_server.script(["badusage"])
    client = make_client(llm_server, store)
    answer = client.complete(question("zorblax"))
    assert "a red colour" in answer.text
    assert answer.usage.prompt_tokens == 0 and answer.usage.completion_tokens == 0
    assert client.usage.calls == 1
    assert make_client(llm_server, store).complete(question("zorblax")).cached  # and the cached copy reads back


def test_url_credentials_are_sent_as_basic_auth_and_never_shown(llm_server, store, caplog):
    password = "Pw-Xy7-UrlSecretValue"
    host_url = llm_server.base_url.replace("http://", f"http://alice:{password}@")
    caplog.set_level(logging.DEBUG)  # the HTTP library logs every request URL at INFO
    client = make_client(llm_server, store, base_url=host_url)
    assert client.complete(question("zorblax")).text
    sent = llm_server.chat_requests[0].headers.get("Authorization", "")
    assert base64.b64decode(sent.removeprefix("Basic ")) == f"alice:{password}".encode()
    llm_server.script(["500"])
    with pytest.raises(LLMError) as info:
        client.complete(question("quintor"))
    assert "***@127.0.0.1" in str(info.value) and password not in str(info.value)
    assert password not in caplog.text and "alice" not in caplog.text
    store.close()
    for path in (p for p in Path(store.directory).rglob("*") if p.is_file()):
        assert password.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:pw@host:8000/v1", "http://***@host:8000/v1"),
        ("https://token@api.example.com/v1?x=1", "https://***@api.example.com/v1?x=1"),
        ("http://host:8000/v1", "http://host:8000/v1"),
        ("http://a:b@c@host/v1", "http://***@host/v1"),
    ],
)
def test_redact_url_hides_every_form_of_credentials(url, shown):
    assert redact_url(url) == shown
