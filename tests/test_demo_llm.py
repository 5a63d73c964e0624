"""`vlmcls demo llm`: the offline endpoint a user runs to try describe, FuDD, audit and CuPL on the demo world."""

import http.client
import json
import time
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmcls.cli import app
from vlmcls.demo import DEMO_CLASSES_FILE, DEMO_DATA_DIR, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_ID
from vlmcls.demo.llm import MAX_BODY_BYTES, DemoLLMServer, answer_messages
from vlmcls.demo.world import DEMO_CLASSES
from vlmcls.llm.descriptors import parse_differential
from vlmcls.llm.prompts import load_prompt

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_llm():
    """`vlmcls demo llm --port 0` in its own process, as a user starts it; yields its base URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "vlmcls", "demo", "llm", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_describe_and_cupl_run_offline_against_it_through_the_cli(demo_llm, tmp_path):
    _, url = demo_llm
    described = tmp_path / "descriptors.json"
    result = runner.invoke(app, ["describe", "--classes", str(DEMO_CLASSES_FILE), "--llm", f"base_url={url}",
                                 "--llm", "model=vlmcls-demo", "-o", str(described)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # The facts the shipped descriptor file holds: an LLM asked about one class alone.
    assert json.loads(described.read_text()) == json.loads(DEMO_DESCRIPTORS_FILE.read_text())

    out = tmp_path / "cupl.jsonl"
    result = runner.invoke(app, ["classify", str(DEMO_DATA_DIR / "images"), "--classes", str(DEMO_CLASSES_FILE),
                                 "--method", "cupl", "--model", DEMO_MODEL_ID, "--llm", f"base_url={url}",
                                 "--llm", "model=vlmcls-demo", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 48 and not any(r["error"] for r in rows)
    right = sum(r["label"] == Path(r["path"]).parent.name for r in rows)
    assert right >= 28  # measured 31 of 48: better than the templates (10) and CbD (28) on these images


def test_it_answers_the_shipped_prompts_with_the_demo_worlds_facts():
    descriptor = answer_messages(load_prompt("descriptors").render(class_name="zorblax"))
    assert descriptor.status == 200 and descriptor.kind == "descriptors"
    assert descriptor.text == " a round shape\n- a red colour\n- a large size"

    pair = answer_messages(load_prompt("differential").render(class_a="quintor", class_b="zorblax"))
    captions = parse_differential(pair.text, "quintor", "zorblax")
    assert pair.kind == "differential" and [c["attr_type"] for c in captions] == ["pattern"]  # the one that differs
    shipped = json.loads((DEMO_DATA_DIR / "pairs.json").read_text())
    entry = shipped.get("quintor_zorblax") or shipped["zorblax_quintor"]
    flip = entry["classes"] != ["quintor", "zorblax"]
    assert [c["prompt_pair"] for c in captions] == [p["prompt_pair"][::-1] if flip else p["prompt_pair"]
                                                    for p in entry["prompt_pairs"]]

    messages = load_prompt("cupl").render(class_name="gleebis")
    sentences = {answer_messages(messages, seed=s).text for s in range(10)}
    assert all(answer_messages(messages, seed=1).text == answer_messages(messages, seed=1).text for _ in range(2))
    assert len(sentences) > 3 and all("gleebis" in s and s.endswith(".") for s in sentences)

    unknown = answer_messages(load_prompt("descriptors").render(class_name="golden retriever"))
    assert unknown.status == 400 and "zorblax" in unknown.text  # says which classes it knows


def test_it_is_bounded_and_speaks_both_completion_apis():
    with DemoLLMServer(port=0) as server:
        url = server.base_url
        status, body = _post(url, "/v1/completions", json.dumps({"model": "m", "prompt": "tell a plovix from a "
                                                                  "drumelt in a photo; attr_type"}).encode())
        assert status == 200 and "plain surface pattern" in body["choices"][0]["text"]
        # refused before a byte of the body is read (it says so in Content-Length)
        status, body = _post(url, "/v1/chat/completions", b"{}", {"Content-Length": str(MAX_BODY_BYTES + 1)})
        assert status == 413 and str(MAX_BODY_BYTES) in body["error"]["message"]
        status, _ = _post(url, "/v1/chat/completions", b"[" * 100_000)  # nested too deep for the JSON parser
        assert status == 400
        status, _ = _post(url, "/v1/embeddings", b"{}")
        assert status == 404
        deadline = time.monotonic() + 5  # the count is taken after the answer is sent: wait for the last one
        while server.requests_served < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.requests_served == 4


def test_ctrl_c_stops_it_quietly(demo_llm):
    proc, url = demo_llm
    status, _ = _post(url, "/v1/chat/completions", json.dumps({"model": "m", "messages": [
        {"role": "user", "content": "What are useful visual features for distinguishing a marnik in a photo?"}]}
    ).encode())
    assert status == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    err = proc.stderr.read()
    assert "stopped after" in err and "POST" not in err  # no per-request lines unless --log-requests


def test_every_demo_class_is_known():
    for name in DEMO_CLASSES:
        assert answer_messages(load_prompt("descriptors").render(class_name=name, domain_hint="a shape")).status == 200
