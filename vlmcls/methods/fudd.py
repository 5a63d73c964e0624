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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..llm.descriptors import generate_pair_descriptions, pair_requests
from ..encode.embeddings import to_numpy as _np, to_torch  # the maths below runs in numpy: a cached run needs no torch
from ..errors import ConfigError
from ..sources.limits import bound_row, current_limits
from ..llm.prompts import load_prompt
from ..templates import wordify
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


# -- the pair table and the re-rank ------------------------------------------------------------------------


def _like(x: np.ndarray, template: Any) -> Any:
    """``x`` as the caller's kind: a tensor when ``template`` was one."""
    return x if isinstance(template, np.ndarray) else to_torch(np.ascontiguousarray(x))


def ambiguous_sets(rank_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Each image's top-k classes: rank_logits [N, C] -> indices [N, k] (k clipped to C), best first."""
    from ..scoring import top_k

    if k < 2:
        raise ConfigError(f"fudd.k is '{k}'; an ambiguous set needs at least 2 classes.")
    return top_k(rank_logits, k)[1]


def count_pairs(sets: torch.Tensor) -> list[tuple[tuple[int, int], int]]:
    """Unique unordered pairs (a < b) across all sets with how many images share them, most frequent first."""
    sets = _np(sets)
    n, k = sets.shape
    i, j = np.triu_indices(k, 1)  # [P] positions of each pair inside a set
    a, b = sets[:, i], sets[:, j]  # [N, P]
    lo, hi = np.minimum(a, b).ravel(), np.maximum(a, b).ravel()
    pairs, counts = np.unique(np.stack([lo, hi], axis=1), axis=0, return_counts=True)  # [U, 2], [U]
    pairs, counts = pairs.tolist(), counts.tolist()
    order = sorted(range(len(pairs)), key=lambda u: (-counts[u], pairs[u][0], pairs[u][1]))
    return [((pairs[u][0], pairs[u][1]), counts[u]) for u in order]


def fudd_template(class_name: str) -> str:
    """The sentence that stands for a class in a pair nobody described: the reference's ``"a photo of a {c}."``."""
    return f"a photo of a {wordify(class_name)}."


def fudd_text(sentence: str) -> str:
    """The text FuDD encodes for a sentence: ``str.capitalize()`` as in the reference (which also lowercases the
    rest of the sentence), applied after the sentences were deduplicated as written."""
    return sentence.capitalize()


@dataclass
class PairTable:
    """Every sentence FuDD may use (as written; encode ``fudd_text`` of each), and per directed answered pair
    (class a, other b) the ids of a's captions, stored ragged (CSR) so a set's union is a gather."""

    texts: list[str]  # [V] unique sentences as written: the answered captions, then each class's template
    keys: np.ndarray  # [R] int64, sorted a * C + b for the row holding class a's captions in pair (a, b)
    starts: np.ndarray  # [R] where each row's caption ids begin in caption_ids
    counts: np.ndarray  # [R] how many captions each row has (at least one)
    caption_ids: np.ndarray  # [sum counts] ids into texts
    template_ids: np.ndarray  # [C] id of each class's template sentence in texts
    private: np.ndarray  # [R] bool: no sentence of the row can meet another of its class's in a set (sum it whole)
    num_classes: int
    sentences: dict[tuple[int, int], list[tuple[str, str, int, int]]] = field(default_factory=dict)
    # (a, b) -> [(attr_type, text for a, id of text a, id of text b)] for explanations
    unmatched: list[str] = field(default_factory=list)  # keys of entries that name no pair of this run's classes


def _resolve_class(ref: Any, class_names: Sequence[str], column: Mapping[str, int]) -> int | None:
    """A pair file's class reference: an integer index into the class list (FuDD's released files) or a name."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref if 0 <= ref < len(class_names) else None
    if isinstance(ref, str):
        return column.get(ref)
    return None


def build_pair_table(pair_descriptions: Mapping[str, Mapping[str, Any]], class_names: Sequence[str]) -> PairTable:
    """Pair JSON (FuDD format) -> a lookup table. Each entry's ``classes`` are names of this run's classes or
    integer indices into ``class_names`` (the released files' form); ``prompt_pair[0]`` describes ``classes[0]``.
    An entry with no captions counts as a pair nobody described; entries that name no pair of these classes are
    listed in ``unmatched``."""
    column = {name: c for c, name in enumerate(class_names)}
    C = len(class_names)
    text_id: dict[str, int] = {}
    captions: dict[int, list[int]] = {}  # directed key a * C + b -> ids of a's captions
    sentences: dict[tuple[int, int], list] = {}
    unmatched: list[str] = []

    def intern(text: str) -> int:
        return text_id.setdefault(text, len(text_id))

    for key, entry in pair_descriptions.items():
        a, b = (_resolve_class(ref, class_names, column) for ref in entry["classes"])
        if a is None or b is None or a == b:
            unmatched.append(str(key))
            continue
        got = [(p["attr_type"], p["prompt_pair"][0], p["prompt_pair"][1]) for p in entry.get("prompt_pairs", [])]
        if not got:
            continue
        lo, hi = (a, b) if a < b else (b, a)
        ordered = got if a == lo else [(t, y, x) for t, x, y in got]
        for _, text_lo, text_hi in ordered:
            captions.setdefault(lo * C + hi, []).append(intern(text_lo))
            captions.setdefault(hi * C + lo, []).append(intern(text_hi))
        sentences.setdefault((lo, hi), []).extend((t, x, text_id[x], text_id[y]) for t, x, y in ordered)
    template_ids = np.array([intern(fudd_template(name)) for name in class_names], dtype=np.int64)
    keys = sorted(captions)
    counts = np.array([len(captions[key]) for key in keys], dtype=np.int64)
    starts = np.cumsum(counts) - counts
    caption_ids = np.array([i for key in keys for i in captions[key]], dtype=np.int64)
    # Most rows hold sentences found nowhere else in their class: adding such a row's sum equals adding its sentences
    # to the set, so only the other rows (a caption repeated, or equal to the template) need the per-sentence union.
    rows_holding = Counter((key // C, i) for key in keys for i in set(captions[key]))
    private = np.array([len(set(captions[key])) == len(captions[key]) and all(
        rows_holding[(key // C, i)] == 1 and i != int(template_ids[key // C]) for i in captions[key]) for key in keys], dtype=bool)
    return PairTable(list(text_id), np.array(keys, dtype=np.int64), starts, counts, caption_ids, template_ids,
                     private, C, sentences, unmatched)


def _find(table: PairTable, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each query key in the table and whether it is there."""
    if table.keys.size == 0:
        return np.zeros_like(query), np.zeros(query.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(table.keys, query), table.keys.size - 1)
    return pos, table.keys[pos] == query


@dataclass
class FuddResult:
    logits: torch.Tensor  # [N, C]: re-ranked inside each set, -inf outside it
    set_logits: torch.Tensor  # [N, k] the re-ranked scores of each set member
    sets: torch.Tensor  # [N, k] class indices
    covered: torch.Tensor  # [N, k] bool: the member had at least one answered pair in its set


def _member_sentences(table: PairTable, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For sets s [B, k]: each member's private rows [B, k, k] (R where none), and its other distinct sentence
    ids, flattened (member b * k + i, sentence id).

    Member i collects its captions from every answered pair (i, j), j in the set, and its template for every
    pair nobody answered; the union is a set of sentences as written, as in the reference.
    """
    B, k = s.shape
    C, V, R = table.num_classes, len(table.texts), table.keys.size
    keys = s[:, :, None] * C + s[:, None, :]  # [B, k, k] row key of member i's side of pair (i, j)
    pos, found = _find(table, keys)
    not_self = ~np.eye(k, dtype=bool)[None]  # [1, k, k]
    member = np.broadcast_to(np.arange(B * k).reshape(B, k, 1), (B, k, k))  # [B, k, k] flat member b * k + i
    answered, missing = found & not_self, ~found & not_self
    whole = answered & table.private[pos] if R else answered
    private_rows = np.where(whole, pos, R)  # [B, k, k]
    answered = answered & ~whole
    # other answered pairs: every caption of the row, gathered from the ragged table
    rows, owners = pos[answered], member[answered]
    counts = table.counts[rows]
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    caption = table.caption_ids[np.repeat(table.starts[rows], counts) + offsets]
    caption_owner = np.repeat(owners, counts)
    # missing pairs (and a member alone in its set) contribute the member's template sentence
    alone = np.zeros((B, k), dtype=bool) if k > 1 else np.ones((B, k), dtype=bool)
    template_owner = np.concatenate([member[missing], np.arange(B * k)[alone.ravel()]])
    template = table.template_ids[s.ravel()[template_owner]]
    flat = np.unique(np.concatenate([caption_owner, template_owner]) * V + np.concatenate([caption, template]))
    return private_rows, flat // V, flat % V


def rerank(
    image_feats: torch.Tensor,
    sets: torch.Tensor,
    table: PairTable,
    text_feats: torch.Tensor,
    logit_scale: float,
    chunk: int = 256,
) -> FuddResult:
    """Re-rank inside each image's set: image_feats [N, D], sets [N, k], text_feats [V, D] (unit embeddings of
    ``fudd_text(t)`` for t in ``table.texts``) -> FuddResult, in numpy or tensors as ``image_feats`` came.

    A member's vector is normalise(mean of the unit embeddings of its distinct sentences in the set).
    """
    feats, s_all, texts = _np(image_feats), _np(sets).astype(np.int64), _np(text_feats)
    n, k = s_all.shape
    C, R = table.num_classes, table.keys.size
    set_logits = np.empty((n, k), dtype=feats.dtype)
    covered = np.empty((n, k), dtype=bool)
    not_self = ~np.eye(k, dtype=bool)  # [k, k]
    row_sums = np.zeros((R + 1, texts.shape[1]), dtype=texts.dtype)  # [R + 1, D]; the last row is zeros
    if R:  # rows are contiguous runs of caption_ids, none empty
        row_sums[:R] = np.add.reduceat(texts[table.caption_ids], table.starts, axis=0)
    for start in range(0, n, chunk):
        s = s_all[start : start + chunk]  # [B, k]
        B = s.shape[0]
        private_rows, owner, sentence = _member_sentences(table, s)
        summed = row_sums[private_rows].sum(axis=2).reshape(B * k, -1)  # [B·k, D]
        np.add.at(summed, owner, texts[sentence])
        norms = np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)
        reps = (summed / norms).reshape(B, k, -1)  # [B, k, D]; normalise(mean) = normalise(sum)
        f = feats[start : start + chunk].astype(reps.dtype, copy=False)  # [B, D]
        set_logits[start : start + chunk] = logit_scale * (reps @ f[:, :, None])[:, :, 0]
        covered[start : start + chunk] = (_find(table, s[:, :, None] * C + s[:, None, :])[1] & not_self).any(axis=2)
    logits = np.full((n, C), -np.inf, dtype=set_logits.dtype)
    np.put_along_axis(logits, s_all, set_logits, axis=1)
    like = image_feats
    return FuddResult(_like(logits, like), _like(set_logits, like), _like(s_all, like), _like(covered, like))


def explain_moves(
    image_feats: torch.Tensor,
    first_top: torch.Tensor,
    new_top: torch.Tensor,
    table: PairTable,
    text_feats: torch.Tensor,
    class_names: Sequence[str],
    limit: int = 3,
) -> list[dict | None]:
    """For images whose top-1 changed: the differential captions that favoured the new class most, each with its
    text and cosine similarity to the image beside the old class's caption for the same attribute."""
    out: list[dict | None] = []
    for n in range(image_feats.shape[0]):
        old, new = int(first_top[n]), int(new_top[n])
        if old == new:
            out.append(None)
            continue
        lo, hi = (old, new) if old < new else (new, old)
        items = []
        for attr, _, row_lo, row_hi in table.sentences.get((lo, hi), []):
            row_new, row_old = (row_lo, row_hi) if new == lo else (row_hi, row_lo)
            score_new = float(image_feats[n] @ text_feats[row_new])
            score_old = float(image_feats[n] @ text_feats[row_old])
            items.append({"attribute": attr, "margin": round(score_new - score_old, 5),
                          "caption": table.texts[row_new], "score": round(score_new, 4),
                          "other_caption": table.texts[row_old], "other_score": round(score_old, 4)})
        items.sort(key=lambda d: -d["margin"])
        out.append({"moved_from": class_names[old], "moved_to": class_names[new], "because": items[:limit]})
    return out


def most_frequent_pairs(sets: torch.Tensor, class_names: Sequence[str], max_pairs: int | None) -> tuple[list[tuple[str, str]], int]:
    """Pairs by name to ask about, most frequent first, capped; also returns how many unique pairs exist."""
    counted = count_pairs(sets)
    chosen = counted if max_pairs is None else counted[:max_pairs]
    return [(class_names[a], class_names[b]) for (a, b), _ in chosen], len(counted)


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
