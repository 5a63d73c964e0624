"""The command-line surface: how many options each command shows, and the KEY=VALUE groups that keep it short
(--dataset, --decode, --cache, --llm): their keys, their defaults, and the one-line errors of the flags they took in."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from vlmcls.cli import app
from vlmcls.cli._options import ModelOptions
from vlmcls.cli.describe_cmd import _llm_settings
from vlmcls.errors import ConfigError

# The hard limits: a command's --help fits on a screen only while its list stays this short.
MOST_OPTIONS = {"classify": 35, "eval": 30}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shown_options(name: str) -> list[str]:
    """Every option the command's --help lists (--help included, hidden ones not), read from its click params."""
    command = typer.main.get_command(app).commands[name]
    return [p.opts[0] for p in command.get_params(command.context_class(command))
            if p.param_type_name == "option" and not p.hidden]


@pytest.mark.parametrize("name", sorted(MOST_OPTIONS))
def test_the_main_commands_keep_their_option_lists_short(name):
    shown = _shown_options(name)
    assert len(shown) <= MOST_OPTIONS[name], (len(shown), shown)
    assert {"--dataset", "--decode", "--cache", "--llm"} <= set(shown)


@pytest.mark.parametrize("args, message", [
    (["--llm-model=x"], "--llm-model is now --llm model=…"),
    (["--refresh"], "--refresh is now --llm refresh=true"),
    (["--workers", "4"], "--workers is now --decode workers=…"),
    (["--heic-thumbnails"], "--heic-thumbnails is now --decode heic_thumbnails=true"),
    (["--cache-dir", "c"], "--cache-dir is now --cache DIR"),
    (["--no-cache"], "--no-cache is now --cache off"),
    (["--split", "test"], "--split is now --dataset split=…"),
    (["--image-column", "img"], "--image-column is now --dataset image_column=…"),
    (["--label-column", "y"], "--label-column is now --dataset label_column=…"),
    (["--unknown-recall", "0.9"], "--unknown-recall is now --opt unknown.recall=…"),
    (["--decode", "wrokers=2"], "Did you mean 'workers'? Valid: workers, heic_thumbnails."),
    (["--decode", "heic_thumbnails=maybe"], "--decode heic_thumbnails is 'maybe'; it must be bool."),
    (["--llm", "modle=x"], "Did you mean 'model'?"),
    (["--llm", "refresh=sometimes"], "--llm refresh is 'sometimes'; it must be bool."),
])
@pytest.mark.parametrize("command", ["classify", "eval"])
def test_a_folded_flag_fails_in_one_line_with_its_new_spelling(command, args, message, tmp_path):
    """(classify's --base-url and --dataset spilt=x are in test_run_layer, with the older retired flags.)"""
    missing = [command, str(tmp_path), "--classes", "a,b", "--model", f"local-dir:{tmp_path / 'nope'}"]
    result = CliRunner().invoke(app, [*missing, *args])
    assert result.exit_code == 2, result.output
    assert message in _one_line(result.output) and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["cache", "info", "--cache-dir", "c"], ["cache", "clear", "-y", "--cache-dir", "c"],
                                  ["describe", "-c", "a", "--cache-dir", "c"], ["review", "r.jsonl", "--cache-dir", "c"],
                                  ["audit", "d", "-c", "a,b", "--cache-dir", "c"]])
def test_every_command_that_names_a_cache_spells_it_cache(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--cache-dir is now --cache DIR" in _one_line(result.output)


def test_cache_off_is_refused_where_a_cache_is_the_point(tmp_path):
    result = CliRunner().invoke(app, ["cache", "info", "--cache", "off"])
    assert result.exit_code == 2 and "give --cache DIR, not off" in _one_line(result.output)


def test_a_folded_flag_stays_unknown_where_its_new_spelling_is_not_taken():
    """sort has no --cache: --cache-dir is simply not one of its options (no hint at a flag it does not take)."""
    result = CliRunner().invoke(app, ["sort", "p.jsonl", "--cache-dir", "c"])
    assert result.exit_code == 2 and "is now" not in result.output


def test_decode_and_cache_fill_the_model_options():
    options = ModelOptions.from_flags("m", "cpu", "fp32", 8, ["workers=process:4", "heic_thumbnails=true"], "off")
    assert options.decoding() == (4, "process") and options.heic_thumbnails
    assert options.no_cache and options.cache_dir is None
    plain = ModelOptions.from_flags("m", "cpu", "fp32", 8, None, "somewhere")
    assert plain.decoding() == (None, "auto") and not plain.heic_thumbnails
    assert not plain.no_cache and plain.cache_dir == "somewhere"
    with pytest.raises(ConfigError, match=r"--decode workers='lots' is not N, thread\[:N\] or process\[:N\]"):
        ModelOptions.from_flags("m", "cpu", "fp32", 8, ["workers=lots"], None).decoding()


def test_the_llm_group_reads_the_model_and_endpoint_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("VLMCLS_LLM_MODEL", "from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env-host:1/v1")
    default = _llm_settings(None)
    assert default.config.model == "from-env" and default.config.resolved_base_url() == "http://env-host:1/v1"
    assert not default.refresh
    given = _llm_settings(["model=given", "base_url=http://flag-host:2/v1", "refresh=true", "retries=1"])
    assert given.config.model == "given" and given.config.resolved_base_url() == "http://flag-host:2/v1"
    assert given.refresh and given.config.max_retries == 1
    monkeypatch.delenv("VLMCLS_LLM_MODEL")
    assert _llm_settings(None).config.model == "gpt-4o-mini"


def test_the_llm_help_names_its_environment_variables():
    result = CliRunner().invoke(app, ["describe", "--help"], env={"COLUMNS": "300"})
    text = _one_line(result.output)
    assert "$VLMCLS_LLM_MODEL" in text and "$OPENAI_BASE_URL" in text and "refresh=true" in text
