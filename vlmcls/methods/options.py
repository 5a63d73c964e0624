"""What a caller hands a run besides images and classes: each method's own options, and the shared context.

``MethodOptions(methods={"fudd": {"k": 5}, "tip": {"support": "shots/"}})`` — the options of each method by its
name, as ``{key: value}`` (values typed or as text) or as the method's typed config (``FuddConfig(k=5)``). They are
turned into typed configs once, when the options are made, so a typo fails at once with the method's valid keys.
The shared fields are what no single method owns: the LLM client, the prompt folder, the domain hint, whether to
explain, and the API's ready-made objects (a ``DescriptorSet``, the templates or sentences themselves).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .registry import METHODS, build_config, did_you_mean, get_record

__all__ = ["MethodOptions", "as_options"]


@dataclass
class MethodOptions:
    """Everything a run may need besides images and classes (each stage reads its own config)."""

    methods: Mapping[str, Any] = field(default_factory=dict)  # method name -> {key: value} or its typed config
    llm: Any = None  # an LLMClient for the stages that ask an LLM
    prompts_dir: str | None = None
    domain_hint: str | None = None
    explain: bool = False
    # The API's objects that are not options of one method (a path or a set name goes to the method's option):
    descriptors: Any = None  # a DescriptorSet (a path: cbd.descriptors)
    templates: str | list[str] | None = None  # the templates themselves (a set name or file: templates.templates)
    sentences: dict[str, list[str]] | None = None  # ready-made sentences per class (overrides the templates)

    def __post_init__(self) -> None:
        given = {name: value for name, value in dict(self.methods or {}).items()}
        unknown = [name for name in given if name not in METHODS]
        if unknown:
            raise ConfigError(f"options for unknown method '{unknown[0]}'.{did_you_mean(unknown[0], METHODS)} "
                              f"Valid: {', '.join(METHODS)}.")
        # the API's shortcuts: a path or a set name is the option of the method that reads it
        if isinstance(self.descriptors, (str, Path)):
            given["cbd"] = {**_as_dict(given.get("cbd")), "descriptors": self.descriptors}
            self.descriptors = None
        if isinstance(self.templates, (str, Path)):
            given["templates"] = {**_as_dict(given.get("templates")), "templates": str(self.templates)}
            self.templates = None
        self._configs = {name: build_config(get_record(name), value) for name, value in given.items()}
        self.methods = given

    def config(self, name: str) -> Any:
        """The typed config of method ``name``: the one built from the given options, else its defaults."""
        found = self._configs.get(name)
        if found is None:
            found = self._configs[name] = build_config(get_record(name))
        return found

    def given(self) -> dict[str, Any]:
        """The typed configs of the methods whose options were given."""
        return {name: self._configs[name] for name in self.methods}

    def with_method(self, name: str, **values: Any) -> "MethodOptions":
        """A copy with some of ``name``'s options set (the others kept)."""
        methods = dict(self.methods)
        methods[name] = {**_as_dict(methods.get(name), name), **values}
        return dataclasses.replace(self, methods=methods)

    def with_head_aggregation(self, spec: str, aggregation: str) -> "MethodOptions":
        """A copy whose spec's head scores with ``aggregation`` (the API's ``aggregation=`` shortcut)."""
        from .spec import parse_spec

        return self.with_method(parse_spec(spec).resolve(self).head, aggregation=aggregation)

    def without(self, names: Any) -> "MethodOptions":
        """A copy without the options of the methods named (eval: a spec gets only the refiners it names)."""
        dropped = set(names)
        return dataclasses.replace(self, methods={k: v for k, v in self.methods.items() if k not in dropped})


def _as_dict(value: Any, name: str | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigError(f"options for method '{name}' must be a mapping of its keys or its config; "
                      f"got '{type(value).__name__}'.")


def as_options(options: MethodOptions | Mapping[str, Any] | None, **shared: Any) -> MethodOptions:
    """The API's ``options=``: a MethodOptions, or ``{"fudd": {"k": 5}}`` / ``{"fudd": FuddConfig(k=5)}``."""
    if options is None:
        return MethodOptions(**shared)
    if isinstance(options, MethodOptions):
        return dataclasses.replace(options, **shared) if shared else options
    if isinstance(options, Mapping):
        return MethodOptions(methods=options, **shared)
    raise ConfigError(f"options must be a MethodOptions or a mapping {{method: {{key: value}}}}; "
                      f"got '{type(options).__name__}'.")
