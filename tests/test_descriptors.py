"""Descriptors: parsing LLM answers, the CbD sentence rule, import/export by name, WaffleCLIP, and generation
against the local OpenAI-compatible server (faults, re-asks, fallbacks, cache)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from llm_server import FakeLLMServer, close_tracked_clients, llm_server, track  # noqa: F401  (fixtures)
from vlmcls.encode.store import Store
from vlmcls.cli import describe_cmd
from vlmcls.demo import world
from vlmcls.llm.descriptors import (
    DescriptorSet,
    cbd_sentence,
    estimate_descriptors,
    generate_descriptors,
    generate_pair_descriptions,
    parse_descriptor_list,
    parse_differential,
    waffle_descriptors,
)
from vlmcls.errors import ConfigError, PromptError
from vlmcls.llm.client import LLMClient, LLMConfig
from vlmcls.llm.prompts import load_prompt, packaged_prompts_dir

RED_ROUND = ["a red colour", "a round shape"]
DEMO = list(world.DEMO_CLASSES)


@pytest.fixture(autouse=True)
def _default_prompts(monkeypatch):
    monkeypatch.delenv("VLMCLS_PROMPTS", raising=False)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "cache") as s:
        yield s




def make_client(server: FakeLLMServer, store: Store, **overrides) -> LLMClient:
    settings = dict(model="fake-llm", base_url=server.base_url, timeout_s=2.0, max_retries=1,
                    backoff_base_s=0.01, max_concurrency=4)
    settings.update(overrides)
    return track(LLMClient(LLMConfig(**settings), store))


# -- parsing ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, expected",
    [
        ("- a red colour\n- a round shape", RED_ROUND),
        ("* a red colour\n* a round shape", RED_ROUND),
        ("• a red colour\n• a round shape", RED_ROUND),
        ("1. a red colour\n2. a round shape", RED_ROUND),
        ("1) a red colour\n2) a round shape", RED_ROUND),
        ('["a red colour", "a round shape"]', RED_ROUND),
        ('{"descriptors": ["a red colour", "a round shape"]}', RED_ROUND),
        ('{"zorblax": ["a red colour", "a round shape"]}', RED_ROUND),
        ('```json\n["a red colour", "a round shape"]\n```', RED_ROUND),
        ("```\n- a red colour\n- a round shape\n```", RED_ROUND),
        (" a red colour\n- a round shape", RED_ROUND),  # continues the "-" the prompt left open
        ("Here are the features:\n- a red colour\n- a round shape", RED_ROUND),  # preamble dropped
        ("- a red colour\nsome remark in between\n- a round shape", RED_ROUND),
        ("- **A red colour.**\n- a round shape;", RED_ROUND),
        ("- a red colour\n- A red  colour\n- a round shape\n- a round shape.", RED_ROUND),  # duplicates
        ("- a red colour\n-\n- a round shape", RED_ROUND),  # blank item
        ("- DNA-like pattern", ["DNA-like pattern"]),  # acronyms keep their case
        ("", []),
        ("   \n\n ", []),
        ("[]", []),
        ("I am sorry, but I cannot describe that.", []),
    ],
)
def test_parse_descriptor_list(answer, expected):
    assert parse_descriptor_list(answer) == expected


@pytest.mark.parametrize(
    "descriptor, sentence",
    [
        ("a red colour", "zorblax, which is a red colour"),
        ("an oval body", "zorblax, which is an oval body"),
        ("antennae", "zorblax, which is antennae"),  # the reference tests one letter, 'a'
        ("has four legs", "zorblax, which has four legs"),
        ("hasty movements", "zorblax, which hasty movements"),  # prefix test, as in the reference
        ("often found near water", "zorblax, which often found near water"),
        ("typically red", "zorblax, which typically red"),
        ("may have spots", "zorblax, which may have spots"),
        ("can be striped", "zorblax, which can be striped"),
        ("used for cutting", "zorblax, which is used for cutting"),
        ("red feathers", "zorblax, which has red feathers"),
        ("A red colour", "zorblax, which has A red colour"),  # case-sensitive, as in the reference
    ],
)
def test_cbd_sentence(descriptor, sentence):
    assert cbd_sentence("zorblax", descriptor) == sentence


PAIR_JSON = [
    {"attr_type": "pattern", "a": "a photo of a zorblax, which is striped.", "b": "a photo of a quintor, which is dotted."}
]
EXPECTED_PAIR = [
    {"attr_type": "pattern", "prompt_pair": ["a photo of a zorblax, which is striped.", "a photo of a quintor, which is dotted."]}
]


@pytest.mark.parametrize(
    "answer, expected",
    [
        (json.dumps(PAIR_JSON), EXPECTED_PAIR),
        ("```json\n" + json.dumps(PAIR_JSON, indent=2) + "\n```", EXPECTED_PAIR),
        ("Sure! Here you go:\n" + json.dumps(PAIR_JSON) + "\nHope this helps.", EXPECTED_PAIR),
        (json.dumps({"differences": PAIR_JSON}), EXPECTED_PAIR),
        (json.dumps([{"attribute": "pattern", "zorblax": PAIR_JSON[0]["a"], "quintor": PAIR_JSON[0]["b"]}]), EXPECTED_PAIR),
        (json.dumps(PAIR_JSON + PAIR_JSON), EXPECTED_PAIR),  # duplicates
        (json.dumps([{"attr_type": "size", "a": "a photo of a zorblax."}]), []),  # one caption only
        (json.dumps([{"attr_type": "size", "a": "same", "b": "same"}]), []),  # tells nothing apart
        ("The zorblax is striped and the quintor is dotted.", []),
        ("", []),
    ],
)
def test_parse_differential(answer, expected):
    assert parse_differential(answer, "zorblax", "quintor") == expected


# -- the descriptor set -----------------------------------------------------------------------------------------
def test_import_export_round_trip_matches_by_name_not_position(tmp_path):
    path = tmp_path / "descriptors.json"
    path.write_text(json.dumps({"quintor": ["a dotted surface pattern"], "zorblax": ["a striped surface pattern"]}))
    loaded = DescriptorSet.from_json(path)
    selected, rows = loaded.for_classes(["zorblax", "quintor"])
    assert rows == []
    assert list(selected) == ["zorblax", "quintor"]
    assert selected["zorblax"] == ["a striped surface pattern"]
    assert selected["quintor"] == ["a dotted surface pattern"]

    out = selected.to_json(tmp_path / "out" / "again.json")
    assert DescriptorSet.from_json(out).to_dict() == {
        "zorblax": ["a striped surface pattern"], "quintor": ["a dotted surface pattern"]
    }


def test_for_classes_falls_back_to_the_name_and_reports_missing_classes(caplog):
    descriptors = DescriptorSet({"zorblax": ["a red colour"], "quintor": [], "stranger": ["x"]})
    selected, rows = descriptors.for_classes(["zorblax", "quintor", "flimber"])
    assert selected.to_dict() == {"zorblax": ["a red colour"], "quintor": ["quintor"], "flimber": ["flimber"]}
    assert [(r.item, r.severity) for r in rows] == [("flimber", "warning")]
    assert "stranger" in caplog.text  # unknown extra keys are ignored, with a warning
    assert selected.sentences("zorblax") == ["zorblax, which is a red colour"]
    assert selected.sentences("quintor") == ["quintor"]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[1, 2]", "expected an object"),
        ('{"zorblax": "a red colour"}', "not a list of strings"),
        ('{"zorblax": ["a", ', "not valid JSON"),
    ],
)
def test_bad_descriptor_files_are_config_errors(tmp_path, content, fragment):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        DescriptorSet.from_json(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_waffle_descriptors_are_shared_random_and_reproducible():
    names = ["zorblax", "quintor", "flimber"]
    waffle = DescriptorSet.waffle(names, n_pairs=15, seed=3)
    assert all(len(waffle[n]) == 30 for n in names)
    assert waffle["zorblax"] == waffle["quintor"] == waffle["flimber"]
    assert waffle_descriptors(15, seed=3, class_names=names) == waffle["zorblax"]
    assert waffle_descriptors(15, seed=4, class_names=names) != waffle["zorblax"]
    words, noise = waffle["zorblax"][0::2], waffle["zorblax"][1::2]
    assert all(len(w) <= 7 and w.isalpha() for w in words)  # cut to the average class-name word length
    assert all(len(n) == 7 and n.isalnum() for n in noise)
    two_word = waffle_descriptors(2, seed=0, class_names=["red fox", "grey wolf"])
    assert len(two_word[0].split()) == 2 and ", " in two_word[1]


# -- generation against the local server ------------------------------------------------------------------------
def test_generates_demo_descriptors_and_rerun_makes_zero_calls(llm_server, store):
    prompt = load_prompt("descriptors")
    descriptors, rows, usage = generate_descriptors(DEMO, make_client(llm_server, store), prompt)
    assert rows == []
    assert descriptors.to_dict() == {name: world.generic_descriptors(name) for name in DEMO}
    assert usage.calls == len(DEMO) and usage.cached == 0 and usage.prompt_tokens > 0
    assert len(llm_server.chat_requests) == len(DEMO)

    again, rows, usage = generate_descriptors(DEMO, make_client(llm_server, store), prompt)
    assert again.to_dict() == descriptors.to_dict() and rows == []
    assert usage.calls == 0 and usage.cached == len(DEMO) and usage.total_tokens == 0
    assert len(llm_server.chat_requests) == len(DEMO)


@pytest.mark.parametrize("first_fault", ["malformed", "empty", "emptylist"])
def test_unusable_answer_is_asked_once_more(llm_server, store, first_fault):
    llm_server.fault_for("zorblax", [first_fault])
    descriptors, rows, _ = generate_descriptors(["zorblax", "quintor"], make_client(llm_server, store),
                                                load_prompt("descriptors"))
    assert rows == []
    assert descriptors["zorblax"] == world.generic_descriptors("zorblax")
    assert len(llm_server.requests_about("zorblax")) == 2
    generate_descriptors(["zorblax", "quintor"], make_client(llm_server, store), load_prompt("descriptors"))
    assert len(llm_server.chat_requests) == 3  # both answers were cached: the re-run replays them


def test_twice_unusable_answer_falls_back_to_the_name_with_a_warning(llm_server, store):
    llm_server.fault_for("zorblax", ["malformed", "empty"])
    descriptors, rows, _ = generate_descriptors(["zorblax", "quintor"], make_client(llm_server, store),
                                                load_prompt("descriptors"))
    assert descriptors["zorblax"] == ["zorblax"]
    assert descriptors["quintor"] == world.generic_descriptors("quintor")
    assert [(r.item, r.stage, r.severity) for r in rows] == [("zorblax", "descriptors", "warning")]
    assert "class name alone" in rows[0].message
    assert len(llm_server.requests_about("zorblax")) == 2  # asked once more, not forever


def test_timeouts_become_an_error_row_while_the_other_classes_finish(llm_server, store):
    llm_server.fault_for("zorblax", ["slow:5", "slow:5"])
    client = make_client(llm_server, store, timeout_s=0.3, max_retries=1)
    descriptors, rows, usage = generate_descriptors(DEMO, client, load_prompt("descriptors"))
    assert [(r.item, r.severity) for r in rows] == [("zorblax", "error")]
    assert "no answer within 0.3 s" in rows[0].message
    assert descriptors["zorblax"] == ["zorblax"]
    assert all(descriptors[n] == world.generic_descriptors(n) for n in DEMO if n != "zorblax")
    assert usage.failed == 1 and usage.calls == len(DEMO) - 1

    before = len(llm_server.chat_requests)
    again, rows, usage = generate_descriptors(DEMO, make_client(llm_server, store), load_prompt("descriptors"))
    assert rows == [] and again["zorblax"] == world.generic_descriptors("zorblax")
    assert len(llm_server.chat_requests) == before + 1 and usage.cached == len(DEMO) - 1


def test_editing_the_prompt_file_changes_the_key_and_the_answers(llm_server, store, tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    shutil.copy(packaged_prompts_dir() / "descriptors.toml", folder / "descriptors.toml")
    names = ["zorblax", "quintor"]
    first, _, _ = generate_descriptors(names, make_client(llm_server, store), load_prompt("descriptors", folder))
    assert len(llm_server.chat_requests) == 2

    path = folder / "descriptors.toml"
    path.write_text(path.read_text().replace("short phrases", "very short phrases"))
    llm_server.answer_for("zorblax", "- a glowing outline")
    edited, _, usage = generate_descriptors(names, make_client(llm_server, store), load_prompt("descriptors", folder))
    assert usage.calls == 2 and len(llm_server.chat_requests) == 4
    assert "very short phrases" in llm_server.chat_requests[-1].body["messages"][0]["content"]
    assert edited["zorblax"] == ["a glowing outline"] != first["zorblax"]


def test_domain_hint_reaches_the_llm_and_is_part_of_the_key(llm_server, store):
    prompt = load_prompt("descriptors")
    generate_descriptors(["zorblax"], make_client(llm_server, store), prompt)
    generate_descriptors(["zorblax"], make_client(llm_server, store), prompt, domain_hint="a kind of gizmo")
    assert len(llm_server.chat_requests) == 2
    assert "zorblax (a kind of gizmo) in a photo" in llm_server.chat_requests[-1].last_user_message


def test_a_prompt_for_another_step_fails_before_any_call(llm_server, store):
    with pytest.raises(PromptError, match="class_name"):
        generate_descriptors(["zorblax"], make_client(llm_server, store), load_prompt("differential"))
    assert llm_server.chat_requests == []


def test_estimate_before_and_after_a_run(llm_server, store):
    client = make_client(llm_server, store)
    prompt = load_prompt("descriptors")
    before = estimate_descriptors(DEMO, client, prompt)
    assert before.to_call == len(DEMO) and before.approx_prompt_tokens > 0
    generate_descriptors(DEMO[:5], client, prompt)
    after = estimate_descriptors(DEMO, client, prompt)
    assert (after.cached, after.to_call) == (5, len(DEMO) - 5)
    assert len(llm_server.chat_requests) == 5


def test_pair_descriptions_in_fudd_format_and_order_independent(llm_server, store):
    prompt = load_prompt("differential")
    pairs = [(a, b) for a, b, _ in world.ONE_ATTRIBUTE_PAIRS]
    result, rows, usage = generate_pair_descriptions(pairs, make_client(llm_server, store), prompt)
    assert rows == [] and usage.calls == len(pairs)
    for a, b, attr_type in world.ONE_ATTRIBUTE_PAIRS:
        first, second = sorted((a, b))
        entry = result[f"{first}_{second}"]
        assert entry["classes"] == [first, second]
        expected = world.differential_descriptions(first, second)
        assert [(p["attr_type"], *p["prompt_pair"]) for p in entry["prompt_pairs"]] == expected
        assert entry["prompt_pairs"][0]["attr_type"] == attr_type

    swapped = [(b, a) for a, b in pairs]
    again, _, usage = generate_pair_descriptions(swapped, make_client(llm_server, store), prompt)
    assert again == result and usage.calls == 0


def test_unusable_pair_answer_leaves_the_pair_out_with_a_row(llm_server, store):
    llm_server.fault_for("zorblax", ["malformed", "malformed"])
    result, rows, _ = generate_pair_descriptions([("zorblax", "quintor"), ("flimber", "vostrel")],
                                                 make_client(llm_server, store), load_prompt("differential"))
    assert list(result) == ["flimber_vostrel"]
    assert [(r.item, r.stage, r.severity) for r in rows] == [("quintor | zorblax", "differential", "warning")]


# -- `vlmcls describe` ------------------------------------------------------------------------------------------
runner = CliRunner()


def test_describe_command_writes_the_file_and_reports(llm_server, tmp_path):
    out = tmp_path / "descriptors.json"
    args = ["--classes", "zorblax,quintor", "--llm", f"base_url={llm_server.base_url}", "--llm", "model=fake-llm",
            "--cache", str(tmp_path / "cache")]
    dry = runner.invoke(describe_cmd.app, args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "LLM calls" in dry.output and llm_server.chat_requests == []

    result = runner.invoke(describe_cmd.app, args + ["--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {n: world.generic_descriptors(n) for n in ["zorblax", "quintor"]}

    llm_server.fault_for("flimber", ["malformed", "malformed"])
    partial = runner.invoke(describe_cmd.app, args[:1] + ["zorblax,flimber"] + args[2:] + ["--output", str(out)])
    assert partial.exit_code == 1  # finished, but a class fell back: the exit code says so
    assert "fell back (1)" in partial.output and "flimber" in partial.output and "warning" in partial.output
    assert json.loads(out.read_text())["flimber"] == ["flimber"]
    assert len(llm_server.chat_requests) == 4  # zorblax came from the cache


def test_describe_waffle_needs_no_llm(tmp_path):
    out = tmp_path / "waffle.json"
    result = runner.invoke(describe_cmd.app, ["--classes", "zorblax,quintor", "--method", "waffle",
                                              "--opt", "waffle.pairs=3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["zorblax"]) == 6 and data["zorblax"] == data["quintor"]
