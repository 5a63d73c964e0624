"""`vlmcls classify … --watch`: the steering loop. The model and the image features stay in memory; when a file
that shapes the class text changes (classes, descriptors, pairs, templates, prompts), the text side runs again —
the LLM is asked only what the edit invalidated, every other answer and text feature comes from the cache — the
outputs are rewritten and what changed is printed."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import VlmclsError
from ._render import console, console_err, progress_bar, safe

if TYPE_CHECKING:
    from ..api import ClassificationResult
    from ..encode.embeddings import ImageFeatures
    from ..engines import LocalEngine, RunRequest

__all__ = ["watch_and_rerun"]

POLL_SECONDS = 0.25  # how often file stamps are read: cheap (a stat per file), and an edit shows within a blink
SETTLE_SECONDS = 2.0  # at most this long waiting for a file being saved to stop changing
_SHOWN_MOVES = 5


def _stamps(files: Sequence[Path]) -> dict[Path, tuple[int, int, int, int] | None]:
    """(mtime, ctime, size, inode) per file, None when missing: an editor that saves by renaming changes the inode."""
    stamps: dict[Path, tuple[int, int, int, int] | None] = {}
    for path in files:
        try:
            st = path.stat()
        except OSError:
            stamps[path] = None
        else:
            stamps[path] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    return stamps


def _score(engine: LocalEngine, request: RunRequest, feats: ImageFeatures, encoded: int) -> ClassificationResult:
    """The text side and the scores, on image features already in memory (the class file is read again)."""
    started = time.perf_counter()
    result = engine.score(request, feats)
    result.stats.update(images=len(feats.records) + len(feats.errors), encoded=encoded,
                        cached=len(feats.records) - encoded, errors=len(feats.errors),
                        seconds=round(time.perf_counter() - started, 3))
    return result


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


def _wait_until_saved(files: Sequence[Path], stamps: dict) -> dict:
    """An editor may write a file in several steps: wait until two reads agree (bounded by SETTLE_SECONDS)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS / 2)
        again = _stamps(files)
        if again == stamps:
            break
        stamps = again
    return stamps


def watch_and_rerun(engine: LocalEngine, request: RunRequest, outputs: Any, explain: bool, files: Sequence[Path],
                    max_reruns: int | None = None, *, render_result: Any, exit_code_of: Any) -> int:
    """Run once, then re-run on every edit of ``files`` until Ctrl-C (or ``max_reruns`` re-runs); returns the exit
    code of the last run. ``outputs`` is the run's RunOutputs (rewritten each time); ``render_result`` and
    ``exit_code_of`` are classify's (handed in, so this module does not import classify back)."""

    files = list(dict.fromkeys(Path(f) for f in files))
    seen = _stamps(files)  # taken before the first run: an edit made while it runs is not missed
    started = time.perf_counter()
    with progress_bar("encoding images", enabled=not outputs.quiet) as progress:
        feats = engine.encode(request, progress)
    records = request.images
    result = _score(engine, request, feats, encoded=feats.encoded)
    if feats.thumbnails:  # made while decoding, for the report (outputs keeps them for the re-runs)
        result.artifacts["thumbnails"] = feats.thumbnails
    result.stats["seconds"] = round(time.perf_counter() - started, 3)
    outputs.write(result, records)
    if not outputs.quiet:
        render_result(result, outputs.predictions, explain)
    exit_code = exit_code_of(result)
    console_err.print(f"watching {len(files)} files (classes, descriptors, pairs, templates, prompts) for edits; "
                      "Ctrl-C ends.", highlight=False)
    reruns = 0
    try:
        while max_reruns is None or reruns < max_reruns:
            time.sleep(POLL_SECONDS)
            now = _stamps(files)
            if now == seen:
                continue
            now = _wait_until_saved(files, now)
            edited = [f for f in files if now.get(f) != seen.get(f)]
            seen = now
            reruns += 1
            started = time.perf_counter()
            try:
                new = _score(engine, request, feats, encoded=0)
            except VlmclsError as exc:  # a half-written file, a typo: the user fixes it and saves again
                console_err.print(f"[red]error:[/red] {safe(exc)} (still watching; fix the file and save)",
                                  highlight=False)
                continue
            outputs.write(new, records)
            render_changes(result, new, edited, time.perf_counter() - started)
            result, exit_code = new, exit_code_of(new)
    except KeyboardInterrupt:
        console_err.print(f"watch stopped after {reruns} re-runs; the outputs hold the last run.", highlight=False)
    return exit_code
