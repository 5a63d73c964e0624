"""The method settings as flags, declared once from the registry's typed configs for every command that runs
methods (classify, eval): a field ``fudd_k`` is the flag ``--fudd-k`` with the help its config gives."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from ..methods import setting_fields
from ._options import option_group

__all__ = ["flag_of", "with_method_settings", "SETTING_NAMES"]


def flag_of(field: dataclasses.Field) -> str:
    """The field's long flag: its declared one, else --NAME with dashes."""
    declared = field.metadata.get("flag")
    return declared.split("/")[0] if declared else "--" + field.name.replace("_", "-")


def _annotation(field: dataclasses.Field, hint: Any) -> Any:
    """The type Typer parses the flag as: the field's own, optional when its default is None."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = options[0] if options[0] in (int, float, bool, str, Path) else str
    return base if field.default is not None else Optional[base]


def _params() -> list[tuple[str, Any, Any]]:
    params = []
    hints: dict[str, Any] = {}
    from ..methods import METHODS

    for record in METHODS.values():
        hints.update(typing.get_type_hints(record.config))
    for name, field in setting_fields().items():
        meta = field.metadata
        flags = (meta.get("flag") or flag_of(field)).split("/")
        kwargs = {"help": meta.get("help") or "", "rich_help_panel": meta.get("panel")}
        if meta.get("min") is not None:
            kwargs["min"] = meta["min"]
        params.append((name, _annotation(field, hints[name]), typer.Option(field.default, *flags, **kwargs)))
    return params


SETTING_NAMES = tuple(setting_fields())


def _given(**values: Any) -> dict[str, Any]:
    """The settings the user gave (a flag left at its default is not passed on, so each config keeps its own)."""
    defaults = setting_fields()
    return {k: v for k, v in values.items() if v != defaults[k].default}


# Hands a command one argument ``settings``: {field name: value} of the method flags that were given.
with_method_settings = option_group("settings", _params(), _given)
