"""The linear text heads: ``name``, ``templates``, ``cbd`` (Classification by Description) and ``waffle``.

Each turns class text into one weight per class, ``text_weights [C, D]``, and scores ``logits = s · f Wᵀ (+ b)``.
``cbd`` takes descriptors from a file or asks the LLM, and scores with the mean of similarities (REFERENCE.md);
``waffle`` is WaffleCLIP's random-descriptor baseline that any LLM method must beat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..llm.descriptors import DescriptorSet, estimate_descriptors, generate_descriptors
from ..errors import ConfigError
from ..sources.limits import bound_row, capped_lists, current_limits, cut_texts
from ..llm.prompts import load_prompt
from ..templates import apply_templates, load_templates, wordify
from .pipeline import BatchScores, RunContext, RunReport
from .registry import HEAD, MethodRecord, option, register

if TYPE_CHECKING:
    import torch

__all__ = ["LinearHead", "linear_head", "resolve_descriptors"]

log = logging.getLogger(__name__)



def _aggregation() -> Any:
    """The aggregation option every head has (each its own, with its own default)."""
    return option(None, "mean_similarity (CbD) or mean_embedding (CLIP ensembles); default per method.",
                  choices=("mean_similarity", "mean_embedding"), was="--aggregation")


@dataclass
class DescriptorExplainer:
    """Per image: the descriptors that contributed most to its top class and to the runner-up."""

    text_feats: torch.Tensor  # [T, D] the sentences, class after class
    starts: list[int]  # [C] first sentence row of each class
    labels: list[list[str]]  # [C] what to show for each sentence (the descriptor, or the sentence)
    class_names: list[str]
    limit: int = 3

    def explain(self, feats: torch.Tensor, probs: torch.Tensor) -> list[dict]:
        """feats [B, D] and probs [B, C], numpy arrays or tensors alike."""
        from ..scoring import top_k

        sims = feats @ self.text_feats.T  # [B, T]
        top2 = top_k(probs, 2)[1].tolist()  # [B, 2]
        out = []
        for n in range(feats.shape[0]):
            entry = {}
            for role, c in zip(("top", "runner_up"), top2[n]):
                row = sims[n, self.starts[c] : self.starts[c] + len(self.labels[c])].tolist()
                order = sorted(range(len(row)), key=lambda j: -row[j])[: self.limit]
                entry[role] = {"class": self.class_names[c],
                               "descriptors": [{"descriptor": self.labels[c][j], "similarity": round(row[j], 4)}
                                               for j in order]}
            out.append(entry)
        return out


@dataclass
class LinearHead:
    """A fixed linear text head: logits = scale · f Wᵀ (+ bias)."""

    weights: torch.Tensor  # [C, D]
    logit_scale: float
    logit_bias: float | None
    score_rule: str
    text_feats: torch.Tensor | None = None  # [T, D]
    explainer: DescriptorExplainer | None = None

    def apply(self, feats: torch.Tensor, upstream: BatchScores | None, explain: bool) -> BatchScores:
        from ..scoring import compute_logits, probabilities

        logits = compute_logits(feats, self.weights, self.logit_scale, self.logit_bias)  # [B, C]
        notes = None
        if explain and self.explainer is not None:
            notes = [{"descriptors": e} for e in self.explainer.explain(feats, probabilities(logits, self.score_rule))]
        return BatchScores(logits, notes)

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {}


def linear_head(context: RunContext, per_class: dict[str, list[str]], aggregation: str, report: RunReport,
                descriptor_labels: dict[str, list[str]] | None = None) -> LinearHead:
    """Encode each class's sentences and aggregate them into one weight per class. Past the bounds (texts per
    class, characters per text: vlmcls.sources.limits) the rest is dropped, with one warning row per bound."""
    from ..scoring import ClassTexts, class_text_weights

    per_class = _bounded(per_class, report)
    texts = ClassTexts.from_mapping(per_class)
    text_feats = context.text.encode_texts(texts.texts)  # [T, D]
    weights = class_text_weights(text_feats, texts.owner, len(texts.class_names), aggregation)  # [C, D]
    report.info["texts"] = len(texts.texts)
    explainer = None
    if descriptor_labels is not None:
        starts, labels, pos = [], [], 0
        for name, sentences in per_class.items():
            shown = descriptor_labels.get(name) or [name]
            starts.append(pos)
            labels.append([shown[j] if j < len(shown) else sentences[j] for j in range(len(sentences))])
            pos += len(sentences)
        explainer = DescriptorExplainer(text_feats, starts, labels, list(per_class))
    side = context.text
    return LinearHead(weights, side.logit_scale, side.logit_bias, side.score_rule, text_feats, explainer)


def _bounded(per_class: dict[str, list[str]], report: RunReport) -> dict[str, list[str]]:
    """At most ``descriptors_per_class`` texts per class, each cut to ``chars_per_text`` characters (before the
    tokenizer sees it: it is quadratic in a word's length, and the model reads 77 tokens anyway)."""
    limits = current_limits()
    per_class, dropped = capped_lists(per_class, limits.descriptors_per_class)
    if dropped:
        report.warnings.append(bound_row("descriptors", dropped, limits.descriptors_per_class, "texts", "class",
                                         "descriptors_per_class"))
    cut: dict[str, int] = {}  # class -> characters dropped from its texts
    kept: dict[str, list[str]] = {}
    for name, sentences in per_class.items():
        kept[name], n_cut, chars = cut_texts(sentences, limits.chars_per_text)
        if n_cut:
            cut[name] = chars
    if cut:
        report.warnings.append(bound_row("descriptors", cut, limits.chars_per_text, "characters", "text",
                                         "chars_per_text", items="class"))
        return kept
    return per_class


# -- name and templates ---------------------------------------------------------------------------------------


@dataclass
class NameConfig:
    aggregation: str | None = _aggregation()


def _prepare_name(context, config: NameConfig, upstream, gather, report) -> LinearHead:
    per_class = {c: [wordify(c)] for c in context.class_names}
    return linear_head(context, per_class, config.aggregation or "mean_embedding", report)


register(MethodRecord(
    name="name", kind=HEAD, summary="the bare class name (CLIP-standard baseline)", text_source="class names",
    numpy=True,
    config=NameConfig, prepare=_prepare_name, cost="one text per class, encoded once",
))


@dataclass
class TemplatesConfig:
    templates: str | None = option(None, "Template set: name, photo, small (default), imagenet80, or a file with "
                                   "one '{}' template per line.", flag="--templates/-t", file="maybe")
    aggregation: str | None = _aggregation()


def _prepare_templates(context, config: TemplatesConfig, upstream, gather, report) -> LinearHead:
    sentences = context.options.sentences
    if sentences is not None:  # ready-made sentences per class (the API's shortcut)
        missing = [c for c in context.class_names if c not in sentences]
        if missing:
            raise ConfigError(f"no sentences for classes: {', '.join(repr(m) for m in missing)}")
        per_class = {c: list(sentences[c]) or [wordify(c)] for c in context.class_names}
        return linear_head(context, per_class, config.aggregation or "mean_similarity", report)
    given = context.options.templates  # the API may hand the templates themselves
    templates = list(given) if isinstance(given, (list, tuple)) else load_templates(config.templates or "small")
    per_class = {c: apply_templates(templates, c) for c in context.class_names}
    return linear_head(context, per_class, config.aggregation or "mean_embedding", report)


register(MethodRecord(
    name="templates", kind=HEAD, summary="prompt templates averaged per class (CLIP's ensembles)",
    numpy=True,
    text_source="prompt templates", config=TemplatesConfig, prepare=_prepare_templates,
    cost="templates × classes texts, encoded once",
))


# -- cbd and waffle -------------------------------------------------------------------------------------------


@dataclass
class CbdConfig:
    descriptors: Path | None = option(None, "CbD descriptor JSON {class: [descriptor, …]} (no LLM needed).",
                                      file="file", flag="--descriptors")
    prompt_file: Path | None = option(None, "A prompt file for the descriptor questions (default: the "
                                      "'descriptors' prompt).", file="file",
                                      was=("--descriptor-prompt-file", "--prompt-file"))
    aggregation: str | None = _aggregation()


def resolve_descriptors(context: RunContext, config: CbdConfig, report: RunReport) -> DescriptorSet:
    """Descriptors from the settings (a DescriptorSet or a CbD JSON file), else from the LLM."""
    given = context.options.descriptors if isinstance(context.options.descriptors, DescriptorSet) else config.descriptors
    if given is not None:
        dset = given if isinstance(given, DescriptorSet) else DescriptorSet.from_json(given)
        selected, rows = dset.for_classes(context.class_names)
        report.warnings.extend(r.to_dict() for r in rows)
        return selected
    prompt = load_prompt("descriptors", context.options.prompts_dir, config.prompt_file)
    dset, rows, usage = generate_descriptors(context.class_names, context.llm, prompt, context.options.domain_hint)
    report.warnings.extend(r.to_dict() for r in rows)
    report.add_usage(usage)
    return dset


def _descriptor_head(context: RunContext, dset: DescriptorSet, aggregation: str | None, report: RunReport) -> LinearHead:
    sentences = {c: dset.sentences(c) for c in context.class_names}
    report.artifacts["descriptors"] = dset.to_dict()
    return linear_head(context, sentences, aggregation or "mean_similarity", report, dset.to_dict())


def _cbd_has_text(context: RunContext, config: CbdConfig) -> bool:
    return config.descriptors is not None or isinstance(context.options.descriptors, DescriptorSet)


def _prepare_cbd(context, config: CbdConfig, upstream, gather, report) -> LinearHead:
    if not _cbd_has_text(context, config) and context.llm is None:
        raise ConfigError("method 'cbd' needs descriptors: option cbd.descriptors (a descriptor file), or an LLM "
                          "(an LLM model and endpoint).")
    return _descriptor_head(context, resolve_descriptors(context, config, report), config.aggregation, report)


def _estimate_cbd(context: RunContext, config: CbdConfig, image_feats, head=None) -> dict[str, Any]:
    if config.descriptors is not None or context.llm is None:
        return {}
    prompt = load_prompt("descriptors", context.options.prompts_dir, config.prompt_file)
    return {"descriptors": estimate_descriptors(context.class_names, context.llm, prompt, context.options.domain_hint)}


def _describe_cbd(class_names, config: CbdConfig, llm, prompts_dir, domain_hint):
    prompt = load_prompt("descriptors", prompts_dir, config.prompt_file)
    return generate_descriptors(class_names, llm, prompt, domain_hint)


register(MethodRecord(
    name="cbd", kind=HEAD, summary="Classification by Description: LLM descriptors, mean of similarities",
    numpy=True,
    text_source="LLM descriptors (or a descriptor file)", config=CbdConfig, prepare=_prepare_cbd,
    cost="one LLM call per class (cached), unless a descriptor file is given",
    asks_llm=lambda config: config.descriptors is None, estimate=_estimate_cbd, describe=_describe_cbd,
))


@dataclass
class WaffleConfig:
    pairs: int = option(15, "Random word/character descriptor pairs per class.", minimum=1, was="--waffle-pairs")
    seed: int = option(0, "Seed of the random descriptors.", was=("--seed", "--waffle-seed"))
    aggregation: str | None = _aggregation()


def _prepare_waffle(context, config: WaffleConfig, upstream, gather, report) -> LinearHead:
    dset = DescriptorSet.waffle(context.class_names, config.pairs, config.seed)
    return _descriptor_head(context, dset, config.aggregation, report)


register(MethodRecord(
    name="waffle", kind=HEAD, summary="WaffleCLIP: random descriptors, the baseline an LLM must beat",
    numpy=True,
    text_source="random words and characters", config=WaffleConfig, prepare=_prepare_waffle,
    cost="2 × pairs texts per class, encoded once",
    describe=lambda class_names, config, *_: (DescriptorSet.waffle(class_names, config.pairs, config.seed), [], None),
))
