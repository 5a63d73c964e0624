"""Class lists: the one reader of class names from a list, a file or a comma-separated string."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

from .errors import ConfigError

__all__ = ["load_classes"]

_CLASSES_HOW = "Give a file with one class per line, or a comma-separated list such as 'cat,dog,bird'."


def load_classes(spec: str | Path | Sequence[str]) -> list[str]:
    """Class names (at least two) from a list, a UTF-8 file (one per line, '#' comments) or a comma-separated
    string."""
    if isinstance(spec, (list, tuple)):
        names = [str(n).strip() for n in spec]
    else:
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_file():
            names = _read_class_file(path)
        elif "," in text or not (path.suffix or "/" in text):
            names = [n.strip() for n in text.split(",")]
        else:
            raise ConfigError(f"classes file '{text}' does not exist. {_CLASSES_HOW}")
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no class names in '{spec}'. {_CLASSES_HOW}")
    if len(names) == 1:
        sibling = [p for p in Path(".").glob(f"{glob.escape(names[0])}.*") if p.is_file()] if isinstance(spec, str) else []
        guess = f" Did you mean the file '{sibling[0]}'?" if sibling else ""
        raise ConfigError(f"only one class ('{names[0]}'): an image cannot be classified against a single class. "
                          f"{_CLASSES_HOW}{guess}")
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})
    if dupes:
        raise ConfigError(f"duplicate class names: {', '.join(repr(d) for d in dupes)}. Each class must be named once.")
    return names


def _read_class_file(path: Path) -> list[str]:
    """One class per line; UTF-8 with or without a byte-order mark. Anything else is refused with its name."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise ConfigError(f"classes file '{path}' is binary, not text. {_CLASSES_HOW}")
    try:
        text = data.decode("utf-8-sig")  # a BOM (Windows editors) must not become part of the first class name
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"classes file '{path}' is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}; Latin-1 or "
            "another legacy encoding?). Save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None
    lines = (ln.strip() for ln in text.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]
