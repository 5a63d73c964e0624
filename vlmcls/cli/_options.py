"""Typer options shared by the commands that decode images (classify, eval), defined once."""

from __future__ import annotations

import typer

WORKERS_OPTION = typer.Option(
    None, "--workers", min=0,
    help="Decoding threads or processes (default: up to 8 threads, or one process per core).",
)
WORKER_TYPE_OPTION = typer.Option(
    "auto", "--worker-type",
    help="thread, process, or auto (= thread; processes decode faster on many-core GPU machines but start slowly).",
)
