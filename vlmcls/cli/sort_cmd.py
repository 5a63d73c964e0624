"""`vlmcls sort RESULTS --into DIR`: a run's images into class folders; `vlmcls sort --undo MANIFEST` puts them back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ConfigError
from ._render import EXIT_INPUT_ERRORS, console, console_err, handle_errors, safe

__all__ = ["register", "sort_command"]


@handle_errors
def sort_command(
    results: Optional[Path] = typer.Argument(None, help="The .jsonl/.json/.parquet `vlmcls classify -o` wrote."),
    into: Optional[Path] = typer.Option(None, "--into", help="The folder to sort into (class sub-folders are made)."),
    mode: str = typer.Option("link", "--mode", help="link (symbolic links), copy, or move (undo with --undo)."),
    min_prob: Optional[float] = typer.Option(None, "--min-prob", min=0.0, max=1.0, help="Below this top-1 "
                                             "probability an image nobody labelled goes to _unsure/."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; touch nothing."),
    undo: Optional[Path] = typer.Option(None, "--undo", help="Take back the sort this manifest (printed by the sort) "
                                        "records: links and copies removed, moved files moved back."),
) -> None:
    """Sort a run's images into class folders; corrections from the review's labels file win over predictions.

    A name clash gets a suffix (a-1.png), nothing is overwritten; an image gone or changed since the run is skipped
    and reported (exit code 1)."""
    from ..review.sorting import carry_out, plan_sort, undo_sort

    if undo is not None:
        if results is not None or into is not None:
            raise ConfigError("--undo MANIFEST takes no RESULTS or --into.")
        done, skipped = undo_sort(undo)
        console.print(f"undone: {done} files restored", highlight=False)
        for path, why in skipped:
            console_err.print(f"[yellow]skipped[/yellow] {safe(path)}: {safe(why)}", highlight=False)
        raise typer.Exit(EXIT_INPUT_ERRORS if skipped else 0)
    if results is None or into is None:
        raise ConfigError("give RESULTS and --into DIR (or --undo MANIFEST).")
    from ..review.run_results import load_results

    run = load_results(results)
    plan = plan_sort(run, into, mode, min_prob)
    if dry_run:
        table = Table(title=f"plan: {mode} {len(plan.steps)} files into {safe(plan.into)}", title_justify="left")
        for column in ("image", "to", "why"):
            table.add_column(column, overflow="fold")
        for step in plan.steps:
            table.add_row(safe(step.source), safe(step.target.relative_to(plan.into)), step.why)
        console.print(table)
    else:
        manifest = carry_out(plan)
        counts: dict[str, int] = {}
        for step in plan.steps:
            counts[step.target.parent.name] = counts.get(step.target.parent.name, 0) + 1
        console.print(f"{mode}: {len(plan.steps)} files into {safe(plan.into)} "
                      f"({', '.join(f'{safe(k)} {v}' for k, v in sorted(counts.items()))})", highlight=False)
        console.print(f"manifest: {safe(manifest)} (undo: vlmcls sort --undo {safe(manifest)})", highlight=False)
    for path, why in plan.skipped:
        console_err.print(f"[yellow]skipped[/yellow] {safe(path)}: {safe(why)}", highlight=False)
    raise typer.Exit(EXIT_INPUT_ERRORS if plan.skipped else 0)


def register(root: typer.Typer) -> None:
    root.command("sort", help="Sort a run's images into class folders (link, copy or move; --undo).")(sort_command)
