"""`vlmcls describe --classes F --output descriptors.json`: generate class descriptors alone (no images, no model)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..encode.store import Store
from ..errors import ConfigError
from ..llm.client import CallEstimate, LLMClient, LLMConfig, Usage
from ..methods import DEFAULT_DESCRIBER
from ._app import App
from ._options import CACHE_OPTION, cache_folder, option_group
from ._preflight import check_outputs
from ._render import EXIT_INPUT_ERRORS, console, console_err, handle_errors, key_value_table, safe
from ._settings import with_opt
from .prompts_cmd import PROMPTS_DIR_OPTION

__all__ = [
    "app",
    "register",
    "describe",
    "with_llm_options",
    "LLMSettings",
    "render_usage",
    "render_estimate",
    "render_error_rows",
    "DRY_RUN_OPTION",
    "DOMAIN_HINT_OPTION",
]

DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="Only say how many LLM calls and about how many tokens this would spend.")
DOMAIN_HINT_OPTION = typer.Option(None, "--domain-hint", help="What every class is, e.g. 'a kind of bird' (sent in the prompt).")

app = App(help="Generate class descriptors with the LLM (or WaffleCLIP's random ones) into a JSON file.")


# --llm KEY=VALUE: the endpoint's settings, by key -> (LLMConfig field, type); refresh is the client's own
LLM_KEYS = {"model": ("model", str), "base_url": ("base_url", None), "api_key_env": ("api_key_env", str),
            "timeout": ("timeout_s", float), "retries": ("max_retries", int), "concurrency": ("max_concurrency", int),
            "seed": ("seed", int), "refresh": (None, bool)}
LLM_MODEL_ENV = "VLMCLS_LLM_MODEL"
LLM_OPTION = typer.Option(
    None, "--llm", help="KEY=VALUE for the LLM endpoint (repeatable): model=NAME (the chat model; default "
    f"${LLM_MODEL_ENV}, else {LLMConfig.model}), base_url=URL (an OpenAI-compatible endpoint, e.g. "
    "http://localhost:11434/v1; default $OPENAI_BASE_URL, else OpenAI), refresh=true (ask again instead of reusing "
    "cached answers), api_key_env=NAME (the variable holding the key, never the key; default OPENAI_API_KEY), "
    "timeout=SECONDS (60), retries=N (4), concurrency=N (8), seed=N (0).",
    rich_help_panel="LLM")


@dataclass(frozen=True)
class LLMSettings:
    """The endpoint (``config``) and whether to ask again instead of reading cached answers (``refresh``)."""

    config: LLMConfig
    refresh: bool = False

    def client(self, store: Store | None) -> LLMClient:
        return LLMClient(self.config, store, refresh=self.refresh)


def _llm_settings(llm: list[str] | None) -> LLMSettings:
    from ._options import key_values

    given = key_values(llm, "--llm", {key: kind for key, (_, kind) in LLM_KEYS.items()})
    refresh = given.pop("refresh", False)
    fields = {LLM_KEYS[k][0]: v for k, v in given.items()}
    fields.setdefault("model", os.environ.get(LLM_MODEL_ENV) or LLMConfig.model)
    return LLMSettings(LLMConfig(**fields), refresh)


# The LLM flag (--llm KEY=VALUE), handed to a command as one ``llm_settings``.
with_llm_options = option_group("llm_settings", (("llm", Optional[List[str]], LLM_OPTION),), _llm_settings)


def render_estimate(estimate: CallEstimate, what: str) -> None:
    """The --dry-run report: calls and approximate tokens (characters / 4), on stdout."""
    console.print(key_value_table(f"dry run: {what}", {
        "requests": estimate.requests,
        "already cached": estimate.cached,
        "LLM calls": estimate.to_call,
        "prompt tokens (approx.)": f"~{estimate.approx_prompt_tokens:,}",
        "completion tokens (at most)": f"~{estimate.approx_completion_tokens:,}",
        "note": "tokens estimated as characters / 4; bad answers re-asked once would add calls",
    }))


def render_usage(usage: Usage, title: str = "LLM usage") -> None:
    """The run summary's LLM lines, on stderr."""
    console_err.print(key_value_table(title, {
        "calls": usage.calls,
        "cached answers": usage.cached,
        "failed requests": usage.failed,
        "prompt tokens": f"{usage.prompt_tokens:,}",
        "completion tokens": f"{usage.completion_tokens:,}",
        "total tokens": f"{usage.total_tokens:,}",
    }))


def render_error_rows(rows: list, title: str = "fell back") -> None:
    """Error and warning rows as a table on stderr."""
    if not rows:
        return
    table = Table(title=f"{title} ({len(rows)})", title_justify="left")
    for column in ("item", "stage", "severity", "message"):
        table.add_column(column, overflow="fold")
    for row in rows:
        colour = "red" if row.severity == "error" else "yellow"
        table.add_row(safe(row.item), safe(row.stage), f"[{colour}]{safe(row.severity)}[/{colour}]", safe(row.message))
    console_err.print(table)


@app.callback(invoke_without_command=True)
@handle_errors
@with_llm_options
@with_opt
def describe(
    classes: str = typer.Option(..., "--classes", "-c", help="A file with one class per line, or a comma-separated list."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the descriptors here (.json); default: print them."),
    method: str = typer.Option(DEFAULT_DESCRIBER, "--method", help="cbd (ask the LLM) or waffle (random words and characters, no LLM)."),
    domain_hint: Optional[str] = DOMAIN_HINT_OPTION,
    prompts: Optional[Path] = PROMPTS_DIR_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    cache: Optional[str] = CACHE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary tables."),
    llm_settings: LLMSettings = None,  # from --llm KEY=VALUE (with_llm_options)
    method_options: dict = None,  # from --opt METHOD.KEY=VALUE (with_opt)
) -> None:
    """Descriptors for every class, matched by name; exit code 1 when some classes fell back to their name."""
    from ..api import load_classes  # the one class-list reader; imported here to keep `--help` fast
    from ..llm.descriptors import estimate_descriptors
    from ..methods import METHODS, MethodOptions, file_options
    from ..llm.prompts import load_prompt

    options = MethodOptions(methods=method_options)
    output = check_outputs({"--output": (output, (".json",), "descriptor files are .json")},
                           [classes, *(path for _, _, path in file_options(options.given()))])["--output"]
    record = METHODS.get(method)
    if record is None or record.describe is None:
        valid = ", ".join(name for name, r in METHODS.items() if r.describe is not None)
        raise ConfigError(f"method '{method}' cannot be generated here; use {valid}.")
    class_names = load_classes(classes, minimum=1)  # describing one class is fine; classifying needs two
    config = options.config(method)

    if not record.asks_llm(config):
        descriptors, rows, usage = record.describe(class_names, config, None, prompts, domain_hint)
    else:
        cache_dir, cached = cache_folder(cache)
        with (Store(cache_dir) if cached else contextlib.nullcontext()) as store, llm_settings.client(store) as client:
            if dry_run:
                prompt = load_prompt("descriptors", prompts, getattr(config, "prompt_file", None))
                render_estimate(estimate_descriptors(class_names, client, prompt, domain_hint),
                                f"{len(class_names)} classes, {llm_settings.config.model} at {client.base_url}")
                return
            descriptors, rows, usage = record.describe(class_names, config, client, prompts, domain_hint)

    if output is not None:
        descriptors.to_json(output)
    else:
        typer.echo(json.dumps(descriptors.to_dict(), indent=2, ensure_ascii=False))
    if not quiet:
        summary = {"classes": len(class_names), "described": len(class_names) - len(rows), "fell back to the name": len(rows)}
        if output is not None:
            summary["written to"] = str(output)
        console_err.print(key_value_table(f"descriptors ({method})", summary))
        if usage is not None:
            render_usage(usage)
    render_error_rows(rows)
    if rows:
        raise typer.Exit(EXIT_INPUT_ERRORS)


def register(root: typer.Typer) -> None:
    """Add `describe` to the root app as a plain command."""
    root.command("describe", help="Generate class descriptors with the LLM (or WaffleCLIP's random ones) into a JSON file.")(
        describe
    )
