"""The Typer app class every vlmcls command hangs on, so ``--help`` reads the way the README writes commands.

Typer's own help shows an on/off flag with a ``<bool>`` placeholder (as if ``--quiet true`` were typed), values as
``<str>``/``<path>`` and a required argument as ``{images}`` on the usage line; it also reads help texts as rich
markup, so ``vlmcls[int8]`` showed as ``vlmcls``. Here flags show no placeholder, values show click's TEXT, PATH,
INTEGER or FLOAT, arguments are written in capitals (``[NAME]`` when optional) as click and the README do, and help
texts show as written. Only the help text changes: names, parsing and values do not.
"""

from __future__ import annotations

import copy
from typing import Any

import typer
import typer.core
from rich.markup import escape

__all__ = ["App"]


_VALUE_NAMES = {"int": "INTEGER", "int range": "INTEGER", "integer": "INTEGER", "float": "FLOAT",
                "float range": "FLOAT", "path": "PATH", "file": "PATH", "directory": "PATH"}


def _value_name(param_type: Any) -> str:
    return _VALUE_NAMES.get(getattr(param_type, "name", ""), "TEXT")


def _named_type(param_type: Any) -> Any:
    """A copy of an argument's type (click's are shared) whose help placeholder is its value name."""
    named = copy.copy(param_type)
    name = _value_name(param_type)
    named.get_metavar, named._value_named = (lambda *args, **kwargs: name), True
    return named


def _plain_metavars(params: list[Any]) -> list[Any]:
    for param in params:
        if param.param_type_name == "option" and (param.is_flag or param.count) and param.metavar is None:
            param.metavar = ""  # a flag takes no value, so its help shows none
        elif param.param_type_name == "argument":
            param.metavar = param.metavar or param.name.upper()
            if not getattr(param.type, "_value_named", False):
                param.type = _named_type(param.type)  # its type column, as for options
        elif param.param_type_name == "option" and param.metavar is None:
            param.metavar = _value_name(param.type)
        if getattr(param, "help", None) and not getattr(param, "_help_escaped", False):
            param.help, param._help_escaped = escape(param.help), True  # shown as written, not read as markup
    return params


def _argument_usage(argument: Any) -> str:
    name = argument.metavar or argument.name.upper()
    name = name if argument.required else f"[{name}]"
    return f"{name}..." if argument.nargs != 1 else name


class _PlainHelpCommand(typer.core.TyperCommand):
    runs_methods = False  # see _MethodsCommand

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_metavars(super().get_params(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        from ._settings import check_retired_flags

        # a retired flag fails with its new spelling: any, when the command runs methods; else one it now takes
        check_retired_flags(ctx, args, methods=self.runs_methods)
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_usage(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class _MethodsCommand(_PlainHelpCommand):
    """A command that runs methods: a flag that became a method option fails with its new spelling (exit 2)."""

    runs_methods = True


class _PlainHelpGroup(typer.core.TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_metavars(super().get_params(ctx))


class App(typer.Typer):
    """A ``typer.Typer`` whose groups and commands render their help plainly (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", _PlainHelpGroup)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        def decorate(function: Any) -> Any:
            cls = kwargs.get("cls") or (_MethodsCommand if getattr(function, "runs_methods", False)
                                        else _PlainHelpCommand)
            return super(App, self).command(*args, **{**kwargs, "cls": cls})(function)

        return decorate
