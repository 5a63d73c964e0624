"""Bounds on everything a file or an LLM answer can make vlmcls read, parse or encode.

Each bound has a default far above what a real run needs and an environment variable to raise it. Input past a
bound is dropped with one warning row that says how much (descriptors, captions, characters), or refused with a
message naming the variable (a file over the size limit, an answer over the byte limit). Read afresh on each call,
so a test or a long-lived process can change them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Limits", "current_limits", "LIMIT_VARIABLES"]


@dataclass(frozen=True)
class Limits:
    # CbD papers use 5-15 descriptors and CuPL ~50 sentences per class; 10^5 from a runaway answer took 2.8 GB.
    descriptors_per_class: int = 200
    # FuDD answers hold ~10 caption pairs; each pair's captions are encoded once per side.
    captions_per_pair: int = 50
    # CLIP reads 77 tokens (~300 characters of prose); its tokenizer is quadratic in a word's length, so a
    # 200,000-letter word cost 221 s. Cut before tokenizing, far past anything the model can see.
    chars_per_text: int = 1000
    # An answer of descriptors is a few KB; one of 2 MB is a runaway, and parsing it only to drop it costs time.
    answer_bytes: int = 256 * 1024
    # Descriptor, pair, prompt, class, template and metric files: a 62 MB pair file took 157 s and 9.5 GB.
    file_bytes: int = 50 * 2**20
    # JSON/TOML nesting: vlmcls's formats are at most 4 deep; 10^5 levels crashed the parser (RecursionError).
    nesting: int = 64


# field -> (environment variable, multiplier from the variable's unit to the field's)
LIMIT_VARIABLES = {
    "descriptors_per_class": ("VLMCLS_MAX_DESCRIPTORS", 1),
    "captions_per_pair": ("VLMCLS_MAX_CAPTIONS", 1),
    "chars_per_text": ("VLMCLS_MAX_TEXT_CHARS", 1),
    "answer_bytes": ("VLMCLS_MAX_ANSWER_KB", 1024),
    "file_bytes": ("VLMCLS_MAX_FILE_MB", 2**20),
}


def current_limits() -> Limits:
    """The bounds now in force: the defaults, each raised or lowered by its environment variable."""
    values = {}
    for name, (variable, unit) in LIMIT_VARIABLES.items():
        raw = os.environ.get(variable, "").strip()
        if not raw:
            continue
        try:
            number = int(raw)
        except ValueError:
            number = 0
        if number < 1:
            raise ConfigError(f"environment variable {variable} is '{raw}'; it must be a whole number >= 1. "
                              f"Set it to raise the bound (e.g. {variable}={getattr(Limits, name) // unit * 4}) "
                              "or unset it for the default.")
        values[name] = number * unit
    return Limits(**values)


def variable_for(name: str) -> str:
    """The environment variable that raises the bound ``name`` (for messages)."""
    return LIMIT_VARIABLES[name][0]


def capped_lists(per_item: dict[str, list], limit: int) -> tuple[dict[str, list], dict[str, int]]:
    """Each list cut to its first ``limit`` entries; and, for the items cut, how many entries were dropped."""
    dropped = {name: len(items) - limit for name, items in per_item.items() if len(items) > limit}
    if not dropped:
        return per_item, {}
    return {name: items[:limit] for name, items in per_item.items()}, dropped


def cut_texts(texts: list[str], limit: int) -> tuple[list[str], int, int]:
    """Texts cut to ``limit`` characters; with how many were cut and how many characters that dropped."""
    long = [len(t) - limit for t in texts if len(t) > limit]
    if not long:
        return texts, 0, 0
    return [t[:limit] for t in texts], len(long), sum(long)


def bound_row(stage: str, dropped: dict[str, int], limit: int, unit: str, per: str, field: str,
              items: str | None = None) -> dict[str, str]:
    """The one warning row for everything a bound dropped in one stage: how much, where, and how to raise it.
    ``dropped``: item (a class, a pair) -> how many ``unit`` it lost; ``per``: what the limit counts per;
    ``items``: what the keys of ``dropped`` are, when not ``per``."""
    items = items or per
    names = ", ".join(f"'{n[:60]}'" for n in list(dropped)[:3]) + (", ..." if len(dropped) > 3 else "")
    return {"item": f"{len(dropped)} {items}{'' if len(dropped) == 1 else 'es' if items.endswith('s') else 's'}", "stage": stage, "severity": "warning",
            "message": f"dropped {sum(dropped.values()):,} {unit} past the limit of {limit:,} per {per} ({names}); "
                       f"raise it with {variable_for(field)}=N if they are meant."}
