"""FuDD (Esfandiarpoor & Bach, ICLR 2024): re-rank each image's ambiguous set with differential descriptions.

Top to bottom, as a run goes:

1. the head (``cbd`` with descriptors or an LLM, else ``templates``; ``fudd_base`` picks another) scores every
   image; its top-``fudd_k`` classes are the image's ambiguous set (``fudd_rank='template'`` ranks with the
   reference's single template instead);
2. a gather counts the unordered pairs inside the sets over all images (on Ray: per batch on the workers, summed
   on the driver), most frequent first;
3. the driver asks the LLM once per unique pair (cached; ``max_pairs`` and ``token_budget`` cap it), or reads a
   pair file, encodes the sentences and builds the pair table;
4. every batch is re-ranked inside its sets (:func:`vlmcls.differential.rerank`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..descriptors import generate_pair_descriptions, pair_requests
from ..errors import ConfigError
from ..prompting import load_prompt
from .heads import LinearHead, linear_head
from .pipeline import BatchScores, Pipeline, RunContext, RunReport, merge_notes
from .registry import HEAD, METHODS, RERANK, MethodRecord, register, setting

if TYPE_CHECKING:
    import torch

    from ..differential import PairTable

__all__ = ["FuddConfig", "FuddRerank", "load_pair_file"]

log = logging.getLogger(__name__)

_REFERENCE_TEMPLATE = "a photo of a {}."


@dataclass
class FuddConfig:
    fudd_k: int = setting(10, "FuDD: size of each image's ambiguous set.", minimum=2)
    fudd_rank: str = setting("base", "FuDD: rank the ambiguous set by 'base' (the run's best first scores) or "
                             "'template' (the reference's single template).")
    fudd_base: str | None = setting(None, "FuDD named alone: its first-stage head (default cbd when descriptors or "
                                    "an LLM exist, else templates). Same as writing HEAD+fudd.")
    max_pairs: int | None = setting(None, "FuDD: ask about at most this many pairs (most frequent first).", minimum=1)
    token_budget: int | None = setting(None, "FuDD: stop asking about pairs once this many tokens are spent.",
                                       minimum=1)
    budget_chunk: int = setting(8, "FuDD with a token budget: pairs asked between two budget checks.", minimum=1)
    pairs_file: Path | None = setting(None, "FuDD pair JSON to use instead of asking the LLM.", flag="--pairs",
                                      panel="LLM")
    differential_prompt_file: Path | None = setting(None, "A prompt file for the differential questions "
                                                    "(default: the 'differential' prompt).", panel="LLM")


def load_pair_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A FuDD pair JSON: {"a_b": {"classes": [a, b], "prompt_pairs": [{"attr_type", "prompt_pair": [ta, tb]}]}}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read pair file '{path}': {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) and len(v.get("classes", [])) == 2 for v in data.values()):
        raise ConfigError(f"pair file '{path}' is not FuDD pair JSON: expected {{'a_b': {{'classes': [a, b], 'prompt_pairs': [...]}}}}.")
    return data


@dataclass
class FuddRerank:
    """The prepared re-rank: the pair table, the head's weights for uncovered classes, the ranking head."""

    fudd_k: int
    table: PairTable
    fallback_weights: torch.Tensor  # [C, D] the head's text weights
    ranking: LinearHead | None  # None: rank with the head's own logits
    logit_scale: float
    logit_bias: float | None
    text_feats: torch.Tensor  # [T, D] the pair sentences (for explanations)
    class_names: list[str]

    def apply(self, feats: torch.Tensor, upstream: BatchScores | None, explain: bool) -> BatchScores:
        from ..differential import ambiguous_sets, explain_moves, rerank

        first = upstream.logits  # [B, C]
        rank_logits = self.ranking.apply(feats, None, False).logits if self.ranking is not None else first
        sets = ambiguous_sets(rank_logits, self.fudd_k)  # [B, k]
        result = rerank(feats, sets, self.table, self.fallback_weights, self.logit_scale)
        logits = result.logits + self.logit_bias if self.logit_bias is not None else result.logits
        first_top, new_top = first.argmax(1), logits.argmax(1)
        notes = upstream.notes
        if explain:
            moves = explain_moves(feats, first_top, new_top, self.table, self.text_feats, self.class_names)
            notes = merge_notes(upstream.notes, "differential", moves)
        return BatchScores(logits, notes, counts={"images_moved": int((first_top != new_top).sum())})

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {"images_moved": int(counts.get("images_moved", 0))}


def _pair_counts(positions, feats, scores: BatchScores, *, fudd_k: int, ranking: LinearHead | None):
    """One batch's pairs inside its ambiguous sets, with counts (what a worker sends the driver)."""
    from ..differential import ambiguous_sets, count_pairs

    rank_logits = ranking.apply(feats, None, False).logits if ranking is not None else scores.logits
    return count_pairs(ambiguous_sets(rank_logits, fudd_k))


def _merge_counts(parts: list[list[tuple[tuple[int, int], int]]]) -> list[tuple[tuple[int, int], int]]:
    """Sum the batches' pair counts; most frequent first, ties by class index (as count_pairs orders them)."""
    total: Counter = Counter()
    for part in parts:
        for pair, count in part:
            total[pair] += count
    return sorted(total.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))


def _ranking_head(context: RunContext, config: FuddConfig, report: RunReport) -> LinearHead | None:
    if config.fudd_rank == "base":
        return None
    if config.fudd_rank == "template":  # the reference: one template per class
        per_class = {c: [_REFERENCE_TEMPLATE.format(c)] for c in context.class_names}
        texts = report.info.get("texts")
        head = linear_head(context, per_class, "mean_embedding", report)
        report.info["texts"] = texts  # the head's count is the run's
        return head
    raise ConfigError(f"setting 'fudd_rank' is '{config.fudd_rank}'. Valid: base (the run's best first scores), template.")


def _ask_pairs(pairs: list[tuple[str, str]], context: RunContext, config: FuddConfig, report: RunReport) -> dict:
    """Differential descriptions for pairs from the LLM, most frequent first, within the token budget."""
    prompt = load_prompt("differential", context.options.prompts_dir, config.differential_prompt_file)
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
    import torch

    from ..differential import build_pair_table

    head = upstream.stages[0]
    if len(upstream.stages) != 1 or not isinstance(head, LinearHead):
        raise ConfigError("FuDD re-ranks a linear text head; write it right after the head, e.g. 'cbd+fudd'.")
    class_names = context.class_names
    ranking = _ranking_head(context, config, report)
    counted = _merge_counts(gather(upstream, partial(_pair_counts, fudd_k=config.fudd_k, ranking=ranking)))
    chosen = counted if config.max_pairs is None else counted[: config.max_pairs]
    pairs = [(class_names[a], class_names[b]) for (a, b), _ in chosen]
    if config.pairs_file is not None:
        pair_descriptions = load_pair_file(config.pairs_file)
    elif context.llm is not None:
        pair_descriptions = _ask_pairs(pairs, context, config, report)
    else:
        raise ConfigError("method 'fudd' needs differential descriptions: setting 'pairs_file', or an LLM client.")
    texts = sorted({t for e in pair_descriptions.values() for p in e.get("prompt_pairs", []) for t in p["prompt_pair"]})
    dim = head.weights.shape[1]
    text_feats = context.text.encode_texts(texts) if texts else torch.zeros(0, dim)  # [T, D]
    table = build_pair_table(pair_descriptions, class_names, text_feats, {t: i for i, t in enumerate(texts)})
    side = context.text
    report.info.update(fudd_base=report.head, fudd_rank=config.fudd_rank,
                       fudd_k=min(config.fudd_k, len(class_names)), unique_pairs=len(counted),
                       pairs_answered=len(table.sentences))
    report.artifacts["pairs"] = dict(pair_descriptions)
    return FuddRerank(config.fudd_k, table, head.weights, ranking, side.logit_scale, side.logit_bias, text_feats,
                      list(class_names))


def _head_when_alone(config: FuddConfig, options) -> str:
    if config.fudd_base is not None:
        if config.fudd_base not in METHODS or METHODS[config.fudd_base].kind != HEAD:
            heads = [n for n, r in METHODS.items() if r.kind == HEAD]
            raise ConfigError(f"setting 'fudd_base' is '{config.fudd_base}', not a first-stage head. Valid: {', '.join(heads)}.")
        return config.fudd_base
    has_text_source = options.descriptors is not None or options.llm is not None
    return "cbd" if has_text_source else "templates"


def _estimate_fudd(context: RunContext, config: FuddConfig, image_feats, head: LinearHead | None) -> dict[str, Any]:
    """FuDD's pairs depend on the images: they are ranked with ``head`` (a head whose text needs no LLM call now)."""
    if config.pairs_file is not None or context.llm is None or image_feats is None or head is None:
        return {}
    from ..differential import ambiguous_sets, count_pairs

    report = RunReport()
    ranking = _ranking_head(context, config, report) or head
    sets = ambiguous_sets(ranking.apply(image_feats, None, False).logits, config.fudd_k)
    counted = count_pairs(sets)
    chosen = counted if config.max_pairs is None else counted[: config.max_pairs]
    pairs = [(context.class_names[a], context.class_names[b]) for (a, b), _ in chosen]
    prompt = load_prompt("differential", context.options.prompts_dir, config.differential_prompt_file)
    requests = list(pair_requests(pairs, prompt, context.options.domain_hint).values())
    return {"differential pairs": context.llm.estimate(requests), "unique pairs in the ambiguous sets": len(counted)}


register(MethodRecord(
    name="fudd", kind=RERANK, summary="FuDD: differential descriptions of the pairs each image is torn between",
    text_source="LLM differential descriptions of ambiguous pairs (or a pair file)", config=FuddConfig,
    prepare=_prepare_fudd, cost="one LLM call per unique ambiguous pair (cached), capped by max_pairs/token_budget",
    asks_llm=lambda config: config.pairs_file is None, estimate=_estimate_fudd, head_when_alone=_head_when_alone,
))
