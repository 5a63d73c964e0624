"""Class lists: the one reader of class names from a list, a file or a comma-separated string."""

from __future__ import annotations

import glob
import logging
import re
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError

__all__ = ["load_classes"]

log = logging.getLogger(__name__)

_CLASSES_HOW = "Give a file with one class per line, or a comma-separated list such as 'cat,dog,bird'."


def load_classes(spec: str | Path | Sequence[str], minimum: int = 2) -> list[str]:
    """Class names (at least ``minimum``: two to classify, one to describe) from a list, a UTF-8 file (one per
    line, '#' comments) or a comma-separated string."""
    where = ""  # " in classes file '…'" when the names came from a file
    if isinstance(spec, (list, tuple)):
        names = [str(n).strip() for n in spec]
    else:
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_file():
            names, where = _read_class_file(path), f" in classes file '{path}'"
        elif "," in text or not (path.suffix or "/" in text):
            names = [n.strip() for n in text.split(",")]
        else:
            raise ConfigError(f"classes file '{text}' does not exist. {_CLASSES_HOW}")
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no class names in '{spec}' (lines starting with '#' are comments). {_CLASSES_HOW}")
    if len(names) < minimum:
        sibling = [p for p in Path(".").glob(f"{glob.escape(names[0])}.*") if p.is_file()] if isinstance(spec, str) else []
        guess = f" Did you mean the file '{sibling[0]}'?" if sibling else ""
        raise ConfigError(f"only one class ('{names[0]}'){where}: an image cannot be classified against a single class. "
                          f"{_CLASSES_HOW}{guess}")
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})
    if dupes:
        raise ConfigError(f"duplicate class names{where}: {', '.join(repr(d) for d in dupes[:10])}. Each class must be named once.")
    return names


def _read_class_file(path: Path) -> list[str]:
    """One class per line (split on line breaks only: U+0085 or U+2028 inside a name stays in it); UTF-8, or
    UTF-16/32 with a byte-order mark. A line starting with '#' is a comment; write '\\#' for a class whose name
    starts with '#'. Anything else is refused with its name."""
    from .textfiles import read_text_file

    text = read_text_file(path, "classes file")
    names: list[str] = []
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        line = line.strip()
        if line.startswith("#"):
            if _LOOKS_LIKE_CLASS.match(line):
                log.warning("classes file '%s', line %d: '%s' is a comment and is skipped; write '\\%s' if it is a "
                            "class name", path, number, line, line)
            continue
        names.append(line[1:] if line.startswith("\\#") else line)
    return names


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # str.splitlines also splits on U+0085, U+2028, \x1c-\x1e, \v, \f
_LOOKS_LIKE_CLASS = re.compile(r"#[^\s#!]")  # "#fff", "#hashtag"; not "# comment", "##" or "#!"
