"""CuPL: LLM-written sentences averaged like a template ensemble, asked over real HTTP to the local server."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_server import llm_server  # noqa: F401  (fixture)
from vlmcls.cli import app
from vlmcls.methods import build_config, get_record
from vlmcls.methods.cupl import parse_cupl_sentence, question_requests
from vlmcls.demo.render import render_dataset
from vlmcls.errors import ConfigError, PromptError
from vlmcls.llm.prompts import load_prompt, parse_prompt

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / "vlmcls" / "data"
MODEL = f"local-dir:{DATA / 'demo_model'}"
CLASSES = "zorblax,quintor,flimber,vostrel,gleebis,yantrok"
FEW = "zorblax,gleebis"  # two classes that differ in three attributes
QUESTIONS = 5  # question variants in the shipped prompts/cupl.toml


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cupl")
    render_dataset(root / "test", CLASSES.split(","), 3, seed=9191)
    render_dataset(root / "support", CLASSES.split(","), 2, seed=9292)
    render_dataset(root / "few", FEW.split(","), 2, seed=9393)  # for the runs at the reference's 10 samples
    return root


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[│┃┌┐└┘─━┬┴├┤┼]", " ", text).split())


def _classify(images, tmp_path, server, *extra):
    out = tmp_path / "out.jsonl"
    args = ["classify", str(images / "few"), "--classes", FEW, "--model", MODEL, "-o", str(out), "--method", "cupl",
            "--llm", f"base_url={server.base_url}", "--llm", "model=fake-model", *map(str, extra)]
    result = runner.invoke(app, args, catch_exceptions=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result, rows


@pytest.mark.parametrize("answer, sentence", [
    ("A zorblax is round and red.", "A zorblax is round and red."),
    ("A zorblax is round. It is also red.", "A zorblax is round."),
    ("  - a red circle with stripes", "a red circle with stripes."),
    ('"A red striped circle."', "A red striped circle."),
    ("Caption: a photo of a zorblax on a table.", "a photo of a zorblax on a table."),
    ("**A zorblax** has 3.5 stripes.\nSecond line.", "A zorblax has 3.5 stripes."),
    ("", None),
    ("   \n  ", None),
    ("ok", None),
    ("x" * 400, None),
])
def test_an_answer_gives_its_first_sentence(answer, sentence):
    assert parse_cupl_sentence(answer) == sentence


def test_each_question_variant_is_asked_on_its_own_with_the_shared_context():
    requests = question_requests(["zorblax", "quintor"], load_prompt("cupl"), "a kind of shape")
    assert len(requests) == 2 * QUESTIONS
    first = requests[("zorblax", 0)]
    assert [m["role"] for m in first] == ["system", "user"]
    assert "zorblax (a kind of shape)" in first[-1]["content"]
    assert len({tuple(m["content"] for m in r) for r in requests.values()}) == 2 * QUESTIONS


def test_a_prompt_file_that_cannot_name_the_class_fails_before_any_call(tmp_path):
    bad = parse_prompt('[[messages]]\nrole = "user"\ncontent = "Describe a {thing}."\n[placeholders.thing]\n')
    with pytest.raises(PromptError, match="class_name"):
        question_requests(["zorblax"], bad)
    with pytest.raises(ConfigError, match="cupl.samples is 'many'; it must be an integer"):
        build_config(get_record("cupl"), {"samples": "many"})
    with pytest.raises(ConfigError, match="cupl.samples must be ≥ 1"):
        build_config(get_record("cupl"), {"samples": 0})
    with pytest.raises(ConfigError, match="cupl.temperature must be ≤ 2"):
        build_config(get_record("cupl"), {"temperature": "3"})


def test_cupl_asks_every_question_ten_times_then_never_again(demo_images, tmp_path, llm_server):
    result, rows = _classify(demo_images, tmp_path, llm_server)
    assert result.exit_code == 0, result.output
    classes = len(FEW.split(","))
    calls = llm_server.chat_requests
    assert len(calls) == classes * QUESTIONS * 10  # the reference's 10 samples per question
    assert {r.body["temperature"] for r in calls} == {0.99} and {r.body["max_tokens"] for r in calls} == {50}
    assert len({(json.dumps(r.body["messages"]), r.body["seed"]) for r in calls}) == len(calls)  # all distinct
    accuracy = sum(r["label"] == r["true_label"] for r in rows) / len(rows)
    assert accuracy == 1.0  # the invented names mean nothing: the sentences' attributes tell the two apart
    again, rows2 = _classify(demo_images, tmp_path, llm_server)
    assert again.exit_code == 0 and len(llm_server.chat_requests) == len(calls)  # cached: zero new calls
    assert [r["top_k"] for r in rows2] == [r["top_k"] for r in rows]


def test_dry_run_counts_the_calls_and_makes_none(demo_images, tmp_path, llm_server):
    result, rows = _classify(demo_images, tmp_path, llm_server, "--dry-run")
    assert result.exit_code == 0, result.output
    assert llm_server.chat_requests == [] and rows == []
    assert f"LLM calls {2 * QUESTIONS * 10}" in _plain(result.output)
    assert "completion tokens (at most) ~5,000" in _plain(result.output)  # 100 calls × 50 tokens


def test_a_class_whose_every_answer_fails_falls_back_with_a_row(demo_images, tmp_path, llm_server):
    llm_server.fault_for("gleebis", ["empty"] * (QUESTIONS * 10))
    result, rows = _classify(demo_images, tmp_path, llm_server)
    assert result.exit_code == 1  # finished, but one class has no sentences of its own
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    warnings = [json.loads(x) for x in (tmp_path / "out.warnings.jsonl").read_text().splitlines()]
    assert [(w["item"], w["stage"]) for w in warnings] == [("gleebis", "cupl")]
    assert "a photo of a gleebis." in warnings[0]["message"]


def test_eval_compares_cupl_with_templates_cbd_and_a_refiner(demo_images, tmp_path, llm_server):
    out = tmp_path / "eval.json"
    args = ["eval", str(demo_images / "test"), "--classes", CLASSES, "--model", MODEL, "-o", str(out),
            "--methods", "templates,cbd,cupl,cupl+tip", "--support", str(demo_images / "support"),
            "--opt", "cupl.samples=2", "--llm", f"base_url={llm_server.base_url}", "--llm", "model=fake-model"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = {m["method"]: m for m in json.loads(out.read_text())["methods"]}
    top1 = {name: run["metrics"]["top1"] for name, run in runs.items()}
    assert top1["cupl"] > top1["templates"] + 0.3  # invented names: only the sentences carry the attributes
    assert top1["cupl+tip"] >= top1["cupl"]
    assert runs["cupl"]["llm_calls"] == 6 * QUESTIONS * 2
    assert runs["cupl+tip"]["llm_calls"] == 0  # the same sentences, from the cache


def test_a_sentence_file_needs_no_llm(demo_images, tmp_path):
    sentences = tmp_path / "cupl.json"
    sentences.write_text(json.dumps({"zorblax": ["A zorblax is a large red striped circle."]}))
    out = tmp_path / "eval.json"
    args = ["eval", str(demo_images / "test"), "--classes", CLASSES, "--model", MODEL, "-o", str(out),
            "--methods", "cupl", "--opt", f"cupl.file={sentences}", "--llm", "base_url=http://127.0.0.1:9"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = json.loads(out.read_text())["methods"][0]
    assert run["llm_calls"] == 0 and run["info"]["texts"] == 6  # one sentence per class (five fell back)
    assert {w["item"] for w in run["warnings"]} == set(CLASSES.split(",")) - {"zorblax"}
    hybrid = runner.invoke(app, [*args, "--opt", "cupl.with_templates=true", "--opt", "cupl.templates=small"],
                           catch_exceptions=False)
    assert hybrid.exit_code == 0, hybrid.output
    assert json.loads(out.read_text())["methods"][0]["info"]["texts"] == 6 + 6 * 7  # plus the 7 templates each
