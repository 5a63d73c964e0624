"""Rendering helpers shared by the CLI commands: consoles, error mapping, progress, tables."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import signal
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import ConfigError, VlmclsError
from ..gcpause import frozen_gc

EXIT_OK, EXIT_INPUT_ERRORS, EXIT_USAGE, EXIT_FATAL, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT (128 + 2)
EXIT_TERMINATED = 143  # SIGTERM (128 + 15): a scheduler or `kill` stopped the run; it resumes as after Ctrl-C
# A write that failed for a reason outside vlmcls (disk full, ulimit -f, quota, read-only): exit 3, not "a bug".
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}

console = Console()
console_err = Console(stderr=True)
log = logging.getLogger(__name__)

# C0/C1 control characters and ANSI escape sequences: a file name or an LLM answer must not move the cursor,
# clear the screen or retitle the terminal when printed. Tab is kept.
# Bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) go too: U+202E makes "gpj.exe" print as
# "exe.jpg".
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.|[\x00-\x08\x0b-\x1f\x7f-\x9f"
                      "\u202a-\u202e\u2066-\u2069]")


def safe(value: object) -> str:
    """Data (a file name, a class name, an LLM answer, an error message) made safe to print through Rich: terminal
    control sequences removed, then Rich markup escaped, so ``[/]bird`` prints as written instead of crashing."""
    return escape(_CONTROL.sub("", str(value)))


# Images encoded so far in this process (from the progress callbacks), for the Ctrl-C message.
_encoding_progress = {"done": 0, "total": 0}


def _interrupted_message() -> str:
    done, total = _encoding_progress["done"], _encoding_progress["total"]
    if not total:
        return "interrupted before any image was encoded; the same command starts again."
    return f"interrupted: {done} of {total} images cached; the same command resumes."


def _log_traceback(exc: BaseException) -> str:
    """Write the full traceback of an unexpected error to a file of its own; return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"vlmcls-crash-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path


def quiet_libraries() -> None:
    """For --quiet: the HF hub and datasets libraries draw their own download/save bars; turn them off."""
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "datasets" in sys.modules:  # imported already: its setting was read at import time
        sys.modules["datasets"].disable_progress_bars()


def print_error(message: object) -> None:
    """One red ``error:`` line on stderr (not wrapped, so it greps and pastes as one line)."""
    console_err.print(f"[red]error:[/red] {safe(message)}", highlight=False, soft_wrap=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn every failure into one red line and its documented exit code: 2 usage, 3 fatal, 4 internal error
    (a bug: the traceback goes to a file the line names), 130 Ctrl-C (saying what was kept)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _encoding_progress.update(done=0, total=0)
        previous = _terminate_like_ctrl_c()
        try:
            with frozen_gc():  # what was imported before the command is never garbage: no collection walks it
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except ConfigError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_USAGE) from exc
        except VlmclsError as exc:
            print_error(exc)
            raise typer.Exit(EXIT_FATAL) from exc
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the same line, each its own code
            console_err.print(f"[yellow]{_interrupted_message()}[/yellow]", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED) from exc
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                _internal_error(exc)
            from ..output import output_error

            print_error(output_error(getattr(exc, "filename", None) or "a file", exc))  # a write deep in a library
            raise typer.Exit(EXIT_FATAL) from exc
        except Exception as exc:  # a bug in vlmcls or a library under it: say where the details are
            _internal_error(exc)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so everything Ctrl-C stops cleanly (LLM workers, decode pools,
    the cache) stops the same way."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _terminate_like_ctrl_c():
    """Make SIGTERM raise Terminated for the command's duration; the previous handler (None: not installed,
    outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):
        return None


def _internal_error(exc: BaseException) -> None:
    """Say where the traceback of an unexpected error is, and exit 4."""
    try:
        where = f"the traceback is in {_log_traceback(exc)}"
    except OSError:
        where = "the traceback could not be written to a file; run with -vv to see it"
        log.debug("internal error", exc_info=exc)
    console_err.print(
        f"[red]internal error:[/red] {safe(type(exc).__name__)}: {safe(exc)} ({safe(where)}). "
        "This is a bug in vlmcls; please report it with that file.", highlight=False, soft_wrap=True,
    )
    raise typer.Exit(EXIT_INTERNAL) from exc


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``(done, total)`` drawing a bar on a terminal's stderr (silent when disabled)."""
    def record(done: int, total: int) -> None:
        _encoding_progress.update(done=done, total=total)

    if not enabled or not console_err.is_terminal:  # a bar in a log file is noise (and leaves a blank line)
        yield record
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console_err, transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            record(done, total)
            bar.update(task, completed=done, total=total)

        yield update


def key_value_table(title: str, items: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in items.items():
        table.add_row(safe(key), safe(value))
    return table
