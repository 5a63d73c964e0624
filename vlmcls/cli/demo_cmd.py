"""`vlmcls demo images DIR`: render the offline demo world (class sub-folders of procedurally drawn objects)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from ._app import App
from ._render import EXIT_USAGE, console, console_err, handle_errors, safe

app = App(help="The offline demo world: invented classes, a small trained CLIP, images drawn on demand.",
          no_args_is_help=True)

DEMO_DATA = Path(__file__).resolve().parents[1] / "data"


@app.command("images")
@handle_errors
def images(
    out_dir: Path = typer.Argument(..., help="Folder to write <class>/<i>.png into."),
    per_class: int = typer.Option(20, "--per-class", "-n", min=1, help="Images per class."),
    seed: int = typer.Option(1234, "--seed", help="Seed: the same seed draws the same images."),
) -> None:
    """Draw labelled demo images (never the seeds the demo model was trained on)."""
    from ..demo.render import render_dataset
    from ..demo.world import DEMO_CLASSES

    written = render_dataset(out_dir, list(DEMO_CLASSES), per_class, seed)
    console.print(f"wrote {len(written)} images of {len(DEMO_CLASSES)} classes to {safe(out_dir)}")


@app.command("paths")
def paths() -> None:
    """Where the shipped demo model, classes, descriptors and images are."""
    for name, path in {
        "model": DEMO_DATA / "demo_model",
        "classes": DEMO_DATA / "demo" / "classes.txt",
        "descriptors": DEMO_DATA / "demo" / "descriptors.json",
        "images": DEMO_DATA / "demo" / "images",
    }.items():
        console.print(f"{name:12s} {safe(path)}", highlight=False)


@app.command("llm")
def llm(
    port: Optional[int] = typer.Option(
        None, "--port", min=0, max=65535,
        help="Port on 127.0.0.1 (default 8765, or a free one when 8765 is taken; 0: any free port)."),
    log_requests: bool = typer.Option(False, "--log-requests", help="Print one line per request on stderr."),
) -> None:
    """Serve the demo LLM: an OpenAI-compatible endpoint that answers the shipped prompts about the demo classes
    from the demo world's facts (descriptors, differential captions, CuPL sentences). Ctrl-C stops it."""
    from ..demo.llm import DEFAULT_PORT, MODEL_NAME, DemoLLMServer

    try:
        server = DemoLLMServer(port=DEFAULT_PORT if port is None else port,
                               log_requests=sys.stderr if log_requests else None)
    except OSError as exc:
        if port is not None:
            console_err.print(f"[red]error:[/red] cannot listen on 127.0.0.1:{port}: {safe(exc.strerror or exc)}. "
                              "Pick another --port, or --port 0 for any free one.", highlight=False)
            raise typer.Exit(EXIT_USAGE) from exc
        server = DemoLLMServer(port=0, log_requests=sys.stderr if log_requests else None)
        console_err.print(f"port {DEFAULT_PORT} is taken; using {server.port}", highlight=False)
    # The URL first and alone on its line, so scripts can read it; then how to use it.
    print(server.base_url, flush=True)
    console_err.print(
        f"demo LLM ({MODEL_NAME}) answering the demo classes on {server.base_url}. Ctrl-C stops it.\n"
        f"use it with: --llm base_url={server.base_url}", highlight=False, soft_wrap=True)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where a shell started it ignoring it
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does
    except ValueError:  # not the main thread (an embedding caller): Ctrl-C only
        pass
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console_err.print(f"stopped after {server.requests_served} requests", highlight=False)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt
