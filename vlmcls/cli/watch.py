"""`vlmcls classify … --watch`: the steering loop of :mod:`vlmcls.engines.watch`, rendered. Each re-run rewrites
the outputs and prints what changed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ._render import console, console_err, progress_bar, safe

if TYPE_CHECKING:
    from ..api import ClassificationResult
    from ..engines import LocalEngine, RunRequest

__all__ = ["watch_and_rerun", "render_changes"]

_SHOWN_MOVES = 5


def _accuracy(result: ClassificationResult) -> float | None:
    labelled = [p for p in result.ok if p.true_label is not None and p.true_label in result.class_names]
    return 100 * sum(p.label == p.true_label for p in labelled) / len(labelled) if labelled else None


def render_changes(before: ClassificationResult, after: ClassificationResult, edited: Sequence[Path],
                   seconds: float) -> None:
    """What one re-run changed: how many images changed label, the first few, accuracy when labels are known."""
    old = {p.id: p.label for p in before.predictions}
    moved = [(p.id, old.get(p.id), p.label) for p in after.predictions if old.get(p.id) != p.label]
    names = ", ".join(safe(p.name) for p in edited)
    console.print(f"[bold]re-run[/bold] after editing {names}: {len(moved)} of {len(after.predictions)} images "
                  f"changed label ({seconds:.2f} s)", highlight=False)
    for image, was, now in moved[:_SHOWN_MOVES]:
        console.print(f"  {safe(image)}: {safe(was)} → {safe(now)}", highlight=False)
    if len(moved) > _SHOWN_MOVES:
        console.print(f"  … and {len(moved) - _SHOWN_MOVES} more", highlight=False)
    acc_before, acc_after = _accuracy(before), _accuracy(after)
    if acc_after is not None:
        console.print(f"  top-1 accuracy: {acc_before:.1f} % → {acc_after:.1f} %" if acc_before is not None
                      else f"  top-1 accuracy: {acc_after:.1f} %", highlight=False)
    stats = after.stats
    if stats.get("llm_calls") or stats.get("llm_cached_answers"):
        console.print(f"  LLM: {stats.get('llm_calls', 0)} new calls, {stats.get('llm_cached_answers', 0)} "
                      "answers from the cache", highlight=False)
    fell_back = Counter(w.get("severity", "warning") for w in after.warnings)
    if fell_back:
        console.print("  " + ", ".join(f"{n} {kind}s" for kind, n in fell_back.items()) + " (see the summary file)",
                      highlight=False)


def watch_and_rerun(engine: LocalEngine, request: RunRequest, outputs: Any, explain: bool,
                    files: Sequence[Path] | None = None, max_reruns: int | None = None, *, render_result: Any,
                    exit_code_of: Any) -> int:
    """Run once, then re-run on every edit of ``files`` (default: the request's watched files) until Ctrl-C (or
    ``max_reruns`` re-runs); returns the exit code of the last run. ``outputs`` is the run's RunOutputs
    (rewritten each time); ``render_result`` and ``exit_code_of`` are classify's (handed in, so this module does
    not import classify back)."""
    from ..engines.watch import watch_runs, watched_files

    files = watched_files(request) if files is None else list(files)
    records = request.images if isinstance(request.images, list) else None
    exit_code, reruns = 0, 0
    try:
        with progress_bar("encoding images", enabled=not outputs.quiet) as progress:
            runs = watch_runs(engine, request, files, progress=progress, max_reruns=max_reruns)
            first = next(runs)  # the progress bar covers the encoding only
        outputs.write(first.result, records)
        if not outputs.quiet:
            render_result(first.result, outputs.predictions, explain)
        exit_code = exit_code_of(first.result)
        console_err.print(f"watching {len(files)} files (classes, descriptors, pairs, templates, prompts) for "
                          "edits; Ctrl-C ends.", highlight=False)
        for run in runs:
            reruns += 1
            if run.error is not None:  # a half-written file, a typo: the user fixes it and saves again
                console_err.print(f"[red]error:[/red] {safe(run.error)} (still watching; fix the file and save)",
                                  highlight=False)
                continue
            outputs.write(run.result, records)
            render_changes(run.previous, run.result, run.edited, run.seconds)
            exit_code = exit_code_of(run.result)
    except KeyboardInterrupt:
        console_err.print(f"watch stopped after {reruns} re-runs; the outputs hold the last run.", highlight=False)
    return exit_code
