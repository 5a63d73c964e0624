"""Checks that run before a model loads: every input a run reads and every file it will write.

A wrong path found after ten minutes of encoding costs ten minutes; found here it costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..output import check_output_path

__all__ = ["check_input_files", "check_outputs"]


def check_input_files(files: dict[str, Path | None], folders: dict[str, Path | None] | None = None) -> None:
    """Each named file (``{"--descriptors": path}``) must be a readable file, each named folder a folder."""
    for flag, path in files.items():
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(f"{flag} file '{path}' does not exist (or is not a file). Check the path.")
    for flag, path in (folders or {}).items():
        if path is not None and not Path(path).expanduser().is_dir():
            raise ConfigError(f"{flag} folder '{path}' does not exist (or is not a folder). Check the path.")


def check_outputs(targets: dict[str, tuple[Path | None, tuple[str, ...], str | None]],
                  inputs: Iterable[str | Path | None]) -> dict[str, Path | None]:
    """Check every output a run will write, before it starts: ``targets`` maps a flag to (path, valid suffixes,
    hint for a wrong suffix). An output may not be one of the ``inputs`` (it would destroy it) nor another output.
    Returns the checked paths by flag."""
    checked: dict[str, Path | None] = {}
    claimed: dict[Path, str] = {}
    for flag, (path, suffixes, hint) in targets.items():
        if path is None:
            checked[flag] = None
            continue
        out = check_output_path(path, suffixes, flag, hint)
        real = out.resolve()
        if real in claimed:
            raise ConfigError(f"{flag} and {claimed[real]} both name '{path}'; give each output its own file.")
        claimed[real] = flag
        checked[flag] = out
    texts = [item if type(item) is str else os.fspath(item) for item in inputs if item is not None]
    for name in {real.name for real in claimed}:  # only an input that ends with an output's name is resolved
        for text in [text for text in texts if text.endswith(name)]:
            if os.path.basename(text) != name:
                continue
            real = Path(text).expanduser().resolve()
            if real in claimed and real.is_file():
                raise ConfigError(f"{claimed[real]} '{real}' is an input of this run; writing it would destroy "
                                  "it. Choose another file name.")
    return checked
