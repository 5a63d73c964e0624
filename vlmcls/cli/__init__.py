"""The Typer app: thin commands that parse, call the API and render. Only this package prints or exits.

Exit codes: 0 everything worked; 1 the run finished but some inputs failed (error rows are in the output);
2 bad usage or configuration (nothing was computed); 3 a fatal error (model, cache or LLM endpoint could not be
loaded or reached, or an output could not be written: disk full, file-size limit); 4 an internal error (a bug; the
traceback is written to a file); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM); both resume on a re-run.
"""

from __future__ import annotations

import logging
import sys

import typer

from .import cache_cmd, classify_cmd
from ._app import App
from ._render import (EXIT_FATAL, EXIT_INPUT_ERRORS, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED,
                      EXIT_USAGE)

__all__ = ["app", "main", "EXIT_OK", "EXIT_INPUT_ERRORS", "EXIT_USAGE", "EXIT_FATAL", "EXIT_INTERNAL",
           "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

app = App(
    name="vlmcls",
    help="Zero-shot image classification with vision-language models steered by an LLM.\n\n"
    "Exit codes: 0 all inputs classified; 1 finished, but some inputs failed (error rows are in the output); "
    "2 bad usage or configuration (nothing computed); 3 fatal error (model, cache or LLM endpoint could not be loaded "
    "or reached, or an output could not be written); 4 internal error (a bug: the traceback file is named); "
    "130 interrupted (Ctrl-C), 143 terminated (SIGTERM): re-run to resume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("classify")(classify_cmd.classify)
app.add_typer(cache_cmd.app, name="cache")


def _register_optional() -> None:
    """Sub-apps that live in their own files; each registers itself if present."""
    import importlib

    for module, name in (("prompts_cmd", "prompts"), ("describe_cmd", None), ("eval_cmd", None), ("demo_cmd", "demo"),
                         ("audit_cmd", None), ("methods_cmd", None),
                         ("sort_cmd", None), ("export_cmd", None), ("review_cmd", None)):
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(module):
                continue
            raise
        if hasattr(mod, "register"):
            mod.register(app)
        elif name is not None:
            app.add_typer(mod.app, name=name)


_register_optional()


@app.callback()
def _root(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug).")) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file name prints as \udcXX instead of crashing the table
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def main() -> None:
    """Console-script entry point (``vlmcls``)."""
    app()
