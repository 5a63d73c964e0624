"""The one registry: every method and refiner is one :class:`MethodRecord`, declared beside its code.

A record says where the method's class text comes from, whether it asks an LLM, the kind of stage it adds (which
decides how an engine runs it), its typed config and its cost. Nothing outside ``vlmcls/methods/`` restates these
facts: the CLI builds its method flags from the configs' fields, the engines read the stage kind, the spec parser
reads the names.

Settings are one flat namespace of Python field names (``fudd_k``, ``tip_alpha``, …): a field means the same in
every config that has it, so ``classify`` and ``eval`` take every setting the same way.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError

__all__ = [
    "HEAD",
    "RERANK",
    "REFINER",
    "STAGE_KINDS",
    "MethodRecord",
    "METHODS",
    "register",
    "get_record",
    "method_names",
    "setting",
    "setting_fields",
    "build_config",
    "DEFAULT_METHOD",
    "DEFAULT_COMPARISON",
    "DEFAULT_DESCRIBER",
    "runs_on_numpy",
]

# The three stage kinds; an engine runs each its own way (DESIGN.md, "The method layer").
HEAD = "linear text head"  # logits = scale · f Wᵀ (+ b): one matmul, W broadcast to workers
RERANK = "per-image re-rank"  # re-scores inside each image's top-k with a small table built once on the driver
REFINER = "refiner"  # needs a global pass (support set, all features, a label metric), then applies per image
STAGE_KINDS = (HEAD, RERANK, REFINER)

DEFAULT_METHOD = "templates"  # what classify and the API run when no method is named
DEFAULT_COMPARISON = "name,templates"  # what eval compares when no methods are named
DEFAULT_DESCRIBER = "cbd"  # what `vlmcls describe` writes descriptors with


def setting(default: Any, help: str, *, flag: str | None = None, panel: str = "Method settings",
            minimum: float | None = None) -> Any:
    """A config field with what the CLI needs to declare it as a flag (declared once, here)."""
    return field(default=default, metadata={"help": help, "flag": flag, "panel": panel, "min": minimum})


@dataclass(frozen=True)
class MethodRecord:
    """One method or refiner, declared once."""

    name: str  # the spec word: `cbd`, `fudd`, `tip`
    kind: str  # one of STAGE_KINDS
    summary: str  # one line for help texts
    text_source: str  # where its class text comes from ("-" for refiners that add none)
    config: type  # a dataclass of settings (fields made with `setting`)
    prepare: Callable[..., Any]  # (context, config, upstream pipeline, gather, report) -> a Stage
    cost: str  # what one run costs besides the matmuls, in words
    asks_llm: Callable[[Any], bool] = lambda config: False  # does this config need an LLM client?
    estimate: Callable[..., dict[str, Any]] | None = None  # (context, config, image_feats, head) -> {stage: estimate}
    head_when_alone: Callable[[Any, Any], str] | None = None  # (config, options): the head when named alone
    order: int = 0  # refiners run in this order whatever order a spec names them in
    implied_by: Callable[[Any], bool] | None = None  # classify and the API add this stage when its input is given
    requires: str | None = None  # the input it cannot run without, in words (for errors)
    # (class_names, config, llm, prompts_dir, domain_hint) -> (DescriptorSet, error rows, usage | None): a head
    # whose text is a descriptor set can write one without images (`vlmcls describe`)
    describe: Callable[..., Any] | None = None
    # its prepared stage also runs on numpy arrays: a spec made only of such stages scores in numpy, so a run
    # whose features are all in the store imports no torch (the CLI's edit-and-re-run loop)
    numpy: bool = False


METHODS: dict[str, MethodRecord] = {}


def register(record: MethodRecord) -> MethodRecord:
    if record.kind not in STAGE_KINDS:
        raise ConfigError(f"method '{record.name}' has stage kind '{record.kind}'. Valid: {', '.join(STAGE_KINDS)}.")
    if not dataclasses.is_dataclass(record.config):
        raise ConfigError(f"method '{record.name}': its config must be a dataclass, got '{record.config!r}'.")
    METHODS[record.name] = record
    return record


def get_record(name: str) -> MethodRecord:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'. Valid: {', '.join(METHODS)}.") from None


def method_names(kind: str | None = None) -> list[str]:
    return [name for name, record in METHODS.items() if kind is None or record.kind == kind]


def setting_fields() -> dict[str, dataclasses.Field]:
    """Every setting of every registered config, by Python field name (a field shared by configs appears once)."""
    out: dict[str, dataclasses.Field] = {}
    for record in METHODS.values():
        for f in dataclasses.fields(record.config):
            out.setdefault(f.name, f)
    return out


def build_config(record: MethodRecord, settings: dict[str, Any]) -> Any:
    """The record's typed config from a flat settings mapping; values are converted to the field's type (a
    ``KEY=VALUE`` from the command line arrives as text). Unknown keys are checked by :func:`check_settings`."""
    hints = typing.get_type_hints(record.config)
    values = {}
    for f in dataclasses.fields(record.config):
        if f.name in settings and settings[f.name] is not None:
            values[f.name] = _convert(f.name, settings[f.name], hints[f.name])
    return record.config(**values)


def check_settings(settings: dict[str, Any]) -> None:
    """Every key must be some config's field (the error lists the valid ones), every value of its field's type."""
    known = setting_fields()
    unknown = [k for k in settings if k not in known]
    if unknown:
        raise ConfigError(f"unknown method setting '{unknown[0]}'. Valid: {', '.join(sorted(known))}.")
    for record in METHODS.values():
        build_config(record, settings)


def _convert(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` names (int, float, bool, str, Path, or unions with None/list)."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(hint) is list:  # list[str] itself, not a union holding it
        options = [hint]
    if any(isinstance(value, typing.get_origin(o) or o) for o in options):
        return value
    for target in options:
        origin = typing.get_origin(target) or target
        try:
            if origin is bool:
                if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    return value.strip().lower() in ("1", "true", "yes", "on")
                if isinstance(value, (int, float)) and value in (0, 1):
                    return bool(value)
                continue
            if origin is int and not isinstance(value, bool):
                if isinstance(value, float) and not value.is_integer():
                    continue
                return int(value)
            if origin is float and not isinstance(value, bool):
                return float(value)
            if origin is Path and isinstance(value, (str, Path)):
                return Path(value)
            if origin is str and isinstance(value, (str, Path)):
                return str(value)
            if origin is list and isinstance(value, (list, tuple)):
                return list(value)
        except (TypeError, ValueError):
            continue
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"setting '{name}' is '{value}'; it must be {names}.")


def runs_on_numpy(names: Any) -> bool:
    """Whether every stage named can score numpy arrays (see ``MethodRecord.numpy``)."""
    return all(get_record(name).numpy for name in names)
