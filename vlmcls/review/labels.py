"""A run's corrections: one append-only JSONL file beside the results (``out.jsonl`` → ``out.labels.jsonl``).

Each line is one act of a reviewer, written and flushed (and fsynced) at once, under an advisory lock so that
several reviewers of one run interleave whole lines:

    {"path": "imgs/a.png", "file": "/abs/imgs/a.png", "row": 3, "action": "label", "label": "cat",
     "reviewer": "b41c", "time": 1700000000.0}

``action`` is ``label`` (a class; accepting the prediction writes its label), ``unknown`` (none of the classes) or
``undo`` (takes back that image's latest act). Replaying the lines in order gives each image's current label, so a
killed review loses at most the line being written (a torn last line is skipped when read), and a reopened review
continues where it stopped. Nothing here chooses where the file lives: :func:`labels_path_for` puts it beside the
results, always.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, OutputError

__all__ = ["LABELS_SUFFIX", "ACTIONS", "Correction", "LabelLog", "labels_path_for", "read_corrections",
           "read_label_map"]

log = logging.getLogger(__name__)

LABELS_SUFFIX = ".labels.jsonl"
ACTIONS = ("label", "unknown", "undo")


def labels_path_for(results: str | os.PathLike) -> Path:
    """The labels file of a results file: the same folder, the same stem, ``.labels.jsonl``."""
    results = Path(results)
    return results.with_name(results.stem + LABELS_SUFFIX)


@dataclass(frozen=True)
class Correction:
    """An image's current label from the labels file: a class, or ``unknown`` (none of the classes)."""

    label: str | None  # None when marked unknown
    row: int | None  # the results row it was given for
    file: str | None  # the image's absolute path when the reviewer's page knew it

    @property
    def unknown(self) -> bool:
        return self.label is None


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"labels file '{path}' cannot be read ({exc.strerror}).") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:  # a line torn by a kill: the acts before and after it stand
            log.warning("labels file '%s' line %d is not JSON; skipped", path, number)
            continue
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            yield entry


def read_corrections(path: str | os.PathLike) -> dict[str, Correction]:
    """Each image's current correction ({results path: Correction}), replaying the file's acts in order; an image
    whose acts were all undone has none. A file of plain ``{"path", "label"}`` lines (written by hand or another
    tool) reads as labels."""
    stacks: dict[str, list[Correction]] = {}
    for entry in _entries(Path(path)):
        action = entry.get("action", "label")
        stack = stacks.setdefault(entry["path"], [])
        if action == "undo":
            if stack:
                stack.pop()
        elif action == "unknown":
            stack.append(Correction(None, entry.get("row"), entry.get("file")))
        elif action == "label" and isinstance(entry.get("label"), str):
            stack.append(Correction(entry["label"], entry.get("row"), entry.get("file")))
    return {p: s[-1] for p, s in stacks.items() if s}


def read_label_map(path: str | os.PathLike) -> dict[str, str]:
    """{image file: class} of the labelled images (those marked unknown left out); the file is the entry's
    absolute ``file`` when it has one, else its ``path`` as written (relative to the current folder, as classify's
    image paths are)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file '{path}' does not exist; give the .labels.jsonl a review wrote, or a JSONL "
                          "file of {\"path\": …, \"label\": …} lines.")
    return {c.file or p: c.label for p, c in read_corrections(path).items() if c.label is not None}


class LabelLog:
    """The labels file of one results file, appended to one act at a time."""

    def __init__(self, results: str | os.PathLike) -> None:
        self.path = labels_path_for(results)

    def append(self, path: str, action: str, label: str | None = None, *, row: int | None = None,
               file: str | None = None, reviewer: str | None = None) -> dict[str, Any]:
        """Write one act as one line, flushed and synced before returning (a kill after this loses nothing)."""
        if action not in ACTIONS:
            raise ConfigError(f"unknown labels action '{action}'. Valid: {', '.join(ACTIONS)}.")
        if action == "label" and not label:
            raise ConfigError("a 'label' act needs a class.")
        entry = {"path": path, "file": file, "row": row, "action": action, "label": label if action == "label" else None,
                 "reviewer": reviewer, "time": round(time.time(), 3)}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write labels file '{self.path}' ({exc.strerror}).", exc.errno) from exc
        try:
            _lock(fd)
            # a line torn by a kill would swallow this one: start on a fresh line
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line
            os.write(fd, line.encode("utf-8", "surrogateescape"))
            os.fsync(fd)
        except OSError as exc:
            raise OutputError(f"cannot write labels file '{self.path}' ({exc.strerror}).", exc.errno) from exc
        finally:
            os.close(fd)  # closing releases the lock
        return entry

    def corrections(self) -> dict[str, Correction]:
        return read_corrections(self.path)


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: O_APPEND writes of one short line are whole on local disks
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
