"""Watching a run's files: the model and the image features stay in memory; when a file that shapes the class text
changes (classes, a method's files, templates, prompts), the text side runs again — the LLM is asked only what the
edit invalidated, every other answer and text feature comes from the cache.

    engine = LocalEngine(Classifier("ViT-B-32:openai"))
    for run in watch_runs(engine, RunRequest("photos/", "classes.txt", method="cbd+fudd")):
        print(run.edited, run.result.labels if run.result else run.error)     # Ctrl-C ends

`vlmcls classify --watch` is this loop with a renderer; a library user gets the same runs as values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from ..errors import VlmclsError

if TYPE_CHECKING:
    from ..results import ClassificationResult
    from .request import RunRequest


class Rescorer(Protocol):
    """What a watch needs of an engine (:class:`~vlmcls.engines.LocalEngine` is one): encode a request's images
    once, score them again and again."""

    def encode(self, request: RunRequest, progress: Callable[[int, int], None] | None = None) -> Any: ...

    def score(self, request: RunRequest, feats: Any) -> ClassificationResult: ...

__all__ = ["Rescorer", "WatchedRun", "watch_runs", "watched_files", "POLL_SECONDS", "SETTLE_SECONDS"]

POLL_SECONDS = 0.25  # how often file stamps are read: cheap (a stat per file), and an edit shows within a blink
SETTLE_SECONDS = 2.0  # at most this long waiting for a file being saved to stop changing

Stamp = tuple[int, int, int, int]


@dataclass
class WatchedRun:
    """One run of a watch: the first (``edited`` empty) or a re-run after ``edited`` changed. A re-run that failed
    (a half-written file, a typo) has ``error`` set and no result; the watch goes on and the last good result
    stays the one to compare with."""

    result: ClassificationResult | None
    edited: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    error: VlmclsError | None = None
    previous: ClassificationResult | None = None  # the last good result before this one

    @property
    def first(self) -> bool:
        return not self.edited


def watched_files(request: RunRequest) -> list[Path]:
    """The files whose edits change a run's text side: the classes file, every file a method option names
    (``file_options``: descriptors, pairs, a templates file, …) and every prompt file the run can read."""
    from ..llm.prompts import prompt_search_path
    from ..methods import file_options

    classes = request.classes
    files = [Path(classes)] if isinstance(classes, (str, Path)) and Path(classes).is_file() else []
    files += [path for _, kind, path in file_options(request.options.given()) if kind == "file"]
    for _, folder in prompt_search_path(request.options.prompts_dir):
        if folder.is_dir():
            files.extend(sorted(p for p in folder.iterdir() if p.is_file()))
    return list(dict.fromkeys(files))


def _stamps(files: Sequence[Path]) -> dict[Path, Stamp | None]:
    """(mtime, ctime, size, inode) per file, None when missing: an editor that saves by renaming changes the inode."""
    stamps: dict[Path, Stamp | None] = {}
    for path in files:
        try:
            st = path.stat()
        except OSError:
            stamps[path] = None
        else:
            stamps[path] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    return stamps


def _wait_until_saved(files: Sequence[Path], stamps: dict, poll: float) -> dict:
    """An editor may write a file in several steps: wait until two reads agree (bounded by SETTLE_SECONDS)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        time.sleep(poll / 2)
        again = _stamps(files)
        if again == stamps:
            break
        stamps = again
    return stamps


def watch_runs(engine: Rescorer, request: RunRequest, files: Sequence[Path] | None = None, *,
               progress: Callable[[int, int], None] | None = None, max_reruns: int | None = None,
               poll: float = POLL_SECONDS) -> Iterator[WatchedRun]:
    """Run ``request`` once, then again on every edit of ``files`` (default: :func:`watched_files`), yielding each
    run; stops after ``max_reruns`` re-runs, or when the caller stops iterating (Ctrl-C reaches the caller).
    The images are encoded once; a re-run reads the class file again and scores the features in memory."""
    files = list(dict.fromkeys(Path(f) for f in (watched_files(request) if files is None else files)))
    seen = _stamps(files)  # taken before the first run: an edit made while it runs is not missed
    started = time.perf_counter()
    feats = engine.encode(request, progress)
    result = _score(engine, request, feats, encoded=feats.encoded)
    if feats.thumbnails:  # made while decoding, for a report
        result.artifacts["thumbnails"] = feats.thumbnails
    result.stats["seconds"] = round(time.perf_counter() - started, 3)
    yield WatchedRun(result, seconds=result.stats["seconds"])
    reruns = 0
    while max_reruns is None or reruns < max_reruns:
        time.sleep(poll)
        now = _stamps(files)
        if now == seen:
            continue
        now = _wait_until_saved(files, now, poll)
        edited = [f for f in files if now.get(f) != seen.get(f)]
        seen = now
        reruns += 1
        started = time.perf_counter()
        try:
            new = _score(engine, request, feats, encoded=0)
        except VlmclsError as exc:  # the user fixes the file and saves again
            yield WatchedRun(None, edited, time.perf_counter() - started, error=exc, previous=result)
            continue
        yield WatchedRun(new, edited, time.perf_counter() - started, previous=result)
        result = new


def _score(engine: Rescorer, request: RunRequest, feats, encoded: int) -> ClassificationResult:
    """The text side and the scores, on image features already in memory (the class file is read again)."""
    started = time.perf_counter()
    result = engine.score(request, feats)
    result.stats.update(images=len(feats.records) + len(feats.errors), encoded=encoded,
                        cached=len(feats.records) - encoded, errors=len(feats.errors),
                        seconds=round(time.perf_counter() - started, 3))
    return result
