"""Scoring methods by name: each turns image features and class names into logits (+ explanations).

``classify`` runs one method; ``eval`` runs several on the same image features. A method is a function
``(classifier, feats [N, D], class_names, options) -> MethodOutput`` registered in :data:`METHODS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from .errors import ConfigError
from .refine import RefinerOptions

if TYPE_CHECKING:
    from .api import Classifier

__all__ = ["MethodOptions", "MethodOutput", "METHODS", "register_method", "run_method", "method_names"]


@dataclass
class MethodOptions:
    """Everything a method may need besides images and classes (each method reads what it uses)."""

    templates: str | list[str] | None = None  # templates: a set name, a file, or the templates themselves
    aggregation: str | None = None  # mean_similarity | mean_embedding; None = the method's own default
    sentences: dict[str, list[str]] | None = None  # ready-made sentences per class (overrides the method's own)
    descriptors: Any = None  # a DescriptorSet or a path to a CbD descriptor JSON (cbd)
    llm: Any = None  # an LLMClient for methods that ask an LLM (cbd without descriptors, fudd)
    prompts_dir: str | None = None
    domain_hint: str | None = None
    seed: int = 0
    explain: bool = False
    refiners: RefinerOptions = field(default_factory=RefinerOptions)  # Tip-Adapter, TFUP cache, Fréchet mean
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific settings (fudd_k, max_pairs, …)


@dataclass
class MethodOutput:
    """What a method produced for N images and C classes."""

    logits: torch.Tensor  # [N, C]
    probs: torch.Tensor  # [N, C]
    explanations: list[dict | None] | None = None  # per image, when asked for
    llm_calls: int = 0
    llm_tokens: int = 0
    seconds: float = 0.0
    warnings: list[dict] = field(default_factory=list)  # rows for things that went wrong but did not stop the run
    info: dict[str, Any] = field(default_factory=dict)  # small JSON-able facts for the run summary
    weights: torch.Tensor | None = None  # [C, D] class text weights, for methods linear in the image features
    text_feats: torch.Tensor | None = None  # [T, D] the sentences behind the weights (for explanations)
    artifacts: dict[str, Any] = field(default_factory=dict)  # larger products to export (descriptors, pairs)


MethodFn = Callable[["Classifier", torch.Tensor, list[str], MethodOptions], MethodOutput]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


def method_names() -> list[str]:
    return list(METHODS)


def run_method(name: str, clf: "Classifier", image_feats: torch.Tensor, class_names: list[str], options: MethodOptions | None = None) -> MethodOutput:
    """Run one method by name and time it."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'. Valid: {', '.join(METHODS)}.")
    started = time.perf_counter()
    out = METHODS[name](clf, image_feats, class_names, options or MethodOptions())
    out.seconds = time.perf_counter() - started
    return out


def _score_sentences(clf: "Classifier", image_feats: torch.Tensor, per_class: dict[str, list[str]], aggregation: str) -> MethodOutput:
    from .scoring import ClassTexts, class_text_weights

    texts = ClassTexts.from_mapping(per_class)
    text_feats = clf.encoder.encode_texts(texts.texts)  # [T, D]
    weights = class_text_weights(text_feats, texts.owner, len(texts.class_names), aggregation)  # [C, D]
    logits, probs = clf.score(image_feats, weights)
    return MethodOutput(logits, probs, info={"texts": len(texts.texts)}, weights=weights, text_feats=text_feats)


@register_method("name")
def _name(clf, image_feats, class_names, options):
    from .templates import wordify

    return _score_sentences(clf, image_feats, {c: [wordify(c)] for c in class_names}, options.aggregation or "mean_embedding")


@register_method("templates")
def _templates(clf, image_feats, class_names, options):
    from .templates import apply_templates, load_templates, wordify

    if options.sentences is not None:
        missing = [c for c in class_names if c not in options.sentences]
        if missing:
            raise ConfigError(f"no sentences for classes: {', '.join(repr(m) for m in missing)}")
        per_class = {c: list(options.sentences[c]) or [wordify(c)] for c in class_names}
        return _score_sentences(clf, image_feats, per_class, options.aggregation or "mean_similarity")
    tmpl = options.templates
    templates = list(tmpl) if isinstance(tmpl, (list, tuple)) else load_templates(tmpl or "small")
    per_class = {c: apply_templates(templates, c) for c in class_names}
    return _score_sentences(clf, image_feats, per_class, options.aggregation or "mean_embedding")


def _refined(clf, image_feats, class_names, options, refiners: RefinerOptions) -> MethodOutput:
    from dataclasses import replace

    from .refine import apply_refiners

    only = replace(options, refiners=refiners)
    out = METHODS["templates"](clf, image_feats, class_names, only)
    out, _ = apply_refiners(clf, image_feats, class_names, out, only, "templates")
    return out


@register_method("tip")
def _tip(clf, image_feats, class_names, options):
    """Templates + the Tip-Adapter cache of the support folder (so eval can compare the two)."""
    ref = options.refiners
    if ref.support is None:
        raise ConfigError("method 'tip' needs a support folder of labelled shots: --support DIR.")
    return _refined(clf, image_feats, class_names, options,
                    RefinerOptions(support=ref.support, tip_alpha=ref.tip_alpha, tip_beta=ref.tip_beta, tune=ref.tune))


@register_method("tfup")
def _tfup(clf, image_feats, class_names, options):
    """Templates + a TFUP-style cache built from the images themselves (no labels)."""
    return _refined(clf, image_feats, class_names, options, RefinerOptions(self_cache=True))


from . import methods_llm  # noqa: E402,F401  (registers cbd, waffle, cupl, fudd)
