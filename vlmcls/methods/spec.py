"""The one method-spec grammar: ``HEAD[+STAGE…]``, e.g. ``cbd+fudd+tip``; ``eval`` takes a comma list of them.

A spec names one head (a linear text head: ``name``, ``templates``, ``cbd`` …), then at most one re-rank
(``fudd``) and any refiners (``tip``, ``tfup``, ``frechet``). A re-rank or refiner named alone runs on the head its
record picks (``fudd`` → ``cbd`` with descriptors or an LLM, else ``templates``). Stages run in the registry's
order whatever order they are written in, so ``cbd+tip+fudd`` and ``cbd+fudd+tip`` mean the same pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError
from .registry import HEAD, METHODS, RERANK, did_you_mean, method_names

__all__ = ["MethodSpec", "parse_spec", "parse_specs", "spec_help"]


@dataclass(frozen=True)
class MethodSpec:
    """A parsed spec: the head and the later stages in run order; ``text`` is what the user wrote."""

    text: str
    head: str | None  # None: chosen from the settings by the first stage's record (see resolve)
    stages: tuple[str, ...]

    def resolve(self, options) -> "MethodSpec":
        """The spec with its head filled in (a re-rank or refiner written alone picks its own from ``options``)."""
        if self.head is not None:
            return self
        first = METHODS[self.stages[0]]
        return MethodSpec(self.text, first.head_when_alone(options.config(first.name), options),
                          self.stages)

    def with_implied(self, options) -> "MethodSpec":
        """The spec plus the refiners whose input the options give (``tip.support`` adds ``tip``), as classify and
        the API have always read them; ``eval`` compares specs exactly as written instead."""
        added = [name for name, record in METHODS.items()
                 if record.implied_by is not None and name not in self.stages and name != self.head
                 and name in options.methods and record.implied_by(options.config(name))]
        if not added:
            return self
        return parse_spec("+".join([self.text, *added]))

    def __str__(self) -> str:
        return self.text


def parse_spec(text: str) -> MethodSpec:
    """``'cbd+fudd+tip'`` -> MethodSpec(head='cbd', stages=('fudd', 'tip')); every word checked against the registry."""
    words = [w.strip() for w in str(text).split("+")]
    if not text or any(not w for w in words):
        raise ConfigError(f"method spec '{text}' has an empty part. Write HEAD[+STAGE…], e.g. 'cbd+fudd+tip'.")
    for word in words:
        if word not in METHODS:
            raise ConfigError(f"unknown method '{word}' in '{text}'.{did_you_mean(word, METHODS)} "
                              f"Valid: {', '.join(method_names())}; "
                              "join stages with '+', e.g. templates+tip.")
    if len(set(words)) != len(words):
        raise ConfigError(f"method spec '{text}' names a stage twice.")
    heads = [w for w in words if METHODS[w].kind == HEAD]
    if len(heads) > 1:
        raise ConfigError(f"method spec '{text}' names two heads ({', '.join(heads)}); a pipeline has one. "
                          f"Heads: {', '.join(method_names(HEAD))}.")
    if heads and words[0] != heads[0]:
        raise ConfigError(f"method spec '{text}' must start with its head '{heads[0]}', e.g. '{heads[0]}+{words[0]}'.")
    later = [w for w in words if METHODS[w].kind != HEAD]
    if sum(METHODS[w].kind == RERANK for w in later) > 1:
        raise ConfigError(f"method spec '{text}' names more than one re-rank stage.")
    later.sort(key=lambda w: (METHODS[w].kind != RERANK, METHODS[w].order))
    return MethodSpec(str(text), heads[0] if heads else None, tuple(later))


def spec_help() -> str:
    """One line for the CLI: the heads and the stages the registry holds."""
    later = [name for name, record in METHODS.items() if record.kind != HEAD]
    return (f"A method spec: one head ({', '.join(method_names(HEAD))}) then stages joined by '+' "
            f"({', '.join(later)}), e.g. cbd+fudd+tip. A stage alone runs on its default head.")


def parse_specs(text: str | Sequence[str]) -> list[MethodSpec]:
    """A comma list (or a list) of specs, order kept, repeats dropped."""
    items = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    items = list(dict.fromkeys(n for n in items if n))
    if not items:
        raise ConfigError(f"no method named in '{text}'. Valid: {', '.join(method_names())}.")
    return [parse_spec(item) for item in items]

