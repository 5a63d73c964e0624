"""Class descriptors: ask the LLM (Classification by Description), parse its answers, import and export them.

Also the text side of FuDD (differential descriptions for pairs of classes, in the FuDD pair format) and the
WaffleCLIP baseline (random-word and random-character descriptors, the same for every class).
Classes are always matched by name, never by position.
"""

from __future__ import annotations

import logging
import os
import random
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .parse import (  # noqa: F401  (the parsers, as callers import them)
    HostileAnswerError,
    _dedupe,
    check_answer_size,
    parse_descriptor_list,
    parse_differential,
)
from ..errors import ConfigError, LLMError, LLMResponseError
from .client import CallEstimate, Completion, LLMClient, Messages, Usage
from .prompts import PromptTemplate
from ..templates import wordify

__all__ = [
    "DescriptorSet",
    "ErrorRow",
    "read_class_lists",
    "cbd_sentence",
    "parse_descriptor_list",
    "parse_differential",
    "waffle_descriptors",
    "descriptor_requests",
    "pair_requests",
    "generate_descriptors",
    "generate_pair_descriptions",
    "estimate_descriptors",
    "pair_key",
]

log = logging.getLogger(__name__)

_CBD_VERB_PREFIXES = ("has", "often", "typically", "may", "can")


@dataclass
class ErrorRow:
    """One reported problem: a class (or pair) whose text fell back, and why."""

    item: str  # the class name, or "a | b" for a pair
    stage: str  # "descriptors", "differential" or "import"
    severity: str  # "error": the LLM failed; "warning": unusable answer or fallback
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# -- the CbD sentence rule ------------------------------------------------------------------------------------
def cbd_sentence(class_name: str, descriptor: str) -> str:
    """The text CbD encodes for one descriptor: ``"{class}, which {phrase}"``, the class name ``wordify``'d.

    The reference rule, quirks included: "is {d}" when d starts with the letter 'a' (one letter is tested, so
    "antennae" also gets "is"), "{d}" when it starts with has/often/typically/may/can, "is {d}" when it starts
    with "used", else "has {d}". The test is case-sensitive, as in the reference.
    """
    if descriptor.startswith("a"):
        phrase = f"is {descriptor}"
    elif descriptor.startswith(_CBD_VERB_PREFIXES):
        phrase = descriptor
    elif descriptor.startswith("used"):
        phrase = f"is {descriptor}"
    else:
        phrase = f"has {descriptor}"
    return f"{wordify(class_name)}, which {phrase}"


def read_class_lists(path: str | os.PathLike, what: str, item: str, fmt_note: str = "") -> dict[str, list[str]]:
    """A JSON file mapping each class name to a list of strings (CbD descriptors, CuPL sentences), checked.
    ``what`` names the file in errors ("descriptor file"), ``item`` one string of it ("descriptor")."""
    from ..sources.textfiles import load_json_file

    path = Path(path)
    data = load_json_file(path, what)  # size-limited, BOM/UTF-16 aware, nesting-checked: ConfigError, never a crash
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} '{path}' holds a {type(data).__name__}; expected an object "
            f'{{"class name": ["{item}", ...]}}{" " + fmt_note if fmt_note else ""}.'
        )
    for key, value in data.items():
        if not isinstance(value, list):
            raise ConfigError(
                f"{what} '{path}': the value for '{key}' is a {type(value).__name__}, not a list of strings. "
                f"Every class must map to a list of {item} strings (an empty list is allowed)."
            )
        for index, entry in enumerate(value):
            if not isinstance(entry, str):
                raise ConfigError(
                    f"{what} '{path}': '{key}'[{index}] is a {type(entry).__name__}, not a string. "
                    f"Every class must map to a list of {item} strings (an empty list is allowed)."
                )
    return data


# -- the descriptor set ---------------------------------------------------------------------------------------
class DescriptorSet(Mapping[str, list[str]]):
    """An ordered mapping class name -> descriptors; the CbD JSON file format on disk."""

    def __init__(self, items: Mapping[str, Iterable[str]] | None = None):
        self._items: dict[str, list[str]] = {}
        for name, descriptors in (items or {}).items():
            self._items[str(name)] = _dedupe(str(d) for d in descriptors)

    def __getitem__(self, class_name: str) -> list[str]:
        return self._items[class_name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"DescriptorSet({len(self)} classes)"

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(ds) for name, ds in self._items.items()}

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "DescriptorSet":
        """Read a CbD descriptor file ``{"class": ["descriptor", ...], ...}``."""
        return cls(read_class_lists(path, "descriptor file", "descriptor",
                                    "(the Classification-by-Description format)"))

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the CbD descriptor file (UTF-8, class order kept); returns the path."""
        from ..output import write_json  # never leaves a half-written file where the old one was

        return write_json(path, self.to_dict(), indent=2)

    def for_classes(self, class_names: Sequence[str]) -> tuple["DescriptorSet", list[ErrorRow]]:
        """The descriptors of ``class_names``, in that order, matched by name.

        A class missing from the set, or with an empty list, falls back to its bare name (a missing one also
        gives a warning row). Names in the set that are not in ``class_names`` are ignored with a warning.
        """
        rows: list[ErrorRow] = []
        wanted = set(class_names)
        selected: dict[str, list[str]] = {}
        for name in class_names:
            if name not in self._items:
                rows.append(ErrorRow(name, "import", "warning", "no descriptors for this class; using its name alone"))
                selected[name] = [name]
            elif not self._items[name]:
                selected[name] = [name]  # the reference does the same for empty lists (Food101, Places365)
            else:
                selected[name] = list(self._items[name])
        extra = [n for n in self._items if n not in wanted]
        if extra:
            shown = ", ".join(f"'{n}'" for n in extra[:5]) + (" ..." if len(extra) > 5 else "")
            log.warning("%d descriptor entries match no class and are ignored: %s", len(extra), shown)
        missing = [r.item for r in rows]
        if missing:
            log.warning("%d classes have no descriptors and use their name alone: %s", len(missing), missing[:5])
        return DescriptorSet(selected), rows

    def sentences(self, class_name: str) -> list[str]:
        """The CbD texts of one class (its bare name when it has no descriptors)."""
        descriptors = self._items.get(class_name) or []
        if not descriptors or descriptors == [class_name]:
            return [wordify(class_name)]
        return [cbd_sentence(class_name, d) for d in descriptors]

    @classmethod
    def waffle(cls, class_names: Sequence[str], n_pairs: int = 15, seed: int = 0) -> "DescriptorSet":
        """WaffleCLIP's baseline: the same random descriptors for every class."""
        shared = waffle_descriptors(n_pairs=n_pairs, seed=seed, class_names=class_names)
        return cls({name: shared for name in class_names})



# -- WaffleCLIP ----------------------------------------------------------------------------------------------
# A small built-in vocabulary (no download): WaffleCLIP draws from any English word list; which one matters little.
_WAFFLE_WORDS = (
    "anchor apron basket beacon blanket bottle branch bridge bucket button cabin candle canvas carpet castle "
    "cellar chain chimney circle cliff cloud collar copper corner cotton cradle crystal curtain desert diamond "
    "dinner engine fabric feather fence field flame forest fountain garden gravel hammer harbor helmet island "
    "jacket kettle ladder lantern leather lemon marble meadow mirror needle orbit paddle paper pebble pencil "
    "pillow pocket powder puzzle rabbit ribbon river saddle shadow shelter silver socket spiral sponge stable "
    "summer tunnel timber tower valley velvet violin wagon window winter wooden yellow"
).split()
_WAFFLE_CHARACTERS = string.ascii_lowercase + string.digits


def waffle_descriptors(
    n_pairs: int = 15, seed: int = 0, class_names: Sequence[str] | None = None
) -> list[str]:
    """WaffleCLIP random descriptors: ``n_pairs`` (random words, random characters) pairs, 2 * n_pairs in all.

    Lengths follow the class names as in the reference: as many words as a class name has on average, words
    cut to the average word length, and character noise shaped like a name ("xk3q, 9zrf"). The same seed gives
    the same list; every class gets this same list.
    """
    if n_pairs < 1:
        raise ConfigError(f"n_pairs '{n_pairs}' must be >= 1 (WaffleCLIP uses 15).")
    names = [wordify(n) for n in (class_names or [])] or ["random word"]
    words_per_name = [len(n.split()) or 1 for n in names]
    n_words = max(1, round(sum(words_per_name) / len(names)))
    word_lengths = [len(w) for n in names for w in n.split()] or [5]
    word_length = max(2, round(sum(word_lengths) / len(word_lengths)))
    rng = random.Random(seed)
    words: list[str] = []
    noise: list[str] = []
    # Redraw repeats (short cut-off words collide), since a descriptor set keeps each text once; bounded so a
    # tiny vocabulary can never loop forever.
    for _ in range(50 * n_pairs):
        if len(words) >= n_pairs:
            break
        candidate = " ".join(rng.choice(_WAFFLE_WORDS)[:word_length] for _ in range(n_words))
        if candidate not in words:
            words.append(candidate)
    while len(noise) < n_pairs:
        candidate = ", ".join("".join(rng.choice(_WAFFLE_CHARACTERS) for _ in range(word_length)) for _ in range(n_words))
        if candidate not in noise:
            noise.append(candidate)
    return [text for pair in zip(words, noise) for text in pair]


# -- asking the LLM ------------------------------------------------------------------------------------------
def descriptor_requests(
    class_names: Sequence[str], prompt: PromptTemplate, domain_hint: str | None = None
) -> dict[str, Messages]:
    """The rendered descriptor prompt of each class (the exact messages sent and hashed into the cache key)."""
    prompt.check_supports({"class_name", "domain_hint"}, {"class_name"})
    if domain_hint and "domain_hint" not in prompt.placeholders:
        prompt.check_supports({"class_name", "domain_hint"}, {"class_name", "domain_hint"})
    return {name: prompt.render(class_name=name, domain_hint=domain_hint) for name in class_names}


def pair_key(a: str, b: str) -> str:
    """The key of a pair in the FuDD format ("a_b"), with the pair in sorted order."""
    first, second = sorted((a, b))
    return f"{first}_{second}"


def pair_requests(
    pairs: Iterable[tuple[str, str]], prompt: PromptTemplate, domain_hint: str | None = None
) -> dict[tuple[str, str], Messages]:
    """The rendered differential prompt of each unordered pair (sorted, so (a, b) and (b, a) share one call)."""
    prompt.check_supports({"class_a", "class_b", "domain_hint"}, {"class_a", "class_b"})
    if domain_hint and "domain_hint" not in prompt.placeholders:
        prompt.check_supports({"class_a", "class_b", "domain_hint"}, {"class_a", "class_b", "domain_hint"})
    requests: dict[tuple[str, str], Messages] = {}
    for a, b in pairs:
        if a == b:
            continue
        first, second = sorted((a, b))
        requests[(first, second)] = prompt.render(class_a=first, class_b=second, domain_hint=domain_hint)
    return requests


def _ask_and_parse(
    client: LLMClient,
    requests: Mapping[Any, Messages],
    parse: Callable[[Any, str], Any],
) -> tuple[dict[Any, Any], dict[Any, str], dict[Any, str], Usage]:
    """Ask every request, re-ask once the ones whose answer parses to nothing.

    Returns (parsed results, LLM failures, unusable answers, usage of this run).
    """
    usage = Usage()
    items = list(requests)
    parsed: dict[Any, Any] = {}
    failed: dict[Any, str] = {}
    unusable: dict[Any, str] = {}

    def account(item: Any, result: Completion | LLMError) -> Completion | None:
        if isinstance(result, LLMError):
            failed[item] = str(result)
        return usage.record(result)

    def settle(batch: list[Any], results: list[Completion | LLMError], last_try: bool, variant: int) -> list[Any]:
        """Record parsed answers; return the items to ask again."""
        retry: list[Any] = []
        for item, result in zip(batch, results):
            if isinstance(result, LLMResponseError):  # an answer came, but not one to use: ask again, as below
                usage.calls += 1
                value, why = None, str(result)
            else:
                completion = account(item, result)
                if completion is None:
                    continue
                try:
                    value, why = parse(item, completion.text), None
                except LLMResponseError as exc:  # too deep or too big: never replayed from the cache
                    client.forget(requests[item], variant)
                    value, why = None, str(exc)
            if value:
                parsed[item] = value
            elif not last_try:
                retry.append(item)
            elif why is not None:
                unusable[item] = f"two answers had nothing usable (last: {why})"
            else:
                snippet = " ".join(completion.text.split())[:80]
                unusable[item] = f"two answers had nothing usable (last: '{snippet}')"
        return retry

    retries_before = client.usage.retries
    again = settle(items, client.complete_many([requests[item] for item in items]), last_try=False, variant=0)
    if again:
        log.info("re-asking %d requests whose answer had nothing usable", len(again))
        settle(again, client.complete_many([requests[item] for item in again], variant=1), last_try=True, variant=1)
    usage.retries = client.usage.retries - retries_before  # approximate if other threads share the client
    return parsed, failed, unusable, usage


def generate_descriptors(
    class_names: Sequence[str],
    client: LLMClient,
    prompt: PromptTemplate,
    domain_hint: str | None = None,
) -> tuple[DescriptorSet, list[ErrorRow], Usage]:
    """Descriptors for every class from the LLM (cached), and the rows of classes that fell back to their name.

    An empty or unparsable answer is asked once more; if that fails too, or the LLM fails after its retries,
    the class falls back to its bare name and gets a row. When no class at all gets descriptors, LLMError.
    """
    names = list(dict.fromkeys(class_names))  # duplicates would cost calls and mean nothing
    requests = descriptor_requests(names, prompt, domain_hint)
    parsed, failed, unusable, usage = _ask_and_parse(client, requests, lambda _, text: parse_descriptor_list(text))
    if names and not parsed:  # a run on class names alone would pass for a CbD run: stop instead
        first = next(iter({**unusable, **failed}.items()))
        raise LLMError(
            f"no class got descriptors from the LLM at '{client.base_url}' (model '{client.config.model}'); "
            f"for '{first[0]}': {first[1]}"
        )
    rows: list[ErrorRow] = []
    result: dict[str, list[str]] = {}
    for name in names:
        if name in parsed:
            result[name] = parsed[name]
            continue
        result[name] = [name]
        if name in failed:
            rows.append(ErrorRow(name, "descriptors", "error", f"{failed[name]} Using the class name alone."))
        else:
            rows.append(ErrorRow(name, "descriptors", "warning", f"{unusable[name]}; using the class name alone."))
    for row in rows:
        log.info("descriptors for '%s' fell back to the class name: %s", row.item, row.message)
    return DescriptorSet(result), rows, usage


def generate_pair_descriptions(
    pairs: Iterable[tuple[str, str]],
    client: LLMClient,
    prompt: PromptTemplate,
    domain_hint: str | None = None,
) -> tuple[dict[str, dict[str, Any]], list[ErrorRow], Usage]:
    """FuDD differential descriptions for unordered class pairs, from the LLM (cached).

    Returns ``{"a_b": {"classes": [a, b], "prompt_pairs": [{"attr_type", "prompt_pair": [text_a, text_b]}]}}``
    with each pair sorted by name; a pair that failed is absent (FuDD then falls back to its template) and has
    an error row.
    """
    requests = pair_requests(pairs, prompt, domain_hint)
    parsed, failed, unusable, usage = _ask_and_parse(
        client, requests, lambda pair, text: parse_differential(text, pair[0], pair[1])
    )
    result: dict[str, dict[str, Any]] = {}
    rows: list[ErrorRow] = []
    for (a, b) in requests:
        if (a, b) in parsed:
            result[pair_key(a, b)] = {"classes": [a, b], "prompt_pairs": parsed[(a, b)]}
        elif (a, b) in failed:
            rows.append(ErrorRow(f"{a} | {b}", "differential", "error", failed[(a, b)]))
        else:
            rows.append(ErrorRow(f"{a} | {b}", "differential", "warning", unusable[(a, b)]))
    return result, rows, usage


def estimate_descriptors(
    class_names: Sequence[str], client: LLMClient, prompt: PromptTemplate, domain_hint: str | None = None
) -> CallEstimate:
    """What ``generate_descriptors`` would spend now, for --dry-run (re-asks of bad answers not included)."""
    return client.estimate(list(descriptor_requests(list(dict.fromkeys(class_names)), prompt, domain_hint).values()))
