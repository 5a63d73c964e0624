"""The one registry: every method and refiner is one :class:`MethodRecord`, declared beside its code.

A record says where the method's class text comes from, whether it asks an LLM, the kind of stage it adds (which
decides how an engine runs it), its typed options and its cost. Nothing outside ``vlmcls/methods/`` restates these
facts: the CLI reads the records for ``--opt`` and the few promoted flags, the engines read the stage kind, the spec
parser reads the names.

**Options belong to their method.** Each record's ``config`` is a dataclass whose fields are made with
:func:`option`: a type, a default, one doc line, bounds, whether it names a file. A user writes
``METHOD.KEY=VALUE`` (``fudd.k=5``); :func:`build_config` turns that text straight into the typed config and every
error names the option as written (``fudd.k``). A package adds methods through the ``vlmcls.methods`` entry point.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

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
    "option",
    "option_fields",
    "build_config",
    "parse_option",
    "promoted_flags",
    "renamed_flags",
    "RETIRED_FLAGS",
    "did_you_mean",
    "type_text",
    "file_options",
    "load_plugins",
    "DEFAULT_METHOD",
    "DEFAULT_COMPARISON",
    "DEFAULT_DESCRIBER",
    "runs_on_numpy",
    "summary_keys",
    "templates_head",
]

log = logging.getLogger(__name__)

# The three stage kinds; an engine runs each its own way (DESIGN.md, "The method layer").
HEAD = "linear text head"  # logits = scale · f Wᵀ (+ b): one matmul, W broadcast to workers
RERANK = "per-image re-rank"  # re-scores inside each image's top-k with a small table built once on the driver
REFINER = "refiner"  # needs a global pass (support set, all features, a label metric), then applies per image
STAGE_KINDS = (HEAD, RERANK, REFINER)

DEFAULT_METHOD = "templates"  # what classify and the API run when no method is named
DEFAULT_COMPARISON = "name,templates"  # what eval compares when no methods are named
DEFAULT_DESCRIBER = "cbd"  # what `vlmcls describe` writes descriptors with

ENTRY_POINT_GROUP = "vlmcls.methods"  # third-party methods register through this entry point group


def option(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None,
           choices: tuple[str, ...] | None = None, file: str | None = None, flag: str | None = None,
           was: str | tuple[str, ...] = ()) -> Any:
    """A method option: a dataclass field with its doc line and what checks and the CLI need.

    ``file``: "file" or "dir" when the value names one (preflight checks it exists, ``--watch`` watches a file);
    "maybe" when it may name a file or be text (a template set name, a comma list): a file it names is an input.
    ``flag``: a promoted flag (``--descriptors``) that every command running methods also takes for it.
    ``was``: flags this option had before options belonged to their method (they fail with the new spelling).
    """
    return field(default=default, metadata={"doc": doc, "min": minimum, "max": maximum, "choices": choices,
                                            "file": file, "flag": flag, "was": (was,) if isinstance(was, str) else was})


@dataclass(frozen=True)
class MethodRecord:
    """One method or refiner, declared once."""

    name: str  # the spec word: `cbd`, `fudd`, `tip`
    kind: str  # one of STAGE_KINDS
    summary: str  # one line for help texts
    text_source: str  # where its class text comes from ("-" for refiners that add none)
    config: type  # a dataclass of options (fields made with `option`)
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
    # (config) -> labels it may answer with that are not among the classes (the Fréchet mean's label space), or None
    answers_beyond: Callable[[Any], Any] | None = None
    shown: tuple[str, ...] = ()  # the facts of its run info the terminal summary shows (e.g. images_moved)
    # a decision over the final scores (the open world's `unknown`): eval adds it to every spec it compares when
    # its options turn it on, as classify does, so each method is scored with the same decision
    decides: bool = False
    source: str = "vlmcls"  # the distribution that registered it (a plugin's name for third-party methods)


METHODS: dict[str, MethodRecord] = {}


def register(record: MethodRecord) -> MethodRecord:
    if record.kind not in STAGE_KINDS:
        raise ConfigError(f"method '{record.name}' has stage kind '{record.kind}'. Valid: {', '.join(STAGE_KINDS)}.")
    if not dataclasses.is_dataclass(record.config):
        raise ConfigError(f"method '{record.name}': its config must be a dataclass, got '{record.config!r}'.")
    if not record.name.isidentifier() or "+" in record.name:
        raise ConfigError(f"method name '{record.name}' must be one word (letters, digits, '_'), as specs join "
                          "names with '+' and options are written METHOD.KEY=VALUE.")
    METHODS[record.name] = record
    return record


def did_you_mean(word: str, valid: Any) -> str:
    """' Did you mean 'x'?' for the closest valid word, or ''."""
    close = difflib.get_close_matches(str(word), list(valid), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def get_record(name: str) -> MethodRecord:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'.{did_you_mean(name, METHODS)} "
                          f"Valid: {', '.join(METHODS)}.") from None


def method_names(kind: str | None = None) -> list[str]:
    return [name for name, record in METHODS.items() if kind is None or record.kind == kind]


def option_fields(record: MethodRecord) -> dict[str, dataclasses.Field]:
    """The record's options by key (``k`` of ``fudd.k``)."""
    return {f.name: f for f in dataclasses.fields(record.config)}


def build_config(record: MethodRecord, given: Mapping[str, Any] | Any = None) -> Any:
    """The record's typed config from ``{key: value}`` (values as typed, or as the text of ``KEY=VALUE``), or the
    config itself when one is given. Every key is checked against the record's options and every value against
    its option's type and bounds; errors name the option as ``method.key``."""
    if isinstance(given, record.config):
        return _checked(record, given)
    if given is not None and dataclasses.is_dataclass(given) and not isinstance(given, type):
        raise ConfigError(f"options for method '{record.name}' are a '{type(given).__name__}'; "
                          f"use a '{record.config.__name__}' or a mapping of its keys.")
    given = dict(given or {})
    fields = option_fields(record)
    for key in given:
        if key not in fields:
            raise ConfigError(f"'{record.name}' has no option '{key}'.{did_you_mean(key, fields)} "
                              f"Valid: {_keys(record)}. See `vlmcls methods {record.name}`.")
    hints = typing.get_type_hints(record.config)
    values = {key: _convert(f"{record.name}.{key}", value, hints[key]) for key, value in given.items()
              if value is not None}
    return _checked(record, record.config(**values))


def _keys(record: MethodRecord) -> str:
    return ", ".join(option_fields(record)) or "(none)"


def _checked(record: MethodRecord, config: Any) -> Any:
    """Bounds and choices of every option, named ``method.key``."""
    for f in dataclasses.fields(record.config):
        value = getattr(config, f.name)
        if value is None or isinstance(value, bool):
            continue
        meta, name = f.metadata, f"{record.name}.{f.name}"
        if meta.get("min") is not None and isinstance(value, (int, float)) and value < meta["min"]:
            raise ConfigError(f"{name} must be ≥ {meta['min']}; got '{value}'.")
        if meta.get("max") is not None and isinstance(value, (int, float)) and value > meta["max"]:
            raise ConfigError(f"{name} must be ≤ {meta['max']}; got '{value}'.")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{name} is '{value}'.{did_you_mean(value, meta['choices'])} "
                              f"Valid: {', '.join(meta['choices'])}.")
    return config


def parse_option(text: str) -> tuple[str, str, str]:
    """``'fudd.k=5'`` -> ('fudd', 'k', '5'); the method and key are checked against the registry."""
    target, sep, value = str(text).partition("=")
    method, dot, key = target.strip().partition(".")
    if not sep or not dot or not method or not key:
        raise ConfigError(f"option '{text}' is not METHOD.KEY=VALUE, e.g. fudd.k=5 "
                          "(`vlmcls methods NAME` lists a method's options).")
    record = get_record(method)
    if key not in option_fields(record):
        raise ConfigError(f"'{method}' has no option '{key}'.{did_you_mean(key, option_fields(record))} "
                          f"Valid: {_keys(record)}. See `vlmcls methods {method}`.")
    return method, key, value


def promoted_flags() -> dict[str, tuple[str, str, dataclasses.Field]]:
    """Every promoted flag: ``{"--descriptors": ("cbd", "descriptors", field)}``."""
    out: dict[str, tuple[str, str, dataclasses.Field]] = {}
    for record in METHODS.values():
        for key, f in option_fields(record).items():
            if f.metadata.get("flag"):
                out[f.metadata["flag"].split("/")[0]] = (record.name, key, f)
    return out


# Flags that went away without becoming one option (``--self-cache`` is a spec word now) -> their new spelling;
# each module adds its own.
RETIRED_FLAGS: dict[str, str] = {"--method-option": "--opt METHOD.KEY=VALUE (e.g. --opt fudd.k=5)"}


def renamed_flags() -> dict[str, str]:
    """Flags that options had before they belonged to their method -> how to write them now."""
    owners: dict[str, list[str]] = {}
    for record in METHODS.values():
        for key, f in option_fields(record).items():
            for old in f.metadata.get("was") or ():
                owners.setdefault(old, []).append(f"{record.name}.{key}")
    out = dict(RETIRED_FLAGS)
    for old, names in owners.items():
        if len(names) == 1:
            out[old] = f"--opt {names[0]}=…"
        else:  # an option every head has: name the pattern and the methods
            key = names[0].split(".", 1)[1]
            out[old] = f"--opt METHOD.{key}=… (METHOD: {', '.join(n.split('.')[0] for n in names)})"
    return out


def file_options(configs: Mapping[str, Any]) -> list[tuple[str, str, Path]]:
    """The options that name files or folders and are set: ``[(method.key, "file"|"dir", path)]`` — what preflight
    checks and ``--watch`` watches, read from the records rather than listed by the commands."""
    out = []
    for name, config in configs.items():
        for key, f in option_fields(get_record(name)).items():
            value = getattr(config, key)
            kind = f.metadata.get("file")
            if kind and isinstance(value, (str, Path)) and str(value):
                if kind == "maybe" and not Path(value).expanduser().is_file():
                    continue  # a name or a list, not a file
                out.append((f"{name}.{key}", "file" if kind == "maybe" else kind, Path(value)))
    return out


def _convert(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` names (int, float, bool, str, Path, or unions with None/list)."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(hint) is list:  # list[str] itself, not a union holding it
        options = [hint]
    if any(isinstance(value, typing.get_origin(o) or o) for o in options) and not (
            isinstance(value, bool) and bool not in options):
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
        except (TypeError, ValueError, OverflowError):
            continue
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{name} is '{value}'; it must be {names}.")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    return {int: "an integer", float: "a number", bool: "true or false", str: "text", Path: "a path",
            list: "a list"}.get(origin, getattr(origin, "__name__", str(origin)))


def type_text(record: MethodRecord, key: str) -> str:
    """An option's type in words, for `vlmcls methods NAME`."""
    hint = typing.get_type_hints(record.config)[key]
    parts = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(hint) is list:
        parts = [hint]
    return " | ".join({int: "int", float: "float", bool: "bool", str: "text", Path: "path"}.get(
        typing.get_origin(p) or p, "list") for p in parts)


def templates_head(config: Any, options: Any) -> str:
    """``head_when_alone`` of a refiner named alone (``tip``, ``gda``, …): it refines the template ensemble."""
    return "templates"


def summary_keys(names: Any) -> list[str]:
    """The run-info keys the records named want in the terminal summary, in spec order."""
    return [key for name in names if name in METHODS for key in METHODS[name].shown]


def runs_on_numpy(names: Any) -> bool:
    """Whether every stage named can score numpy arrays (see ``MethodRecord.numpy``)."""
    return all(get_record(name).numpy for name in names)


_PLUGINS: dict[str, str] = {}  # entry point name -> "ok" or why it failed to load


def load_plugins() -> dict[str, str]:
    """Import every ``vlmcls.methods`` entry point once: a module that registers its records on import, or a
    callable that is handed :func:`register`. A plugin that fails to load is logged and skipped (vlmcls itself keeps
    working); ``vlmcls methods`` shows why."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _PLUGINS:
            continue
        before = set(METHODS)
        try:
            loaded = ep.load()
            if callable(loaded):
                loaded(register)
        except Exception as exc:  # a broken plugin must not take vlmcls down
            _PLUGINS[ep.name] = f"failed to load ({type(exc).__name__}: {exc})"
            log.warning("method plugin '%s' (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.name
        for name in set(METHODS) - before:
            METHODS[name] = dataclasses.replace(METHODS[name], source=dist)
        _PLUGINS[ep.name] = "ok"
    return dict(_PLUGINS)
