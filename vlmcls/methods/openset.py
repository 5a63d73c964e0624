"""The open world (``unknown``): "none of these", several labels per image, decided last over the final scores.

One refiner that runs after every other stage. It scores how sure each image is that it shows one of the classes:

- no negatives (``unknown.source=none``): MCM, the largest softmax of the cosines at temperature τ;
- with negatives: NegLabel's score, the classes' share of a softmax where negative texts compete with them. The
  negatives are words of a shipped vocabulary (``vlmcls/data/negative_vocabulary.txt``, WordNet lemmas of a public
  domain word list), the ones farthest from the run's classes chosen per run as NegLabel does, and near-miss
  phrases an LLM gives per class (``prompts/negatives.toml``; cached; exported as ``negatives.json`` and read back
  from ``unknown.negatives``, a file a person can edit). A negative naming a listed class is dropped with a warning.

The threshold comes from the run's own scores, without labels: ``unknown.recall`` of the in-list images should keep
their class (see :func:`vlmcls.adapters.open_set.recall_threshold`), unless ``unknown.threshold`` fixes it. With
``unknown.reject`` an image below the threshold is answered ``unknown.word``; its best class stays in its top-k.

``unknown.multi_label``: every class is decided on its own and the row carries ``labels`` with a score each.
SigLIP-style models (sigmoid scores) keep the classes whose own sigmoid is ≥ 0.5. CLIP-style models score class c
against the negative evidence, σ(l_c − logsumexp of the negatives' logits) (without negatives: the cosine), and
keep the classes that clear the threshold set, as above, from the run's top-class scores at ``unknown.recall``.
The top class is always among the labels, except that with ``unknown.reject`` an image answered unknown has none.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..llm.descriptors import ErrorRow, parse_descriptor_list, read_class_lists
from ..errors import ConfigError
from ..llm.client import Usage
from ..llm.prompts import load_prompt
from ..templates import wordify
from .pipeline import BatchScores, RunContext, RunReport, merge_notes
from .registry import MethodRecord, REFINER, option, register, templates_head

if TYPE_CHECKING:
    import torch

__all__ = ["UnknownConfig", "load_negatives_file", "load_vocabulary", "negative_requests", "ask_negatives",
           "VOCABULARY_PATH"]

log = logging.getLogger(__name__)

PROMPT_NAME = "negatives"
VOCABULARY_PATH = Path(__file__).resolve().parents[1] / "data" / "negative_vocabulary.txt"
SOURCES = ("auto", "none", "vocabulary", "llm", "vocabulary+llm")
NEGATIVE_TEMPLATE = "a photo of a {}."  # how a negative word or phrase is put to the text encoder


@dataclass
class UnknownConfig:
    reject: bool = option(False, "Answer 'unknown' (unknown.word) for images that show none of the classes; each row "
                          "gets an unknown_score.", flag="--unknown")
    multi_label: bool = option(False, "Decide every class on its own: each row gets labels with a score each.",
                               flag="--multi-label")
    source: str = option("auto", "Negative evidence: none (MCM), vocabulary, llm, vocabulary+llm; auto = vocabulary, "
                         "plus the LLM's near misses when an LLM endpoint is configured or a negatives file is given.",
                         choices=SOURCES)
    negatives: Path | None = option(None, "Near-miss negatives, JSON {class: [phrase, …]} (as --export writes "
                                    "negatives.json) or one per line; read instead of asking the LLM.",
                                    file="file", flag="--negatives")
    recall: float = option(0.95, "Share of in-list images that should keep their class; the threshold is set from "
                           "the run's own scores, without labels.", minimum=0.0, maximum=1.0, was="--unknown-recall")
    threshold: float | None = option(None, "A fixed threshold on the unknown score (instead of one set from "
                                     "unknown.recall).", minimum=0.0, maximum=1.0)
    word: str = option("unknown", "The label given to images that show none of the classes.")
    vocabulary: Path | None = option(None, "A word list (one per line) to mine negatives from instead of the "
                                     "shipped one.", file="file")
    vocabulary_size: int = option(10000, "How many vocabulary words NegLabel keeps: those farthest from the classes.",
                                  minimum=1)
    estimator: str = option("quantile", "How the threshold is set from the run's scores: mixture (two Gaussians, "
                            "the upper one taken as the in-list images; falls back to quantile when they are not "
                            "clearly apart) or quantile (every image taken as in-list; the default: a mixture reads "
                            "confusable pairs as a second population).", choices=("mixture", "quantile"))
    groups: int = option(100, "NegLabel's grouping: the negatives are split into this many groups and the scores "
                         "averaged.", minimum=1)
    temperature: float = option(1.0, "MCM's temperature τ on the cosines (the paper: 1).", minimum=1e-6)
    prompt_file: Path | None = option(None, "A prompt file for the near-miss question (default: 'negatives').",
                                      file="file")


# -- negatives ------------------------------------------------------------------------------------------------


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """The words of a vocabulary file (one per line, '#' comments), de-duplicated, order kept."""
    from ..sources.textfiles import read_text_file

    path = Path(path) if path is not None else VOCABULARY_PATH
    text = read_text_file(path, "vocabulary file")
    words = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not words:
        raise ConfigError(f"unknown.vocabulary '{path}' holds no words; give a file with one word per line.")
    return list(dict.fromkeys(words))


def load_negatives_file(path: str | Path) -> dict[str, list[str]]:
    """Negatives per class from JSON ``{class: [phrase, …]}``, or one phrase per line (kept under ``"*"``)."""
    from ..sources.textfiles import read_text_file

    path = Path(path)
    if path.suffix.lower() == ".json":
        found = {k: [s.strip() for s in v if s.strip()] for k, v in
                 read_class_lists(path, "negatives file", "negative").items()}
    else:
        text = read_text_file(path, "negatives file")
        found = {"*": [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]}
    if not any(found.values()):
        raise ConfigError(f"unknown.negatives '{path}' holds no negatives; give JSON {{\"class\": [\"phrase\", …]}} "
                          "or one phrase per line, or leave the option out to ask the LLM.")
    return found


def negative_requests(class_names: Sequence[str], prompt: Any, domain_hint: str | None) -> dict[str, Any]:
    prompt.check_supports({"class_name", "domain_hint"}, {"class_name"})
    return {name: prompt.render(class_name=name, domain_hint=domain_hint) for name in dict.fromkeys(class_names)}


def ask_negatives(class_names: Sequence[str], client: Any, prompt: Any, domain_hint: str | None = None
                  ) -> tuple[dict[str, list[str]], list[ErrorRow], Usage]:
    """Near-miss negatives per class from the LLM (cached like every answer); a class whose answer failed gets none
    and a row."""
    requests = negative_requests(class_names, prompt, domain_hint)
    usage, rows, found = Usage(), [], {}
    answers = client.complete_many(list(requests.values()))
    for name, answer in zip(requests, answers):
        if usage.record(answer) is None:  # the one accounting step (vlmcls.llm.Usage.record)
            rows.append(ErrorRow(name, "negatives", "error", f"{answer} This class gets no near-miss negatives."))
            found[name] = []
            continue
        try:
            found[name] = parse_descriptor_list(answer.text)
        except Exception as exc:  # a hostile answer: nothing from this class, the run goes on
            found[name] = []
            rows.append(ErrorRow(name, "negatives", "warning", f"unusable answer ({exc})."))
    return found, rows, usage


def _llm_configured(client: Any) -> bool:
    """Whether a user pointed vlmcls at an LLM (an endpoint or a key), so the default may ask it."""
    if client is None:
        return False
    config = client.config
    return bool(config.base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get(config.api_key_env))


def _without_classes(per_class: dict[str, list[str]], class_names: Sequence[str], report: RunReport
                     ) -> list[str]:
    """Every negative once, without those that name a listed class (each dropped with a warning row)."""
    listed = {n.lower() for n in class_names} | {wordify(n).lower() for n in class_names}
    kept: dict[str, None] = {}
    for owner, phrases in per_class.items():
        for phrase in phrases:
            words = {phrase.lower(), phrase.lower().removeprefix("a ").removeprefix("an ").strip()}
            if words & listed:
                report.warnings.append(ErrorRow(owner, "negatives", "warning",
                                                f"negative '{phrase}' names a listed class; dropped.").to_dict())
                continue
            kept[phrase] = None
    return list(kept)


def _sources(config: UnknownConfig, context: RunContext) -> set[str]:
    if config.source == "auto":
        wanted = {"vocabulary"}
        if config.negatives is not None or _llm_configured(context.llm):
            wanted.add("llm")
        return wanted
    return set() if config.source == "none" else set(config.source.split("+"))


def _llm_negatives(config: UnknownConfig, context: RunContext, report: RunReport) -> list[str]:
    if config.negatives is not None:
        per_class = load_negatives_file(config.negatives)
    else:
        if context.llm is None:
            raise ConfigError("unknown.source asks for the LLM's near-miss negatives: configure an LLM, or give a "
                              "negatives file in unknown.negatives.")
        prompt = load_prompt(PROMPT_NAME, context.options.prompts_dir, config.prompt_file)
        per_class, rows, usage = ask_negatives(context.class_names, context.llm, prompt, context.options.domain_hint)
        report.warnings.extend(r.to_dict() for r in rows)
        report.add_usage(usage)
    report.artifacts["negatives"] = per_class
    return _without_classes(per_class, context.class_names, report)


def _vocabulary_negatives(config: UnknownConfig, context: RunContext, class_feats: "torch.Tensor",
                          report: RunReport) -> tuple[list[str], "torch.Tensor"]:
    """NegLabel's mining: the vocabulary's words farthest from the classes (words that are class names left out)."""
    from ..adapters.open_set import farthest_negatives
    from ..encode.embeddings import l2_normalize

    words = load_vocabulary(config.vocabulary)
    listed = {n.lower() for n in context.class_names} | {wordify(n).lower() for n in context.class_names}
    overlap = [w for w in words if w.lower() in listed]
    if overlap:
        log.info("unknown: %d vocabulary words are class names; left out: %s", len(overlap), ", ".join(overlap[:5]))
        report.info["unknown_vocabulary_overlap"] = len(overlap)
        words = [w for w in words if w.lower() not in listed]
    feats = context.text.encode_texts([NEGATIVE_TEMPLATE.format(w) for w in words])  # [W, D]
    chosen = farthest_negatives(_torch(feats), l2_normalize(_torch(class_feats).double()).float(),
                                config.vocabulary_size).tolist()
    return [words[i] for i in chosen], _torch(feats)[chosen]


def _torch(value: Any) -> "torch.Tensor":
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value


# -- the stage ------------------------------------------------------------------------------------------------


@dataclass
class UnknownStage:
    neg_feats: "torch.Tensor | None"  # [M, D] unit negative texts (None: MCM)
    neg_names: list[str]  # [M]
    scale: float  # the model's logit scale: negatives score as scale · cos, like the classes
    temperature: float
    groups: int
    class_names: list[str]
    score_rule: str  # softmax | sigmoid
    reject: bool
    multi_label: bool
    word: str
    threshold: float | None = None  # on the unknown score; set by prepare from the run's scores
    label_threshold: float | None = None  # on the per-class multi-label scores (CLIP-style models)

    def unknown_scores(self, feats: "torch.Tensor", logits: "torch.Tensor") -> "torch.Tensor":
        """[B]: how sure each image is that it shows one of the classes (higher: more in-list)."""
        from ..adapters.open_set import mcm_score, neglabel_score

        if self.neg_feats is None:
            return mcm_score(logits.double() / self.scale, self.temperature)
        return neglabel_score(logits, self._negative_logits(feats), self.groups)

    def _negative_logits(self, feats: "torch.Tensor") -> "torch.Tensor":
        return self.scale * feats.double() @ self.neg_feats.double().T  # [B, M]

    def class_scores(self, feats: "torch.Tensor", logits: "torch.Tensor") -> "torch.Tensor":
        """[B, C] per-class multi-label scores (see the module docstring)."""
        import torch

        if self.score_rule == "sigmoid":
            return torch.sigmoid(logits.double())
        if self.neg_feats is None:
            return logits.double() / self.scale
        evidence = torch.logsumexp(self._negative_logits(feats), dim=1, keepdim=True)  # [B, 1]
        return torch.sigmoid(logits.double() - evidence)

    def apply(self, feats: "torch.Tensor", upstream: BatchScores, explain: bool) -> BatchScores:
        logits = upstream.logits
        score = self.unknown_scores(feats, logits)  # [B]
        top = logits.argmax(dim=1).tolist()  # [B]
        labels = list(upstream.labels) if upstream.labels is not None else [self.class_names[c] for c in top]
        rejected = [False] * len(labels)
        if self.reject and self.threshold is not None:
            rejected = (score < self.threshold).tolist()
            labels = [self.word if r else label for r, label in zip(rejected, labels)]
        label_sets = None
        if self.multi_label:
            label_sets = self._label_sets(self.class_scores(feats, logits), top, rejected)
        notes = upstream.notes
        if explain:
            notes = merge_notes(upstream.notes, "unknown", self._explain(feats, score, rejected))
        return BatchScores(logits, notes, labels, counts={"unknown_images": float(sum(rejected))},
                           unknown_score=score.float(), label_sets=label_sets)

    def _label_sets(self, scores: "torch.Tensor", top: list[int], rejected: list[bool]) -> list[list]:
        cut = 0.5 if self.score_rule == "sigmoid" else self.label_threshold
        out = []
        for n, row in enumerate(scores.tolist()):
            if rejected[n]:
                out.append([])
                continue
            keep = {c for c, s in enumerate(row) if cut is not None and s >= cut} | {top[n]}
            out.append(sorted(((self.class_names[c], round(row[c], 6)) for c in keep), key=lambda p: -p[1]))
        return out

    def _explain(self, feats: "torch.Tensor", score: "torch.Tensor", rejected: list[bool]) -> list[dict]:
        out = []
        near = None
        if self.neg_feats is not None:
            sims = feats.double() @ self.neg_feats.double().T  # [B, M]
            near = sims.topk(min(3, sims.shape[1]), dim=1)
        for n in range(feats.shape[0]):
            entry: dict[str, Any] = {"unknown_score": round(float(score[n]), 6), "rejected": bool(rejected[n])}
            if self.threshold is not None:
                entry["threshold"] = round(float(self.threshold), 6)
            if near is not None:
                entry["nearest_negatives"] = [{"negative": self.neg_names[int(j)], "similarity": round(float(v), 4)}
                                              for v, j in zip(near.values[n], near.indices[n])]
            out.append(entry)
        return out

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.reject:
            info["unknown_images"] = int(counts.get("unknown_images", 0))
        return info


def _run_scores(stage: UnknownStage, positions, feats, scores: BatchScores):
    """A gather's collect: each image's unknown score and its top class's multi-label score."""
    unknown = stage.unknown_scores(feats, scores.logits)
    top = stage.class_scores(feats, scores.logits).max(dim=1).values if stage.multi_label else None
    return positions, unknown, top


def _prepare_unknown(context: RunContext, config: UnknownConfig, upstream, gather, report: RunReport) -> UnknownStage:
    import numpy as np
    import torch

    from ..adapters.open_set import recall_threshold

    if not (config.reject or config.multi_label):
        raise ConfigError("refiner 'unknown' needs unknown.reject or unknown.multi_label turned on.")
    side = context.text
    sources = _sources(config, context)
    names: list[str] = []
    feats: list[torch.Tensor] = []
    if "vocabulary" in sources:
        class_feats = upstream.weights if upstream.weights is not None else side.encode_texts(
            [NEGATIVE_TEMPLATE.format(wordify(c)) for c in context.class_names])
        words, word_feats = _vocabulary_negatives(config, context, class_feats, report)
        names += words
        feats.append(word_feats.float())
    if "llm" in sources:
        phrases = _llm_negatives(config, context, report)
        if phrases:
            names += phrases
            feats.append(_torch(side.encode_texts([NEGATIVE_TEMPLATE.format(p) for p in phrases])).float())
    neg_feats = torch.cat(feats) if feats else None
    stage = UnknownStage(neg_feats, names, side.logit_scale, config.temperature, config.groups, list(context.class_names),
                         side.score_rule, config.reject, config.multi_label, config.word)
    report.info["unknown_score"] = "neglabel" if neg_feats is not None else "mcm"
    report.info["unknown_negatives"] = len(names)
    parts = gather(upstream, functools.partial(_run_scores, stage))  # a global pass over the run's scores
    order = np.argsort(np.concatenate([np.asarray(p) for p, _, _ in parts]), kind="stable")
    scores = np.concatenate([u.numpy() for _, u, _ in parts])[order]
    if config.threshold is not None:
        stage.threshold = float(config.threshold)
        report.info["unknown_threshold_from"] = "unknown.threshold"
    else:
        fit = recall_threshold(scores, config.recall, estimator=config.estimator)
        stage.threshold = fit.threshold
        report.info.update(unknown_threshold_from=f"recall {config.recall} ({fit.estimator})",
                           unknown_estimated_in_list=round(fit.in_list_share, 4))
    report.info["unknown_threshold"] = round(stage.threshold, 6)
    if config.multi_label and side.score_rule != "sigmoid":
        top = np.concatenate([t.numpy() for _, _, t in parts])[order]
        stage.label_threshold = recall_threshold(top, config.recall, estimator=config.estimator,
                                                 bounded=stage.neg_feats is not None).threshold
        report.info["multi_label_threshold"] = round(stage.label_threshold, 6)
    return stage


def _estimate_unknown(context, config: UnknownConfig, image_feats, head=None) -> dict[str, Any]:
    if "llm" not in _sources(config, context) or config.negatives is not None or context.llm is None:
        return {}
    prompt = load_prompt(PROMPT_NAME, context.options.prompts_dir, config.prompt_file)
    return {"near-miss negatives": context.llm.estimate(
        list(negative_requests(context.class_names, prompt, context.options.domain_hint).values()))}


register(MethodRecord(
    name="unknown", kind=REFINER, summary="The open world: 'none of these' (MCM / NegLabel negatives) and multi-label",
    text_source="negative words (shipped vocabulary) and near-miss negatives (LLM or a file)", config=UnknownConfig,
    prepare=_prepare_unknown, cost="encodes the vocabulary once (cached); one LLM call per class for near misses "
    "(cached), unless a negatives file is given; one pass over the run's scores",
    asks_llm=lambda config: config.negatives is None and config.source in ("llm", "vocabulary+llm"),
    estimate=_estimate_unknown, head_when_alone=templates_head, order=100,
    implied_by=lambda config: config.reject or config.multi_label, decides=True,
    requires="option unknown.reject or unknown.multi_label",
))
