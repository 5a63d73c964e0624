"""Rendering helpers shared by the CLI commands: consoles, error mapping, progress, tables."""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import ConfigError, VlmclsError

EXIT_OK, EXIT_INPUT_ERRORS, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3

console = Console()
console_err = Console(stderr=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn vlmcls errors into one red line and the documented exit code (2 usage, 3 fatal)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            console_err.print(f"[red]error:[/red] {in_flags(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from exc
        except VlmclsError as exc:
            console_err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(EXIT_FATAL) from exc

    return wrapper


def in_flags(message: str) -> str:
    """A library message in the CLI's words: "setting 'fudd_k'" (a Python field) becomes its flag, --fudd-k."""
    if "setting '" not in message:
        return message
    from ._settings import flag_of
    from ..methods import setting_fields

    fields = setting_fields()
    return re.sub(r"setting '(\w+)'", lambda m: flag_of(fields[m[1]]) if m[1] in fields else m[0], message)


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``(done, total)`` drawing a bar on stderr (silent when disabled)."""
    if not enabled:
        yield lambda done, total: None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console_err, transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def key_value_table(title: str, items: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in items.items():
        table.add_row(str(key), str(value))
    return table
