"""Method options on the command line, declared once for every command that runs methods (classify, eval, audit).

``--opt METHOD.KEY=VALUE`` (``-O``, repeatable) sets any option of any method; a record may promote an option to a
flag of its own (``--descriptors`` is ``cbd.descriptors``). Both arrive as ``{method: {key: text}}``, which
:class:`vlmcls.methods.MethodOptions` turns straight into each method's typed config: nothing in between, and every
error names the option (``fudd.k``). Flags that options had before they belonged to their method fail with one line
that gives the new spelling (see :class:`RetiredFlags`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import click
import typer

from ..methods import get_record, parse_option, promoted_flags, renamed_flags
from ..methods.registry import type_text
from ._options import option_group

__all__ = ["with_method_options", "with_opt", "retired_flag", "check_retired_flags"]

def _params() -> list[tuple[str, Any, Any]]:
    params: list[tuple[str, Any, Any]] = [
        ("opt", Optional[List[str]], typer.Option(
            None, "--opt", "-O", rich_help_panel="Methods",
            help="METHOD.KEY=VALUE: set a method's option (repeatable), e.g. --opt fudd.k=5 --opt tip.alpha=2. "
                 "`vlmcls methods NAME` lists them.")),
    ]
    for flag, (method, key, field) in promoted_flags().items():
        names = field.metadata["flag"].split("/")
        annotation = Optional[Path] if field.metadata.get("file") else Optional[str]
        if type_text(get_record(method), key) == "bool":  # an on/off option is a plain flag (--unknown)
            annotation = Optional[bool]
        params.append((f"promoted_{method}_{key}", annotation, typer.Option(
            None, *names, help=f"{field.metadata['doc']} (= --opt {method}.{key}=…)", rich_help_panel="Methods")))
    return params


def _given(opt: list[str] | None = None, **promoted: Any) -> dict[str, dict[str, Any]]:
    """{method: {key: value}}: the promoted flags given, then every --opt in order (a later one wins)."""
    methods: dict[str, dict[str, Any]] = {}
    for flag, (method, key, _field) in promoted_flags().items():
        value = promoted.get(f"promoted_{method}_{key}")
        if value is not None:
            methods.setdefault(method, {})[key] = value
    for item in opt or []:
        method, key, value = parse_option(item)
        methods.setdefault(method, {})[key] = value
    return methods


_method_options_group = option_group("method_options", _params(), _given)
_opt_group = option_group("method_options", _params()[:1], _given)


def with_opt(command: Any) -> Any:
    """``--opt`` alone (``describe``: no promoted flags), marked as running methods like the full group."""
    wrapped = _opt_group(command)
    wrapped.runs_methods = True
    return wrapped


def with_method_options(command: Any) -> Any:
    """Hands a command one argument ``method_options`` ({method: {key: value}} from --opt and the promoted flags)
    and marks it as running methods, so retired method flags fail with their new spelling."""
    wrapped = _method_options_group(command)
    wrapped.runs_methods = True
    return wrapped


# Command flags folded into KEY=VALUE groups so each command keeps a short list (the methods' own are in the registry)
CLI_RETIRED = {
    "--ray-address": "--ray address=…", "--ray-workers": "--ray workers=…", "--output-dir": "--ray output_dir=…",
    "--output-format": "--ray output_format=…", "--no-collect": "--ray collect=false",
    "--feature-store": "--ray feature_store=…",
    "--api-key-env": "--llm api_key_env=…", "--llm-timeout": "--llm timeout=…", "--llm-retries": "--llm retries=…",
    "--llm-concurrency": "--llm concurrency=…", "--llm-seed": "--llm seed=…",
    "--llm-model": "--llm model=…", "--base-url": "--llm base_url=…", "--refresh": "--llm refresh=true",
    "--workers": "--decode workers=…", "--worker-type": "--decode workers=TYPE[:N] (e.g. workers=process:4)",
    "--heic-thumbnails": "--decode heic_thumbnails=true",
    "--cache-dir": "--cache DIR", "--no-cache": "--cache off",
    "--split": "--dataset split=…", "--image-column": "--dataset image_column=…",
    "--label-column": "--dataset label_column=…",
    "--export-descriptors": "--export DIR (writes DIR/descriptors.json)",
    "--export-pairs": "--export DIR (writes DIR/pairs.json)",
}


def retired_flag(args: list[str], own: set[str], methods: bool = True) -> tuple[str, str] | None:
    """The first retired flag in ``args`` that is not one of the command's ``own`` options, with how to write it
    now; None when there is none. ``methods``: the command runs methods (their old flags count too); one that does
    not only hears of the flags whose new spelling it takes (`cache info --cache-dir`)."""
    renamed = {**CLI_RETIRED, **renamed_flags()} if methods else {
        old: new for old, new in CLI_RETIRED.items() if new.split()[0] in own}
    for arg in args:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag in renamed and flag not in own:
            return flag, renamed[flag]
    return None


def check_retired_flags(ctx: click.Context, args: list[str], methods: bool = True) -> None:
    """Fail with one line (exit 2) when a command is given a flag that became an option or a KEY=VALUE key."""
    own = {name for param in ctx.command.params for name in (*param.opts, *param.secondary_opts)}
    found = retired_flag(args, own, methods)
    if found is not None:
        from ._render import EXIT_USAGE, print_error

        print_error(f"{found[0]} is now {found[1]}")
        ctx.exit(EXIT_USAGE)
