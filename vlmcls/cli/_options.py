"""Typer options shared by the commands that decode images (classify, eval), defined once."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Sequence

import typer

WORKERS_OPTION = typer.Option(
    None, "--workers", min=0,
    help="Decoding threads or processes (default: up to 8 threads, or one process per core).",
)
WORKER_TYPE_OPTION = typer.Option(
    "auto", "--worker-type",
    help="thread, process, or auto (= thread; processes decode faster on many-core GPU machines but start slowly).",
)

HEIC_THUMBNAILS_OPTION = typer.Option(
    False, "--heic-thumbnails",
    help="Decode a HEIC/HEIF photo's embedded thumbnail (an iPhone's 320x240) instead of every pixel when it covers "
         "the model's input: ~50x less decoding; features within cosine 0.999, cached apart.",
)


def option_group(target: str, params: Sequence[tuple[str, Any, Any]], build: Callable[..., Any]) -> Callable:
    """A decorator that gives a Typer command the flags ``params`` ((name, annotation, typer.Option) each) and hands
    the command one argument ``target`` = ``build(**their values)`` instead, so a group of flags is declared once
    for every command that takes it. (Typer has no parameter groups; it reads the signature, so the wrapper shows
    it the flags.)"""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != target]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                 for name, annotation, option in params]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(name) for name, _, _ in params}
            return command(**kwargs, **{target: build(**values)})

        wrapper.__signature__ = signature.replace(parameters=[*kept, *added])
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
        return wrapper

    return decorate


_SOURCE_PARAMS = (
    ("image_column", Optional[str], typer.Option(None, "--image-column", help="Dataset column holding images.")),
    ("label_column", Optional[str], typer.Option(None, "--label-column", help="Dataset column holding labels.")),
    ("split", Optional[str], typer.Option(None, "--split", help="Dataset split (for a DatasetDict).")),
)
# The HF-dataset flags, handed to a command as ``source_options``: the ones given, ready for ``as_records``.
with_source_options = option_group(
    "source_options", _SOURCE_PARAMS, lambda **values: {k: v for k, v in values.items() if v}
)
