"""FuDD (Esfandiarpoor & Bach, ICLR 2024): re-rank each image's ambiguous set with differential descriptions.

Top to bottom, as a run goes:

1. the head (``cbd`` with descriptors or an LLM, else ``templates``; ``fudd.base`` picks another) scores every
   image; its top-``fudd.k`` classes are the image's ambiguous set (``fudd.rank=template`` ranks with the
   reference's single template instead);
2. a gather counts the unordered pairs inside the sets over all images (on Ray: per batch on the workers, summed
   on the driver), most frequent first;
3. the driver asks the LLM once per unique pair (cached; ``max_pairs`` and ``token_budget`` cap it), or reads a
   pair file (class names, or integer indices as in FuDD's released files), and builds the pair table;
4. every batch is re-ranked inside its sets. A class is represented as in the reference (BatsResearch/fudd
   ``prompt_factory.py``): its captions from every pair it forms with the other set members, a pair nobody
   answered contributing the class's template sentence ``"a photo of a {c}."``; the collection is deduplicated as
   written, each sentence ``.capitalize()``d, and the class vector is normalise(mean of their unit embeddings).
   The prediction is the argmax over the set. Re-ranking is vectorised, in chunks of fixed memory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping


from ..llm.descriptors import generate_pair_descriptions, pair_requests
from ..encode.embeddings import to_numpy as _np  # the maths runs in numpy: a cached run needs no torch
from ..errors import ConfigError
from ..sources.limits import bound_row, current_limits
from ..llm.prompts import load_prompt
from .fudd_table import (  # noqa: F401  (FuDD's maths, as callers import them from here)
    FuddResult,
    PairTable,
    _like,
    ambiguous_sets,
    build_pair_table,
    count_pairs,
    explain_moves,
    fudd_template,
    fudd_text,
    most_frequent_pairs,
    rerank,
)
from .heads import LinearHead, linear_head
from .pipeline import BatchScores, Pipeline, RunContext, RunReport, merge_notes
from .registry import HEAD, METHODS, RERANK, MethodRecord, option, register

if TYPE_CHECKING:  # FuDD's maths runs in numpy: a cached run of cbd+fudd imports no torch
    import torch

__all__ = ["FuddConfig", "FuddRerank", "load_pair_file", "fudd_template", "fudd_text", "PairTable", "ambiguous_sets",
           "count_pairs", "build_pair_table", "rerank", "FuddResult", "explain_moves", "most_frequent_pairs"]

log = logging.getLogger(__name__)

_REFERENCE_TEMPLATE = "a photo of a {}."


@dataclass
class FuddConfig:
    k: int = option(10, "Size of each image's ambiguous set (the reference: 10).", minimum=2, was="--fudd-k")
    rank: str = option("base", "Rank the ambiguous set by 'base' (the run's best first scores) or 'template' (the "
                       "reference's single template).", choices=("base", "template"), was="--fudd-rank")
    base: str | None = option(None, "When fudd is named alone: its first-stage head (default cbd when descriptors "
                              "or an LLM exist, else templates). Same as writing HEAD+fudd.", was="--fudd-base")
    max_pairs: int | None = option(None, "Ask about at most this many pairs (most frequent first).", minimum=1,
                                   was="--max-pairs")
    token_budget: int | None = option(None, "Stop asking about pairs once this many tokens are spent.", minimum=1,
                                      was="--token-budget")
    budget_chunk: int = option(8, "With a token budget: pairs asked between two budget checks.", minimum=1,
                               was="--budget-chunk")
    pairs: Path | None = option(None, "FuDD pair JSON to use instead of asking the LLM.", file="file",
                                flag="--pairs")
    prompt_file: Path | None = option(None, "A prompt file for the differential questions (default: the "
                                      "'differential' prompt).", file="file", was="--differential-prompt-file")


def load_pair_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A FuDD pair JSON: {"a_b": {"classes": [a, b], "prompt_pairs": [{"attr_type", "prompt_pair": [ta, tb]}]}}.

    ``a`` and ``b`` are class names or, as in FuDD's released files, integer indices into the class list. An
    entry without ``attr_type`` gets "attribute" (it only labels explanations), as an LLM answer's does. Any other
    shape is a ConfigError naming the entry and the place in it.
    """
    from ..sources.textfiles import load_json_file

    data = load_json_file(path, "pair file")
    expected = "expected {'a_b': {'classes': [a, b], 'prompt_pairs': [{'attr_type': ..., 'prompt_pair': [text_a, text_b]}]}}"
    if not isinstance(data, dict):
        raise ConfigError(f"pair file '{path}' holds a {type(data).__name__}, not FuDD pair JSON: {expected}.")
    for key, entry in data.items():
        where = f"pair file '{path}': entry '{key}' is not a FuDD pair:"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} it is a {type(entry).__name__}, not an object; {expected}.")
        classes = entry.get("classes")
        if not isinstance(classes, list) or len(classes) != 2 or not all(
                isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
            raise ConfigError(f"{where} 'classes' is {_shown(classes)}; it must be two class names or indices. "
                              f"{expected[0].upper()}{expected[1:]}.")
        pairs = entry.get("prompt_pairs", [])
        if not isinstance(pairs, list):
            raise ConfigError(f"{where} 'prompt_pairs' is a {type(pairs).__name__}, not a list; {expected}.")
        for n, pair in enumerate(pairs):
            texts = pair.get("prompt_pair") if isinstance(pair, dict) else None
            if not (isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)):
                raise ConfigError(f"{where} prompt_pairs[{n}] has no 'prompt_pair' of two strings (it is "
                                  f"{_shown(pair)}); {expected}.")
            attr = pair.setdefault("attr_type", "attribute")
            if not isinstance(attr, str):
                raise ConfigError(f"{where} prompt_pairs[{n}]['attr_type'] is {_shown(attr)}, not a string; "
                                  f"{expected}.")
    return data


def _shown(value: Any) -> str:
    """A bad value for a message: its JSON, short."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, (dict, list)) or len(str(value)) < 200 \
        else f"a {type(value).__name__}"
    return f"'{text[:80]}'"


# -- the stage --------------------------------------------------------------------------------------------


@dataclass
class FuddRerank:
    """The prepared re-rank: the pair table and its sentences' embeddings, and the ranking head."""

    fudd_k: int
    table: PairTable
    text_feats: torch.Tensor  # [V, D] unit embeddings of fudd_text(t) for t in table.texts
    ranking: LinearHead | None  # None: rank with the head's own logits
    logit_scale: float
    logit_bias: float | None
    class_names: list[str]

    def apply(self, feats: torch.Tensor, upstream: BatchScores | None, explain: bool) -> BatchScores:
        """Numpy arrays or tensors alike (the head's kind); the re-rank itself runs in numpy."""
        first, f, text_feats = _np(upstream.logits), _np(feats), _np(self.text_feats)  # [B, C], [B, D], [V, D]
        rank_logits = _np(self.ranking.apply(feats, None, False).logits) if self.ranking is not None else first
        sets = ambiguous_sets(rank_logits, self.fudd_k)  # [B, k]
        result = rerank(f, sets, self.table, text_feats, self.logit_scale)
        logits = result.logits + self.logit_bias if self.logit_bias is not None else result.logits
        first_top, new_top = first.argmax(1), logits.argmax(1)
        notes = upstream.notes
        if explain:
            moves = explain_moves(f, first_top, new_top, self.table, text_feats, self.class_names)
            notes = merge_notes(upstream.notes, "differential", moves)
        return BatchScores(_like(logits, feats), notes, counts={"images_moved": int((first_top != new_top).sum())})

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {"images_moved": int(counts.get("images_moved", 0))}


def _pair_counts(positions, feats, scores: BatchScores, *, fudd_k: int, ranking: LinearHead | None):
    """One batch's pairs inside its ambiguous sets, with counts (what a worker sends the driver)."""
    rank_logits = ranking.apply(feats, None, False).logits if ranking is not None else scores.logits
    return count_pairs(ambiguous_sets(_np(rank_logits), fudd_k))


def _merge_counts(parts: list[list[tuple[tuple[int, int], int]]]) -> list[tuple[tuple[int, int], int]]:
    """Sum the batches' pair counts; most frequent first, ties by class index (as count_pairs orders them)."""
    total: Counter = Counter()
    for part in parts:
        for pair, count in part:
            total[pair] += count
    return sorted(total.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))


def _ranking_head(context: RunContext, config: FuddConfig, report: RunReport) -> LinearHead | None:
    if config.rank == "base":
        return None
    if config.rank == "template":  # the reference's first stage: its capitalised template, one per class
        per_class = {c: [fudd_text(fudd_template(c))] for c in context.class_names}
        texts = report.info.get("texts")
        head = linear_head(context, per_class, "mean_embedding", report)
        report.info["texts"] = texts  # the head's count is the run's
        return head
    raise ConfigError(f"fudd.rank is '{config.rank}'. Valid: base (the run's best first scores), template.")


def _report_unmatched(unmatched: list[str], total: int, class_names: list[str], source: Path | None,
                      report: RunReport) -> None:
    """Pairs naming no two of the run's classes: an error when none matched, else a warning row."""
    if not unmatched and total:
        return
    where = f"pair file '{source}'" if source else "the differential descriptions"
    shown = ", ".join(f"'{key}'" for key in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
    valid = f"names from the class list ('{class_names[0]}', ...) or integer indices 0..{len(class_names) - 1} into it"
    if len(unmatched) == total:
        raise ConfigError(f"{where}: none of its {total} pairs names two of this run's classes ({shown}). Pair classes "
                          f"must be {valid}; check that the file belongs to these classes, in this order.")
    report.warnings.append({"item": f"{len(unmatched)} pairs", "stage": "differential", "severity": "warning",
                            "message": f"{where}: {len(unmatched)} of {total} pairs name no two of this run's classes "
                                       f"and were skipped: {shown}. Valid: {valid}."})
    log.warning("%d of %d FuDD pairs match no class of this run: %s", len(unmatched), total, shown)


def _ask_pairs(pairs: list[tuple[str, str]], context: RunContext, config: FuddConfig, report: RunReport) -> dict:
    """Differential descriptions for pairs from the LLM, most frequent first, within the token budget."""
    prompt = load_prompt("differential", context.options.prompts_dir, config.prompt_file)
    budget = config.token_budget
    chunk = len(pairs) if budget is None else config.budget_chunk
    answered: dict[str, dict[str, Any]] = {}
    asked = 0
    for start in range(0, len(pairs), max(1, chunk)):
        if budget is not None and report.llm_tokens >= budget:
            report.warnings.append({"item": f"{len(pairs) - asked} pairs", "stage": "differential", "severity": "warning",
                                    "message": f"token budget {budget} spent; remaining pairs keep their first scores"})
            break
        part = pairs[start : start + chunk]
        result, rows, usage = generate_pair_descriptions(part, context.llm, prompt, context.options.domain_hint)
        asked += len(part)
        answered.update(result)
        report.warnings.extend(r.to_dict() for r in rows)
        report.add_usage(usage)
    report.info["pairs_asked"] = asked
    return answered


def _prepare_fudd(context: RunContext, config: FuddConfig, upstream: Pipeline, gather, report: RunReport) -> FuddRerank:
    if len(upstream.stages) != 1 or not isinstance(upstream.stages[0], LinearHead):
        raise ConfigError("FuDD re-ranks a linear text head; write it right after the head, e.g. 'cbd+fudd'.")
    class_names = context.class_names
    ranking = _ranking_head(context, config, report)
    counted = _merge_counts(gather(upstream, partial(_pair_counts, fudd_k=config.k, ranking=ranking)))
    chosen = counted if config.max_pairs is None else counted[: config.max_pairs]
    pairs = [(class_names[a], class_names[b]) for (a, b), _ in chosen]
    if config.pairs is not None:
        pair_descriptions = load_pair_file(config.pairs)
    elif context.llm is not None:
        pair_descriptions = _ask_pairs(pairs, context, config, report)
    else:
        raise ConfigError("method 'fudd' needs differential descriptions: option fudd.pairs (a pair file), or an LLM.")
    pair_descriptions = _bounded_pairs(pair_descriptions, report)
    table = build_pair_table(pair_descriptions, class_names)
    if table.unmatched or config.pairs is not None:
        _report_unmatched(table.unmatched, len(pair_descriptions), list(class_names), config.pairs, report)
    text_feats = context.text.encode_texts([fudd_text(t) for t in table.texts])  # [V, D]
    side = context.text
    report.info.update(fudd_base=report.head, fudd_rank=config.rank,
                       fudd_k=min(config.k, len(class_names)), unique_pairs=len(counted),
                       pairs_answered=len(table.sentences), pairs_unmatched=len(table.unmatched))
    report.artifacts["pairs"] = dict(pair_descriptions)
    return FuddRerank(config.k, table, text_feats, ranking, side.logit_scale, side.logit_bias, list(class_names))


def _bounded_pairs(pair_descriptions: Mapping[str, Mapping[str, Any]], report: RunReport) -> dict[str, Any]:
    """At most ``captions_per_pair`` caption pairs per class pair, each caption cut to ``chars_per_text``
    characters (the tokenizer is quadratic in a word's length; the model reads 77 tokens): one warning row for
    each bound that dropped anything."""
    limits = current_limits()
    cap, chars = limits.captions_per_pair, limits.chars_per_text
    dropped: dict[str, int] = {}
    cut: dict[str, int] = {}
    bounded: dict[str, Any] = {}
    for key, entry in pair_descriptions.items():
        got = entry.get("prompt_pairs", [])
        if len(got) > cap:
            dropped[str(key)] = len(got) - cap
            got = got[:cap]
        lost = sum(max(0, len(t) - chars) for p in got for t in p["prompt_pair"])
        if lost:
            cut[str(key)] = lost
            got = [{**p, "prompt_pair": [t[:chars] for t in p["prompt_pair"]]} for p in got]
        bounded[key] = {**entry, "prompt_pairs": got} if (str(key) in dropped or lost) else entry
    if dropped:
        report.warnings.append(bound_row("differential", dropped, cap, "caption pairs", "pair", "captions_per_pair"))
    if cut:
        report.warnings.append(bound_row("differential", cut, chars, "characters", "text", "chars_per_text",
                                         items="pair"))
    return bounded


def _head_when_alone(config: FuddConfig, options) -> str:
    if config.base is not None:
        if config.base not in METHODS or METHODS[config.base].kind != HEAD:
            heads = [n for n, r in METHODS.items() if r.kind == HEAD]
            raise ConfigError(f"fudd.base is '{config.base}', not a first-stage head. Valid: {', '.join(heads)}.")
        return config.base
    has_text_source = (options.descriptors is not None or options.config("cbd").descriptors is not None
                       or options.llm is not None)
    return "cbd" if has_text_source else "templates"


def _estimate_fudd(context: RunContext, config: FuddConfig, image_feats, head: LinearHead | None) -> dict[str, Any]:
    """FuDD's pairs depend on the images: they are ranked with ``head`` (a head whose text needs no LLM call now)."""
    if config.pairs is not None or context.llm is None or image_feats is None or head is None:
        return {}
    report = RunReport()
    ranking = _ranking_head(context, config, report) or head
    sets = ambiguous_sets(_np(ranking.apply(image_feats, None, False).logits), config.k)
    counted = count_pairs(sets)
    chosen = counted if config.max_pairs is None else counted[: config.max_pairs]
    pairs = [(context.class_names[a], context.class_names[b]) for (a, b), _ in chosen]
    prompt = load_prompt("differential", context.options.prompts_dir, config.prompt_file)
    requests = list(pair_requests(pairs, prompt, context.options.domain_hint).values())
    return {"differential pairs": context.llm.estimate(requests), "unique pairs in the ambiguous sets": len(counted)}


register(MethodRecord(
    name="fudd", kind=RERANK, summary="FuDD: differential descriptions of the pairs each image is torn between",
    text_source="LLM differential descriptions of ambiguous pairs (or a pair file)", config=FuddConfig,
    prepare=_prepare_fudd, cost="one LLM call per unique ambiguous pair (cached), capped by max_pairs/token_budget",
    asks_llm=lambda config: config.pairs is None, estimate=_estimate_fudd, head_when_alone=_head_when_alone,
    shown=("unique_pairs", "pairs_asked", "pairs_answered", "images_moved"),
    numpy=True,
))
