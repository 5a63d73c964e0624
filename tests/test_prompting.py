"""Prompt files: the shipped defaults, validation errors a user would see, overrides, and `vlmcls prompts`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmcls.cli import prompts_cmd
from vlmcls.errors import PromptError
from vlmcls.llm.prompts import (
    checkout_prompts_dir,
    find_prompt,
    list_prompts,
    load_prompt,
    packaged_prompts_dir,
    parse_prompt,
)

REPO = Path(__file__).resolve().parents[1]

MINIMAL = textwrap.dedent(
    """
    name = "descriptors"
    [placeholders.class_name]
    description = "the class"
    [[messages]]
    role = "user"
    content = "Describe a {class_name}."
    """
)


def write_prompt(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_packaged_prompts_are_identical_to_the_checkout_copies():
    checkout = sorted(p.name for p in (REPO / "prompts").glob("*.toml"))
    packaged = sorted(p.name for p in packaged_prompts_dir().glob("*.toml"))
    assert checkout == packaged == ["cupl.toml", "descriptors.toml", "differential.toml", "negatives.toml"]
    for name in checkout:
        assert (REPO / "prompts" / name).read_bytes() == (packaged_prompts_dir() / name).read_bytes(), name


def test_default_descriptor_prompt_follows_the_cbd_shape():
    prompt = load_prompt("descriptors")
    assert prompt.required == ["class_name"] and prompt.optional == ["domain_hint"]
    messages = prompt.render(class_name="zorblax")
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]  # two worked examples
    for example in (messages[2], messages[4]):
        assert all(line.startswith("- ") for line in example["content"].splitlines())
    question = messages[-1]["content"]
    assert "distinguishing a zorblax in a photo?" in question
    assert question.rstrip().endswith("-")  # the answer is left open after "-"
    assert "{" not in question


def test_domain_hint_is_written_only_when_given():
    prompt = load_prompt("descriptors")
    with_hint = prompt.render(class_name="zorblax", domain_hint="a kind of gizmo")[-1]["content"]
    without = prompt.render(class_name="zorblax", domain_hint=None)[-1]["content"]
    assert "zorblax (a kind of gizmo) in a photo" in with_hint
    assert "gizmo" not in without and "()" not in without


def test_differential_prompt_keeps_its_json_example_literal():
    prompt = load_prompt("differential")
    messages = prompt.render(class_a="zorblax", class_b="quintor")
    assert '"attr_type"' in messages[2]["content"]  # braces of the JSON example survive rendering
    assert "tell a zorblax from a quintor" in messages[-1]["content"]


@pytest.mark.parametrize(
    "content, complaint, named",
    [
        ("Describe a {clas_name}.", "undeclared placeholders", ["'clas_name'", "'class_name'"]),
        ("Describe something.", "never uses", ["'class_name'"]),
    ],
)
def test_placeholder_mismatch_names_the_culprit_and_the_valid_ones(content, complaint, named):
    text = MINIMAL.replace("Describe a {class_name}.", content)
    with pytest.raises(PromptError) as info:
        parse_prompt(text, source="my.toml")
    message = str(info.value)
    assert complaint in message and "my.toml" in message
    for name in named:
        assert name in message


def test_render_lists_missing_and_unknown_values():
    prompt = parse_prompt(MINIMAL)
    with pytest.raises(PromptError) as info:
        prompt.render(klass="x")
    message = str(info.value)
    assert "no value for 'class_name'" in message and "'klass'" in message and "Valid placeholders" in message


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name = 'x'\n[[messages]\nrole='user'", "not valid TOML"),
        ("name = 'x'", "no [[messages]]"),
        ("[[messages]]\nrole = 'robot'\ncontent = 'hi'", "role 'robot'"),
        ("[[messages]]\nrole = 'user'\ncontent = ''", "empty"),
        ("[[messages]]\nrole = 'user'\ncontent = 'q'\n[[messages]]\nrole = 'assistant'\ncontent = 'a'", "last message"),
        ("temperature = 1\n[[messages]]\nrole = 'user'\ncontent = 'q'", "unknown top-level keys 'temperature'"),
        ("[placeholders.x]\ndefault = ''\nformat = 'no value here'\n[[messages]]\nrole = 'user'\ncontent = '{x}'", "{value}"),
    ],
)
def test_malformed_files_are_rejected_with_a_reason(text, fragment):
    with pytest.raises(PromptError, match=None) as info:
        parse_prompt(text, source="bad.toml")
    assert fragment in str(info.value)


def test_prompt_folder_overrides_by_name_and_falls_back_for_the_rest(tmp_path):
    folder = tmp_path / "my_prompts"
    write_prompt(folder, "descriptors", MINIMAL)
    assert find_prompt("descriptors", folder).origin == "override"
    assert load_prompt("descriptors", folder).render(class_name="gizmo") == [
        {"role": "user", "content": "Describe a gizmo."}
    ]
    fallback = find_prompt("differential", folder)
    assert fallback.origin in ("checkout", "package") and fallback.path.parent != folder
    names = {s.name: s.origin for s in list_prompts(folder)}
    assert names == {"descriptors": "override", "differential": fallback.origin, "cupl": fallback.origin,
                     "negatives": fallback.origin}


def test_env_var_points_at_a_prompt_folder(tmp_path, monkeypatch):
    write_prompt(tmp_path, "descriptors", MINIMAL)
    monkeypatch.setenv("VLMCLS_PROMPTS", str(tmp_path))
    assert load_prompt("descriptors").path == tmp_path / "descriptors.toml"


def test_single_file_override_and_clear_errors_for_missing_things(tmp_path):
    path = write_prompt(tmp_path, "anything", MINIMAL)
    assert load_prompt("descriptors", prompt_file=path).path == path
    with pytest.raises(PromptError, match="does not exist"):
        load_prompt("descriptors", prompt_file=tmp_path / "nope.toml")
    with pytest.raises(PromptError, match="does not exist"):
        load_prompt("descriptors", tmp_path / "no_such_folder")
    with pytest.raises(PromptError) as info:
        load_prompt("descriptorz")
    assert "'descriptors'" in str(info.value) and "'differential'" in str(info.value)


def test_check_supports_rejects_a_prompt_written_for_another_step():
    differential = load_prompt("differential")
    with pytest.raises(PromptError) as info:
        differential.check_supports({"class_name", "domain_hint"}, {"class_name"})
    message = str(info.value)
    assert "does not use 'class_name'" in message and "'class_a'" in message


def test_the_checkout_copy_is_found_when_running_from_a_checkout():
    assert checkout_prompts_dir() == REPO / "prompts"
    assert find_prompt("descriptors").path == REPO / "prompts" / "descriptors.toml"


# -- the CLI ----------------------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_list_show_and_path(tmp_path):
    listed = runner.invoke(prompts_cmd.app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert "descriptors" in listed.output and "differential" in listed.output

    shown = runner.invoke(prompts_cmd.app, ["show", "descriptors"])
    assert shown.exit_code == 0
    assert (REPO / "prompts" / "descriptors.toml").read_text(encoding="utf-8").strip() in shown.output

    rendered = runner.invoke(prompts_cmd.app, ["show", "differential", "--set", "class_a=zorblax", "--set", "class_b=quintor"])
    assert rendered.exit_code == 0
    assert "tell a zorblax from a quintor" in rendered.output and "--- system ---" in rendered.output

    path = runner.invoke(prompts_cmd.app, ["path", "descriptors"])
    assert path.exit_code == 0 and path.output.strip() == str(REPO / "prompts" / "descriptors.toml")

    folder = tmp_path / "p"
    write_prompt(folder, "descriptors", MINIMAL)
    overridden = runner.invoke(prompts_cmd.app, ["path", "descriptors", "--prompts", str(folder)])
    assert overridden.output.strip() == str(folder / "descriptors.toml")


def test_cli_reports_a_broken_prompt_with_exit_code_2(tmp_path):
    folder = tmp_path / "p"
    write_prompt(folder, "descriptors", MINIMAL.replace("{class_name}", "{klass}"))
    result = runner.invoke(prompts_cmd.app, ["show", "descriptors", "--prompts", str(folder)])
    assert result.exit_code == 2
    missing = runner.invoke(prompts_cmd.app, ["show", "differential", "--set", "class_a=x"])
    assert missing.exit_code == 2
