"""Sorting a run's images into class folders (``vlmcls sort``), and putting them back.

A plan is made first (:func:`plan_sort`): each classified image goes to ``DIR/<class>/`` — the reviewer's label
when the labels file has one, else the prediction; ``DIR/unknown/`` when a reviewer marked it none of the classes;
``DIR/_unsure/`` when its top probability is below ``min_prob`` and nobody labelled it. Names never clash: a second
``a.png`` in one folder becomes ``a-1.png``, and a name already in the folder is never overwritten. An image whose
file vanished, or changed after the results were written (its mtime is later), is skipped and reported.

Carrying it out (:func:`carry_out`) writes a manifest first and appends one line per file done, so an interrupted
sort can still be undone: :func:`undo_sort` removes every link and copy it made and moves every moved file back,
never over a file that now sits at the old place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputError
from .run_results import RunResults, run_settings_path

__all__ = ["SORT_MODES", "UNSURE", "UNKNOWN", "SortStep", "SortPlan", "plan_sort", "carry_out", "undo_sort"]

SORT_MODES = ("link", "copy", "move")
UNSURE = "_unsure"  # below --min-prob and not labelled by a reviewer
UNKNOWN = "unknown"  # marked "none of the classes" by a reviewer
MANIFEST_PREFIX = ".vlmcls-sort-"


@dataclass
class SortStep:
    source: Path
    target: Path
    why: str  # "predicted", "corrected", "unsure", "unknown"


@dataclass
class SortPlan:
    into: Path
    mode: str
    steps: list[SortStep] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (results path, reason)


def _folder_name(label: str) -> str:
    """A class name as one folder name; a name that would escape ``DIR`` is refused."""
    if not label or label in (".", "..") or "/" in label or "\\" in label or "\0" in label:
        raise ConfigError(f"class '{label}' cannot be a folder name; rename it in the classes file.")
    return label


def plan_sort(run: RunResults, into: str | os.PathLike, mode: str = "link", min_prob: float | None = None) -> SortPlan:
    """Where each image of ``run`` goes (nothing is touched)."""
    if mode not in SORT_MODES:
        raise ConfigError(f"unknown sort mode '{mode}'. Valid: {', '.join(SORT_MODES)}.")
    into = Path(into).expanduser().absolute()
    plan = SortPlan(into, mode)
    written_at = _results_time(run)
    taken: dict[Path, set[str]] = {}  # folder -> names planned there
    for n, row in enumerate(run.rows):
        if row.get("error") is not None:
            plan.skipped.append((row["path"], f"not classified ({row['error']})"))
            continue
        source = run.image_file(n)
        try:
            st = source.stat() if source is not None else None
        except OSError:
            st = None
        if st is None:
            plan.skipped.append((row["path"], "the file is gone"))
            continue
        if st.st_mtime_ns > written_at:
            plan.skipped.append((row["path"], "the file changed after the run"))
            continue
        correction = run.corrections.get(row["path"])
        if correction is not None:
            folder, why = (UNKNOWN, "unknown") if correction.unknown else (_folder_name(correction.label), "corrected")
        elif min_prob is not None and (not row["top_k"] or row["top_k"][0]["prob"] < min_prob):
            folder, why = UNSURE, "unsure"
        else:
            folder, why = _folder_name(row["label"]), "predicted"
        target_dir = into / folder
        plan.steps.append(SortStep(source, target_dir / _free_name(target_dir, source.name, taken), why))
    return plan


def _results_time(run: RunResults) -> int:
    """When the run's results were written (ns): a source modified later changed since the run."""
    sidecar = run_settings_path(run.path)
    stamps = [run.path.stat().st_mtime_ns] + ([sidecar.stat().st_mtime_ns] if sidecar.is_file() else [])
    return max(stamps)


def _free_name(folder: Path, name: str, taken: dict[Path, set[str]]) -> str:
    used = taken.setdefault(folder, set())
    stem, suffix = os.path.splitext(name)
    candidate, k = name, 0
    while candidate in used or os.path.lexists(folder / candidate):
        k += 1
        candidate = f"{stem}-{k}{suffix}"
    used.add(candidate)
    return candidate


def carry_out(plan: SortPlan) -> Path:
    """Do the plan; returns the manifest (``DIR/.vlmcls-sort-<time>.jsonl``) that :func:`undo_sort` reads."""
    plan.into.mkdir(parents=True, exist_ok=True)
    manifest = plan.into / f"{MANIFEST_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
    with open(manifest, "x", encoding="utf-8", errors="surrogateescape") as log:
        log.write(json.dumps({"mode": plan.mode, "into": os.fspath(plan.into), "time": time.time()}) + "\n")
        log.flush()
        for step in plan.steps:
            step.target.parent.mkdir(parents=True, exist_ok=True)
            _place(step, plan.mode)
            st = step.target.lstat()
            log.write(json.dumps({"source": os.fspath(step.source), "target": os.fspath(step.target),
                                  "size": st.st_size, "mtime_ns": st.st_mtime_ns}, ensure_ascii=False) + "\n")
            log.flush()
            os.fsync(log.fileno())
    return manifest


def _place(step: SortStep, mode: str) -> None:
    """One file to its target, never over an existing one (``O_EXCL``-style: a race loses, it does not clobber)."""
    try:
        if mode == "link":
            os.symlink(step.source.absolute(), step.target)  # fails when the target exists
        elif mode == "copy":
            with open(step.source, "rb") as src, open(step.target, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            shutil.copystat(step.source, step.target)
        else:
            _move(step.source, step.target)
    except OSError as exc:
        raise OutputError(f"cannot {mode} '{step.source}' to '{step.target}' ({exc.strerror}); what was done "
                          "so far is in the manifest: `vlmcls sort --undo MANIFEST` takes it back.", exc.errno) from exc


def _move(source: Path, target: Path) -> None:
    if os.path.lexists(target):
        raise FileExistsError(17, "File exists", os.fspath(target))
    try:
        os.link(source, target)  # atomic no-clobber on one filesystem, then drop the old name
        os.unlink(source)
    except OSError:
        if os.path.lexists(target):
            raise
        shutil.move(os.fspath(source), os.fspath(target))  # another filesystem: copy then delete


def undo_sort(manifest: str | os.PathLike) -> tuple[int, list[tuple[str, str]]]:
    """Take a sort back: remove its links and copies, move moved files back. Returns (files restored, skipped
    (path, why)): a target changed since the sort, or a file now at a source's place, is left alone."""
    manifest = Path(manifest).expanduser()
    try:
        lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
                 if line.strip()]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sort manifest '{manifest}' cannot be read ({exc}).") from exc
    if not lines or lines[0].get("mode") not in SORT_MODES:
        raise ConfigError(f"'{manifest}' is not a sort manifest (its first line names no mode).")
    mode = lines[0]["mode"]
    done, skipped = 0, []
    for entry in reversed(lines[1:]):
        source, target = Path(entry["source"]), Path(entry["target"])
        try:
            st = target.lstat()
        except OSError:
            skipped.append((entry["target"], "no longer there"))
            continue
        if (st.st_size, st.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
            skipped.append((entry["target"], "changed since the sort"))
            continue
        if mode == "move":
            if os.path.lexists(source):
                skipped.append((entry["target"], f"'{source}' exists again; not overwritten"))
                continue
            source.parent.mkdir(parents=True, exist_ok=True)
            _move(target, source)
        else:
            target.unlink()
        done += 1
        _remove_if_empty(target.parent, manifest.parent)
    return done, skipped


def _remove_if_empty(folder: Path, top: Path) -> None:
    if folder != top:
        try:
            folder.rmdir()
        except OSError:
            pass


def plan_rows(plan: SortPlan) -> list[dict[str, Any]]:
    return [{"source": os.fspath(s.source), "target": os.fspath(s.target), "why": s.why} for s in plan.steps]
