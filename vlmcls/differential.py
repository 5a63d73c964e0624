"""FuDD: follow-up differential descriptions, asked only about the classes each image is torn between.

1. Each image's ambiguous set is its top-k classes under a first scoring (``rank_logits [N, C]``).
2. The unique unordered pairs inside those sets, most frequent first, are asked to the LLM (cached per pair).
3. Inside each set, a class is represented as in the reference (BatsResearch/fudd ``prompt_factory.py``): its
   captions from every pair it forms with the other set members, a pair nobody answered contributing the class's
   template sentence ``"a photo of a {c}."``; the collection is deduplicated as written, each sentence is
   ``.capitalize()``d, and the class vector is normalise(mean of their unit embeddings). The prediction is the
   argmax over the set.

Re-ranking is vectorised: no Python loop per image or pair; images are processed in chunks of fixed memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .embeddings import l2_normalize
from .errors import ConfigError
from .templates import wordify

__all__ = ["fudd_template", "fudd_text", "PairTable", "ambiguous_sets", "count_pairs", "build_pair_table", "rerank", "FuddResult", "explain_moves", "most_frequent_pairs"]

log = logging.getLogger(__name__)


def ambiguous_sets(rank_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Each image's top-k classes: rank_logits [N, C] -> indices [N, k] (k clipped to C)."""
    if k < 2:
        raise ConfigError(f"--fudd-k is '{k}'; an ambiguous set needs at least 2 classes.")
    return torch.topk(rank_logits, min(k, rank_logits.shape[1]), dim=1).indices


def count_pairs(sets: torch.Tensor) -> list[tuple[tuple[int, int], int]]:
    """Unique unordered pairs (a < b) across all sets with how many images share them, most frequent first."""
    n, k = sets.shape
    i, j = torch.triu_indices(k, k, offset=1)  # [P] positions of each pair inside a set
    a, b = sets[:, i], sets[:, j]  # [N, P]
    lo, hi = torch.minimum(a, b).flatten(), torch.maximum(a, b).flatten()
    pairs, counts = torch.unique(torch.stack([lo, hi], dim=1), dim=0, return_counts=True)  # [U, 2], [U]
    order = sorted(range(len(pairs)), key=lambda u: (-int(counts[u]), int(pairs[u, 0]), int(pairs[u, 1])))
    return [((int(pairs[u, 0]), int(pairs[u, 1])), int(counts[u])) for u in order]


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
    keys: torch.Tensor  # [R] sorted a * C + b for the row holding class a's captions in pair (a, b)
    starts: torch.Tensor  # [R] where each row's caption ids begin in caption_ids
    counts: torch.Tensor  # [R] how many captions each row has
    caption_ids: torch.Tensor  # [sum counts] ids into texts
    template_ids: torch.Tensor  # [C] id of each class's template sentence in texts
    private: torch.Tensor  # [R] bool: no sentence of the row can meet another of its class's in a set (sum it whole)
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
    template_ids = torch.tensor([intern(fudd_template(name)) for name in class_names], dtype=torch.long)
    keys = sorted(captions)
    counts = torch.tensor([len(captions[key]) for key in keys], dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    caption_ids = torch.tensor([i for key in keys for i in captions[key]], dtype=torch.long)
    # Most rows hold sentences found nowhere else in their class: adding such a row's sum equals adding its sentences
    # to the set, so only the other rows (a caption repeated, or equal to the template) need the per-sentence union.
    rows_holding = Counter((key // C, i) for key in keys for i in set(captions[key]))
    private = torch.tensor([len(set(captions[key])) == len(captions[key]) and all(
        rows_holding[(key // C, i)] == 1 and i != int(template_ids[key // C]) for i in captions[key]) for key in keys], dtype=torch.bool)
    return PairTable(list(text_id), torch.tensor(keys, dtype=torch.long), starts, counts, caption_ids, template_ids,
                     private, C, sentences, unmatched)


def _find(table: PairTable, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row of each query key in the table and whether it is there."""
    if table.keys.numel() == 0:
        return torch.zeros_like(query), torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(table.keys, query).clamp_max(table.keys.numel() - 1)
    return pos, table.keys[pos] == query


@dataclass
class FuddResult:
    logits: torch.Tensor  # [N, C]: re-ranked inside each set, -inf outside it
    set_logits: torch.Tensor  # [N, k] the re-ranked scores of each set member
    sets: torch.Tensor  # [N, k] class indices
    covered: torch.Tensor  # [N, k] bool: the member had at least one answered pair in its set


def _member_sentences(table: PairTable, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For sets s [B, k]: each member's private rows [B, k, k] (R where none), and its other distinct sentence
    ids, flattened (member b * k + i, sentence id).

    Member i collects its captions from every answered pair (i, j), j in the set, and its template for every
    pair nobody answered; the union is a set of sentences as written, as in the reference.
    """
    B, k = s.shape
    C, V = table.num_classes, len(table.texts)
    keys = s[:, :, None] * C + s[:, None, :]  # [B, k, k] row key of member i's side of pair (i, j)
    pos, found = _find(table, keys)
    not_self = ~torch.eye(k, dtype=torch.bool)[None]  # [1, k, k]
    member = torch.arange(B * k).view(B, k, 1).expand(B, k, k)  # [B, k, k] flat member index b * k + i
    answered, missing = found & not_self, ~found & not_self
    whole = answered & table.private[pos] if table.keys.numel() else answered
    private_rows = torch.where(whole, pos, torch.full_like(pos, table.keys.numel()))  # [B, k, k]
    answered = answered & ~whole
    # other answered pairs: every caption of the row, gathered from the ragged table
    rows, owners = pos[answered], member[answered]
    counts = table.counts[rows]
    total = int(counts.sum())
    offsets = torch.arange(total) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    caption = table.caption_ids[torch.repeat_interleave(table.starts[rows], counts) + offsets]
    caption_owner = torch.repeat_interleave(owners, counts)
    # missing pairs (and a member alone in its set) contribute the member's template sentence
    alone = torch.zeros(B, k, dtype=torch.bool) if k > 1 else torch.ones(B, k, dtype=torch.bool)
    template_owner = torch.cat([member[missing], torch.arange(B * k)[alone.flatten()]])
    template = table.template_ids[s.flatten()[template_owner]]
    flat = torch.unique(torch.cat([caption_owner, template_owner]) * V + torch.cat([caption, template]))
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
    ``fudd_text(t)`` for t in ``table.texts``) -> FuddResult.

    A member's vector is normalise(mean of the unit embeddings of its distinct sentences in the set).
    """
    n, k = sets.shape
    C = table.num_classes
    set_logits = torch.empty(n, k, dtype=image_feats.dtype)
    covered = torch.empty(n, k, dtype=torch.bool)
    not_self = ~torch.eye(k, dtype=torch.bool)  # [k, k]
    R = table.keys.numel()
    row_of_caption = torch.repeat_interleave(torch.arange(R), table.counts)
    row_sums = torch.zeros(R + 1, text_feats.shape[1], dtype=text_feats.dtype)  # [R + 1, D]; the last row is zeros
    row_sums.index_add_(0, row_of_caption, text_feats[table.caption_ids])
    for start in range(0, n, chunk):
        s = sets[start : start + chunk]  # [B, k]
        B = s.shape[0]
        private_rows, owner, sentence = _member_sentences(table, s)
        summed = row_sums[private_rows].sum(dim=2).view(B * k, -1)  # [B·k, D]
        summed.index_add_(0, owner, text_feats[sentence])
        reps = l2_normalize(summed).view(B, k, -1)  # [B, k, D]; normalise(mean) = normalise(sum)
        f = image_feats[start : start + chunk]  # [B, D]
        set_logits[start : start + chunk] = logit_scale * torch.einsum("bd,bkd->bk", f.to(reps.dtype), reps).to(set_logits.dtype)
        covered[start : start + chunk] = (_find(table, s[:, :, None] * C + s[:, None, :])[1] & not_self).any(dim=2)
    logits = torch.full((n, C), float("-inf"), dtype=set_logits.dtype)
    logits.scatter_(1, sets, set_logits)
    return FuddResult(logits, set_logits, sets, covered)


def explain_moves(
    image_feats: torch.Tensor,
    first_top: torch.Tensor,
    new_top: torch.Tensor,
    table: PairTable,
    text_feats: torch.Tensor,
    class_names: Sequence[str],
    limit: int = 3,
) -> list[dict | None]:
    """For images whose top-1 changed: the differential captions that favoured the new class most."""
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
            margin = float(image_feats[n] @ (text_feats[row_new] - text_feats[row_old]))
            items.append({"attribute": attr, "margin": round(margin, 5)})
        items.sort(key=lambda d: -d["margin"])
        out.append({"moved_from": class_names[old], "moved_to": class_names[new], "because": items[:limit]})
    return out


def most_frequent_pairs(sets: torch.Tensor, class_names: Sequence[str], max_pairs: int | None) -> tuple[list[tuple[str, str]], int]:
    """Pairs by name to ask about, most frequent first, capped; also returns how many unique pairs exist."""
    counted = count_pairs(sets)
    chosen = counted if max_pairs is None else counted[:max_pairs]
    return [(class_names[a], class_names[b]) for (a, b), _ in chosen], len(counted)

