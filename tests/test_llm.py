"""The LLM client against the local OpenAI-compatible server, over real HTTP, faults included."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from llm_server import FakeLLMServer, close_tracked_clients, llm_server, track  # noqa: F401  (fixtures)
from vlmcls.encode.store import Store
from vlmcls.errors import ConfigError, LLMError
from vlmcls.llm.client import Completion, LLMClient, LLMConfig, approx_tokens

SECRET = "sk-test-Zq8VbR3uSecretKeyValue"


def question(name: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "List visual features."},
        {"role": "user", "content": f"Q: What are useful visual features for distinguishing a {name} in a photo?\n-"},
    ]


@pytest.fixture
def store(tmp_path) -> Store:
    with Store(tmp_path / "cache") as s:
        yield s


@pytest.fixture
def with_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)




def make_client(server: FakeLLMServer, store: Store | None, **overrides) -> LLMClient:
    settings = dict(model="fake-llm", base_url=server.base_url, timeout_s=2.0, max_retries=2,
                    backoff_base_s=0.01, max_concurrency=4)
    settings.update(overrides)
    return track(LLMClient(LLMConfig(**settings), store))


def test_answers_come_back_with_usage_and_are_cached(llm_server, store, with_key):
    client = make_client(llm_server, store)
    first = client.complete(question("zorblax"))
    assert not first.cached
    assert "a red colour" in first.text and "a round shape" in first.text
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0

    again = make_client(llm_server, store).complete(question("zorblax"))  # a new process would do the same
    assert again.cached and again.text == first.text
    assert len(llm_server.chat_requests) == 1
    assert client.usage.calls == 1 and client.usage.prompt_tokens == first.usage.prompt_tokens


def test_request_carries_model_sampling_settings_and_bearer_key(llm_server, store, with_key):
    make_client(llm_server, store, seed=7, max_tokens=100).complete(question("zorblax"))
    request = llm_server.chat_requests[0]
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert request.body["model"] == "fake-llm"
    assert request.body["temperature"] == 0.0 and request.body["seed"] == 7 and request.body["max_tokens"] == 100


def test_refresh_asks_again_and_overwrites(llm_server, store, with_key):
    make_client(llm_server, store).complete(question("zorblax"))
    llm_server.answer_for("zorblax", "- a new answer")
    refreshed = track(LLMClient(make_client(llm_server, store).config, store, refresh=True)).complete(question("zorblax"))
    assert not refreshed.cached and refreshed.text == "- a new answer"
    assert make_client(llm_server, store).complete(question("zorblax")).text == "- a new answer"
    assert len(llm_server.chat_requests) == 2


def test_cache_key_covers_every_setting_but_never_the_api_key(llm_server, store, monkeypatch):
    base = make_client(llm_server, store)
    key = base.key_for(question("zorblax"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-another-key")
    assert make_client(llm_server, store).key_for(question("zorblax")) == key
    for change in (dict(model="other"), dict(base_url="http://127.0.0.1:1/v1"), dict(temperature=0.7),
                   dict(seed=1), dict(max_tokens=64)):
        assert make_client(llm_server, store, **change).key_for(question("zorblax")) != key, change
    assert base.key_for(question("quintor")) != key
    assert base.key_for(question("zorblax"), variant=1) != key


def test_api_key_never_reaches_cache_files_logs_or_errors(llm_server, store, with_key, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and the HTTP library's included
    client = make_client(llm_server, store)
    client.complete(question("zorblax"))
    llm_server.script(["500", "ok"])
    client.complete(question("quintor"))
    llm_server.script(["401"])  # the fake echoes the key in its 401 message, as OpenAI does
    with pytest.raises(LLMError) as info:
        client.complete(question("flimber"))
    assert "OPENAI_API_KEY" in str(info.value)
    assert SECRET not in str(info.value) and info.value.__cause__ is None
    store.close()
    files = [p for p in Path(store.directory).rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert caplog.records
    assert SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_429_retry_after_seconds_is_honoured(llm_server, store, with_key):
    llm_server.script(["429:retry-after=1"])
    started = time.monotonic()
    answer = make_client(llm_server, store).complete(question("zorblax"))
    elapsed = time.monotonic() - started
    assert "a red colour" in answer.text
    assert elapsed >= 1.0
    first, second = llm_server.chat_requests
    assert second.received_at - first.received_at >= 1.0


def test_429_retry_after_http_date_is_honoured(llm_server, store, with_key):
    llm_server.script(["429:retry-after-date=2"])  # an HTTP date 2 s ahead, truncated to the second: 1-2 s
    started = time.monotonic()
    make_client(llm_server, store).complete(question("zorblax"))
    assert time.monotonic() - started >= 0.9  # ignoring the header would retry after ~0.01 s
    assert len(llm_server.chat_requests) == 2


def test_server_errors_and_unreadable_bodies_are_retried(llm_server, store, with_key):
    llm_server.script(["500", "503", "badjson"])
    client = make_client(llm_server, store, max_retries=3)
    answer = client.complete(question("zorblax"))
    assert "a red colour" in answer.text
    assert len(llm_server.chat_requests) == 4 and client.usage.retries == 3


def test_client_errors_are_not_retried(llm_server, store, with_key):
    llm_server.script(["400"])
    client = make_client(llm_server, store)
    with pytest.raises(LLMError, match="refused"):
        client.complete(question("zorblax"))
    assert len(llm_server.chat_requests) == 1 and client.usage.failed == 1


def test_slow_answers_time_out_then_fail_with_a_clear_error(llm_server, store, with_key):
    llm_server.script(["slow:5", "slow:5"])
    client = make_client(llm_server, store, timeout_s=0.3, max_retries=1)
    started = time.monotonic()
    with pytest.raises(LLMError) as info:
        client.complete(question("zorblax"))
    assert time.monotonic() - started < 3  # gave up on time, did not wait for the slow server
    assert "failed after 2 attempts" in str(info.value) and "0.3 s" in str(info.value)
    assert make_client(llm_server, store).cached(question("zorblax")) is None  # nothing bogus was cached


def test_complete_many_keeps_finished_answers_when_one_fails(llm_server, store, with_key):
    llm_server.fault_for("zorblax", ["slow:5", "slow:5"])
    client = make_client(llm_server, store, timeout_s=0.3, max_retries=1)
    names = ["zorblax", "quintor", "flimber", "vostrel"]
    results = client.complete_many([question(n) for n in names])
    assert isinstance(results[0], LLMError)
    assert all(isinstance(r, Completion) for r in results[1:])
    assert client.usage.calls == 3 and client.usage.failed == 1
    # Each finished answer is in the cache: the re-run only asks for the failed one.
    before = len(llm_server.chat_requests)
    rerun = make_client(llm_server, store).complete_many([question(n) for n in names])
    assert all(isinstance(r, Completion) for r in rerun)
    assert [r.cached for r in rerun] == [False, True, True, True]
    assert len(llm_server.chat_requests) == before + 1


def test_concurrency_limit_is_respected(llm_server, store, with_key):
    llm_server.script(["slow:0.3"] * 6)
    client = make_client(llm_server, store, max_concurrency=2)
    names = ["zorblax", "quintor", "flimber", "vostrel", "marnik", "trelloq"]
    results = client.complete_many([question(n) for n in names])
    assert all(isinstance(r, Completion) for r in results)
    assert llm_server.max_in_flight == 2


def test_estimate_counts_only_uncached_requests(llm_server, store, with_key):
    client = make_client(llm_server, store, max_tokens=100)
    client.complete(question("zorblax"))
    requests = [question("zorblax"), question("quintor"), question("flimber"), question("flimber")]
    estimate = client.estimate(requests)
    assert (estimate.requests, estimate.cached, estimate.to_call) == (3, 1, 2)
    expected_prompt = sum(approx_tokens(m["content"]) + 4 for r in requests[1:3] for m in r)
    assert estimate.approx_prompt_tokens == expected_prompt
    assert estimate.approx_completion_tokens == 200
    assert len(llm_server.chat_requests) == 1  # estimating sends nothing


def test_local_endpoint_works_without_a_key(llm_server, store):
    answer = make_client(llm_server, store).complete(question("zorblax"))
    assert "a red colour" in answer.text
    auth = {k.lower(): v for k, v in llm_server.chat_requests[0].headers.items()}["authorization"]
    assert auth.startswith("Bearer ") and len(auth) > len("Bearer ")


def test_openai_without_a_key_is_a_config_error_before_any_request(store):
    client = LLMClient(LLMConfig(model="gpt-4o-mini"), store)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        client.complete(question("zorblax"))


def test_cached_answers_need_neither_key_nor_server(tmp_path, with_key, monkeypatch):
    server = FakeLLMServer().start()
    with Store(tmp_path / "c") as store:
        config = make_client(server, store).config
        with LLMClient(config, store) as client:
            client.complete(question("zorblax"))
        server.stop()
        monkeypatch.delenv("OPENAI_API_KEY")
        with LLMClient(config, store) as client:
            assert client.complete(question("zorblax")).cached


@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(timeout_s=0), "timeout"),
        (dict(max_concurrency=0), "max_concurrency"),
        (dict(base_url="localhost:8000"), "not an http(s) URL"),
        (dict(api_key_env="sk-abc"), "environment variable"),
    ],
)
def test_invalid_settings_are_config_errors(change, fragment, store):
    with pytest.raises(ConfigError, match=None) as info:
        LLMClient(LLMConfig(**change), store)
    assert fragment in str(info.value)


def test_base_url_falls_back_to_the_environment(monkeypatch, llm_server):
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.base_url + "/")
    assert LLMConfig().resolved_base_url() == llm_server.base_url
    assert LLMConfig(base_url="http://example.test/v1").resolved_base_url() == "http://example.test/v1"


def test_repeated_requests_are_asked_once(llm_server, store):
    client = make_client(llm_server, store)
    results = client.complete_many([question("zorblax"), question("quintor"), question("zorblax")])
    assert results[0].text == results[2].text and "a red colour" in results[0].text
    assert len(llm_server.chat_requests) == 2


def test_fake_server_lists_its_model_like_openai(llm_server):
    import openai

    with openai.OpenAI(base_url=llm_server.base_url, api_key="unused", max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list().data] == ["fake-llm"]
