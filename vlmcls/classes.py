"""Class lists: the one reader of class names from a list, a file or a comma-separated string."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .errors import ConfigError

__all__ = ["load_classes"]


def load_classes(spec: str | Path | Sequence[str]) -> list[str]:
    """Class names from a list, a file (one per line, '#' comments) or a comma-separated string."""
    if isinstance(spec, (list, tuple)):
        names = [str(n).strip() for n in spec]
    else:
        text = str(spec)
        path = Path(text).expanduser()
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        elif "," in text or not (path.suffix or "/" in text):
            names = [n.strip() for n in text.split(",")]
        else:
            raise ConfigError(f"classes file '{text}' does not exist. Give a file (one class per line) or 'cat,dog,bird'.")
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no class names in '{spec}'.")
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})
    if dupes:
        raise ConfigError(f"duplicate class names: {', '.join(repr(d) for d in dupes)}. Each class must be named once.")
    return names
