"""Reading an LLM's answers: descriptor lists and differential captions, leniently (bullets, numbers, JSON, code
fences), and never trusting them (an answer too large or nested too deep is a bad answer, not a crash)."""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence

from ..errors import LLMResponseError
from ..sources.limits import current_limits, variable_for

__all__ = ["HostileAnswerError", "check_answer_size", "parse_descriptor_list", "parse_differential"]

_BULLET = re.compile(r"^\s*(?:[-*•‣–—+]|\d{1,3}[.)]|\(\d{1,3}\)|[a-z][.)](?=\s))\s*(.*)$")
_FENCE = re.compile(r"^\s*```[\w-]*\s*$", re.MULTILINE)
_MAX_DESCRIPTOR_CHARS = 200  # longer "descriptors" are prose, not features; CLIP truncates at 77 tokens anyway

def _dedupe(items: Iterable[str]) -> list[str]:
    """Drop blanks and repeats (case- and space-insensitive), keeping the first spelling and the order."""
    seen: set[str] = set()
    kept: list[str] = []
    for item in items:
        clean = " ".join(item.split())
        folded = clean.casefold()
        if clean and folded not in seen:
            seen.add(folded)
            kept.append(clean)
    return kept


# -- parsing LLM answers --------------------------------------------------------------------------------------
def _strip_fences(text: str) -> str:
    return _FENCE.sub("", text).strip()


class HostileAnswerError(LLMResponseError):
    """An answer no parser should walk (nested too deep, or too big): unusable, and dropped from the cache."""


def check_answer_size(text: str) -> None:
    """HostileAnswerError when an answer is over the byte limit (``VLMCLS_MAX_ANSWER_KB``)."""
    limit = current_limits().answer_bytes
    if len(text) > limit // 4 and len(text.encode("utf-8", "surrogatepass")) > limit:
        raise HostileAnswerError(
            f"the answer is {len(text.encode('utf-8', 'surrogatepass')):,} bytes, over the limit of {limit:,} "
            f"(raise {variable_for('answer_bytes')} if answers this long are meant)"
        )


def _json_payload(text: str) -> Any | None:
    """The JSON value in ``text`` (whole, or the first [...] / {...} block in it), or None. An answer nested
    deeper than any answer format is HostileAnswerError (json would raise RecursionError at ~1000 levels)."""
    from ..sources.textfiles import json_nesting_error

    check_answer_size(text)
    stripped = _strip_fences(text)
    deep = json_nesting_error(stripped)
    if deep is not None:
        raise HostileAnswerError(f"the answer nests JSON {deep[1]}+ levels deep (line {deep[0]}); "
                                 "no answer format is more than a few levels deep")
    candidates = [stripped]
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = stripped.find(opener), stripped.rfind(closer)
        if 0 <= start < end:
            candidates.append(stripped[start : end + 1])
    for candidate in candidates:
        if candidate[:1] in "[{":
            try:
                return json.loads(candidate)
            except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
                continue
    return None


def _clean_descriptor(text: str) -> str:
    text = text.replace("**", "").replace("__", "").strip().strip("\"'`").strip()
    text = text.rstrip(".;,").strip()
    # "Red feathers" -> "red feathers" so the sentence rule reads naturally; "DNA-like" stays as written.
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        text = text[0].lower() + text[1:]
    return text


def _strings_in(value: Any) -> list[str] | None:
    """A list of strings found in a JSON answer: a list, or the (single) list inside an object."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return [v for v in lists[0] if isinstance(v, str)]
        for key in ("descriptors", "features", "descriptions", "visual_features"):
            if isinstance(value.get(key), list):
                return [v for v in value[key] if isinstance(v, str)]
    return None


def parse_descriptor_list(text: str) -> list[str]:
    """Descriptors from an LLM answer: bullets ("-", "*", "•"), numbers ("1.", "1)"), or JSON; de-duplicated.

    The prompt leaves a "-" open, so a first line without a bullet that is followed by bullet lines is the first
    item. An answer with no list at all gives [] (the caller re-asks); one too big or nested too deep to parse is
    HostileAnswerError (the caller re-asks and drops it from the cache).
    """
    if not text or not text.strip():
        return []
    payload = _json_payload(text)
    strings = _strings_in(payload) if payload is not None else None
    if strings is not None:
        items = strings
    else:
        lines = [line for line in _strip_fences(text).splitlines() if line.strip()]
        items = []
        for index, line in enumerate(lines):
            match = _BULLET.match(line)
            if match:
                items.append(match.group(1))
            elif index == 0 and any(_BULLET.match(rest) for rest in lines[1:]) and not line.rstrip().endswith(":"):
                items.append(line)
    cleaned = [_clean_descriptor(item) for item in items]
    return _dedupe(d for d in cleaned if 0 < len(d) <= _MAX_DESCRIPTOR_CHARS)


def _pick(entry: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in entry:
            return entry[name]
    return None


def parse_differential(text: str, class_a: str, class_b: str) -> list[dict[str, Any]]:
    """FuDD prompt pairs ``[{"attr_type", "prompt_pair": [text_a, text_b]}]`` from a differential answer.

    Lenient about the shape: a JSON list (fenced, or inside prose) of objects keyed "a"/"b", the class names, or
    "class_a"/"class_b"; or an object holding such a list. Entries without two captions are skipped. An answer
    too big or nested too deep is HostileAnswerError, as for :func:`parse_descriptor_list`.
    """
    payload = _json_payload(text or "")
    if isinstance(payload, dict):
        lists = [v for v in payload.values() if isinstance(v, list)]
        payload = lists[0] if len(lists) == 1 else [payload]
    if not isinstance(payload, list):
        return []
    pairs: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for entry in payload:
        if not isinstance(entry, dict):
            continue
        text_a = _pick(entry, ["a", class_a, "class_a", "caption_a", "A"])
        text_b = _pick(entry, ["b", class_b, "class_b", "caption_b", "B"])
        attr = _pick(entry, ["attr_type", "attribute", "attribute_type", "attr"]) or "attribute"
        if not (isinstance(text_a, str) and isinstance(text_b, str) and text_a.strip() and text_b.strip()):
            continue
        text_a, text_b = " ".join(text_a.split()), " ".join(text_b.split())
        if text_a.casefold() == text_b.casefold() or (text_a.casefold(), text_b.casefold()) in seen:
            continue  # identical captions cannot tell the classes apart
        seen.add((text_a.casefold(), text_b.casefold()))
        pairs.append({"attr_type": " ".join(str(attr).split()), "prompt_pair": [text_a, text_b]})
    return pairs
