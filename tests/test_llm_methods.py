"""cbd, waffle and fudd through the CLI against the local OpenAI-compatible server (real HTTP)."""

import json
import re

import pytest
from typer.testing import CliRunner

import imagegen
from llm_server import llm_server  # noqa: F401  (fixture)
from vlmcls.cli import app

runner = CliRunner()
CLASSES = "zorblax,quintor,flimber,vostrel"


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"zorblax": [(220, 20, 20), (200, 40, 30)], "flimber": [(30, 200, 40)]})
    return root


def _run(tiny, photos, tmp_path, server, *extra):
    out = tmp_path / "out.jsonl"
    args = ["classify", str(photos), "--classes", CLASSES, "--model", f"local-dir:{tiny}", "-o", str(out),
            "--llm", f"base_url={server.base_url}", "--llm", "model=fake-model", *map(str, extra)]
    result = runner.invoke(app, args, catch_exceptions=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result, rows


def test_cbd_asks_once_per_class_then_never_again(tiny_open_clip, photos, tmp_path, llm_server):
    result, rows = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "cbd", "--explain")
    assert result.exit_code == 0, result.output
    assert len(llm_server.chat_requests) == 4
    expl = rows[0]["explanation"]["descriptors"]
    assert expl["top"]["class"] == rows[0]["label"] and expl["top"]["descriptors"]
    assert expl["runner_up"]["class"] != expl["top"]["class"]
    again, rows2 = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "cbd")
    assert again.exit_code == 0 and len(llm_server.chat_requests) == 4  # zero new calls
    assert [r["top_k"] for r in rows2] == [r["top_k"] for r in rows]


def test_a_class_whose_answers_are_garbage_falls_back_with_a_row(tiny_open_clip, photos, tmp_path, llm_server):
    llm_server.fault_for("quintor", ["malformed", "malformed"])
    result, rows = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "cbd")
    assert result.exit_code == 1  # the run finished, but an LLM answer failed
    assert len(rows) == 3 and all(r["error"] is None for r in rows)
    warnings = [json.loads(x) for x in (tmp_path / "out.warnings.jsonl").read_text().splitlines()]
    assert [w["item"] for w in warnings] == ["quintor"]


def test_waffle_needs_no_llm(tiny_open_clip, photos, tmp_path, llm_server):
    result, rows = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "waffle")
    assert result.exit_code == 0 and len(rows) == 3
    assert llm_server.chat_requests == []


def test_fudd_asks_each_unique_pair_once_and_a_rerun_asks_nothing(tiny_open_clip, photos, tmp_path, llm_server):
    result, rows = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "fudd", "--opt", "fudd.k=3",
                        "--export", tmp_path / "exported", "--explain")
    pairs_file = tmp_path / "exported" / "pairs.json"
    assert result.exit_code == 0, result.output
    pairs = json.loads(pairs_file.read_text())
    differential = [r for r in llm_server.chat_requests if "attr_type" in json.dumps(r.body)]
    assert len(llm_server.chat_requests) - len(differential) == 4  # descriptors for the first stage
    assert 1 <= len(differential) == len(pairs) <= 6  # unique pairs inside 3 images' top-3 sets, each asked once
    for row in rows:  # the prediction lies in the ambiguous set; classes outside it get probability 0
        assert len([t for t in row["top_k"] if t["prob"] > 0]) <= 3
    before = len(llm_server.chat_requests)
    again, rows2 = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "fudd", "--opt", "fudd.k=3")
    assert again.exit_code == 0 and len(llm_server.chat_requests) == before
    assert [r["label"] for r in rows2] == [r["label"] for r in rows]
    # the exported pairs reproduce the run without any LLM
    _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "cbd", "--export", tmp_path / "cbd")
    descriptors = tmp_path / "cbd" / "descriptors.json"
    offline, rows3 = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "fudd", "--opt", "fudd.k=3",
                          "--pairs", pairs_file, "--descriptors", descriptors, "--llm", "base_url=http://127.0.0.1:9")
    assert offline.exit_code == 0, offline.output
    assert [r["label"] for r in rows3] == [r["label"] for r in rows]


def test_max_pairs_caps_the_calls(tiny_open_clip, photos, tmp_path, llm_server):
    result, _ = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "fudd", "--opt", "fudd.k=4",
                     "--opt", "fudd.max_pairs=2", "--opt", "fudd.base=templates")
    assert result.exit_code == 0, result.output
    assert len(llm_server.chat_requests) == 2


def test_dry_run_counts_calls_and_makes_none(tiny_open_clip, photos, tmp_path, llm_server):
    result, rows = _run(tiny_open_clip, photos, tmp_path, llm_server, "--method", "fudd", "--opt", "fudd.k=4", "--dry-run")
    assert result.exit_code == 0, result.output
    assert llm_server.chat_requests == [] and rows == []
    text = " ".join(re.sub(r"[│┃┌┐└┘─━┬┴├┤┼]", " ", result.output).split())
    assert "LLM calls 4" in text  # descriptors: one per class
    assert "unique pairs in the ambiguous sets: 6" in text
