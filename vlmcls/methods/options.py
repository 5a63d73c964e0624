"""What a caller hands a run besides images and classes: the shared context and the method settings.

Settings are the flat namespace of the registry's typed configs (:func:`vlmcls.methods.registry.setting_fields`):
the named fields here and in :class:`RefinerOptions` are the common ones, ``extra`` holds the rest by field name
(``fudd_k``, ``max_pairs``, …); a key no config declares is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["MethodOptions", "RefinerOptions"]


@dataclass
class RefinerOptions:
    """The refiners' settings; a refiner runs when the spec names it (or, in ``classify``, its input is given)."""

    support: str | Path | None = None  # Tip-Adapter: a folder of labelled shots (class sub-folders)
    tip_alpha: float | None = None  # None = REFERENCE.md default (1.0), or the tuned value with tune=True
    tip_beta: float | None = None
    tune: bool = False  # pick α, β by leave-one-out on the support set (never on the images classified)
    self_cache: bool = False  # TFUP-style cache from the unlabelled images themselves
    self_cache_kl_weight: str = "reference"  # TFUP's row-scaled KL weight, or "exp": 2 · exp(−KL) (adapters.unsupervised)
    label_space: Sequence[str] | str | Path | None = None  # labels the Fréchet mean may predict (file or list)
    hierarchy: str | Path | None = None  # metric (a): parent/child edges
    distances: str | Path | None = None  # metric (b): a named distance matrix
    self_metric: bool = False  # metric (c): derived from the label names' text embeddings
    frechet_top_k: int | None = None  # keep each image's k most probable classes in the Fréchet sum
    frechet_scale: float | None = None  # P = softmax(scale · cos); None = the model's logit scale (100 for CLIP)

    @property
    def frechet(self) -> bool:
        return bool(self.hierarchy or self.distances or self.self_metric)


@dataclass
class MethodOptions:
    """Everything a run may need besides images and classes (each stage reads the settings it declares)."""

    templates: str | list[str] | None = None  # a template set name, a file, or the templates themselves
    aggregation: str | None = None  # mean_similarity | mean_embedding; None = the method's own default
    sentences: dict[str, list[str]] | None = None  # ready-made sentences per class (overrides the templates)
    descriptors: Any = None  # a DescriptorSet or a path to a CbD descriptor JSON
    llm: Any = None  # an LLMClient for the stages that ask an LLM
    prompts_dir: str | None = None
    domain_hint: str | None = None
    seed: int = 0
    explain: bool = False
    refiners: RefinerOptions = field(default_factory=RefinerOptions)
    extra: dict[str, Any] = field(default_factory=dict)  # any other setting, by its config field name

    @classmethod
    def from_settings(cls, settings: dict[str, Any], **shared: Any) -> "MethodOptions":
        """Options from a flat settings mapping (what the CLI's method flags give): each key lands where it is
        read — a named field, a refiner field, or ``extra``. ``shared``: llm, prompts_dir, domain_hint, explain."""
        named = {f.name for f in dataclasses.fields(cls)} - {"refiners", "extra", "llm", "sentences"}
        refiner_fields = {f.name for f in dataclasses.fields(RefinerOptions)}
        return cls(
            **{k: v for k, v in settings.items() if k in named},
            refiners=RefinerOptions(**{k: v for k, v in settings.items() if k in refiner_fields}),
            extra={k: v for k, v in settings.items() if k not in named and k not in refiner_fields},
            **shared,
        )

    def settings(self) -> dict[str, Any]:
        """The flat settings mapping the typed configs are built from (``extra`` wins over the named fields)."""
        # A DescriptorSet object (the API's) is read from the options themselves; settings hold files.
        descriptor_file = self.descriptors if isinstance(self.descriptors, (str, Path)) else None
        templates = self.templates if isinstance(self.templates, (str, Path)) else None  # a list: read as given
        named = {"templates": templates, "aggregation": self.aggregation, "descriptors": descriptor_file,
                 "seed": self.seed}
        refiners = {f.name: getattr(self.refiners, f.name) for f in dataclasses.fields(self.refiners)}
        return {**named, **refiners, **self.extra}
