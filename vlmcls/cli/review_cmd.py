"""`vlmcls review RESULTS`: a local page to check and correct a run, and improve it with the corrections."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._render import console, handle_errors, safe

__all__ = ["register", "review_command"]


@handle_errors
def review_command(
    results: Path = typer.Argument(..., help="The .jsonl/.json/.parquet `vlmcls classify -o` wrote."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="The port on 127.0.0.1 (default: a free one)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the URL only; open no browser."),
    cache: Optional[str] = typer.Option(None, "--cache", metavar="DIR", help="The cache the run used "
                                        "(default: $VLMCLS_CACHE or cache/)."),
) -> None:
    """Serve a review page on 127.0.0.1 (the URL carries a one-time token); Ctrl-C stops it.

    Corrections go to RESULTS' labels file (out.labels.jsonl, append-only) at once; "improve with my labels"
    re-scores the run with them as Tip-Adapter's support set, from cached features."""
    from ..review import ReviewSession
    from ..review.server import serve
    from ._options import cache_folder

    cache_dir, _ = cache_folder(cache, "review")
    session = ReviewSession(results, cache_dir=cache_dir)
    console.print(f"reviewing {len(session.rows)} rows of {safe(results)}; labels: {safe(session.log.path)}",
                  highlight=False)

    def announce(url: str) -> None:
        console.print(f"open {url}  (Ctrl-C stops)", highlight=False, markup=False, soft_wrap=True)

    serve(session, open_browser=not no_browser, port=port, announce=announce)
    console.print(f"stopped; the labels are in {safe(session.log.path)}", highlight=False)


def register(root: typer.Typer) -> None:
    root.command("review", help="A local page to review and correct a run, and improve it with the corrections.")(
        review_command)
