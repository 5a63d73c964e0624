"""FuDD: follow-up differential descriptions, asked only about the classes each image is torn between.

1. Each image's ambiguous set is its top-k classes under a first scoring (``rank_logits [N, C]``).
2. The unique unordered pairs inside those sets, most frequent first, are asked to the LLM (cached per pair).
3. Inside each set, a class is represented by normalise(sum of its sentences' unit embeddings over every pair it
   forms with the other set members) — normalise(mean) = normalise(sum) — and the prediction is the argmax over
   the set. A class none of whose pairs were answered keeps its first-stage text weight.

Re-ranking is vectorised: no Python loop per image or pair; images are processed in chunks of fixed memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .embeddings import l2_normalize
from .errors import ConfigError

__all__ = ["PairTable", "ambiguous_sets", "count_pairs", "build_pair_table", "rerank", "FuddResult", "explain_moves", "most_frequent_pairs"]

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


@dataclass
class PairTable:
    """Per (class, other) direction of every answered pair: the sum of that class's sentence embeddings."""

    keys: torch.Tensor  # [R] sorted a * C + b for the row holding class a's side of pair (a, b)
    sums: torch.Tensor  # [R + 1, D]; the last row is zeros (the lookup target for missing pairs)
    num_classes: int
    sentences: dict[tuple[int, int], list[tuple[str, str, int, int]]] = field(default_factory=dict)
    # (a, b) -> [(attr_type, text for a, row of text a, row of text b)] for explanations


def build_pair_table(
    pair_descriptions: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
    text_feats: torch.Tensor,
    text_index: Mapping[str, int],
) -> PairTable:
    """Pair JSON (FuDD format) + unit text features -> a lookup table; pairs are matched by class *name*."""
    column = {name: c for c, name in enumerate(class_names)}
    C, dim = len(class_names), text_feats.shape[1]
    side_keys: list[int] = []  # one entry per sentence: the row (class, other) it is summed into
    side_texts: list[int] = []
    sentences: dict[tuple[int, int], list] = {}
    for entry in pair_descriptions.values():
        a_name, b_name = entry["classes"]
        if a_name not in column or b_name not in column:
            continue  # a pair about classes not in this run (imported files may hold more)
        a, b = column[a_name], column[b_name]
        got = [(p["attr_type"], p["prompt_pair"][0], p["prompt_pair"][1]) for p in entry.get("prompt_pairs", [])]
        if not got:
            continue
        for _, text_a, text_b in got:
            side_keys += [a * C + b, b * C + a]
            side_texts += [text_index[text_a], text_index[text_b]]
        lo, hi = (a, b) if a < b else (b, a)
        ordered = got if a == lo else [(t, y, x) for t, x, y in got]
        sentences[(lo, hi)] = [(t, x, text_index[x], text_index[y]) for t, x, y in ordered]
    keys, rows = torch.unique(torch.tensor(side_keys, dtype=torch.long), return_inverse=True)  # sorted keys
    sums = torch.zeros(len(keys) + 1, dim, dtype=text_feats.dtype)
    if side_texts:
        sums.index_add_(0, rows, text_feats[torch.tensor(side_texts, dtype=torch.long)])
    return PairTable(keys, sums, C, sentences)


def _lookup(table: PairTable, query: torch.Tensor) -> torch.Tensor:
    """Row of each query key in table.sums, or the zero row when the pair is missing."""
    missing_row = table.sums.shape[0] - 1
    if table.keys.numel() == 0:
        return torch.full_like(query, missing_row)
    pos = torch.searchsorted(table.keys, query).clamp_max(table.keys.numel() - 1)
    return torch.where(table.keys[pos] == query, pos, torch.full_like(pos, missing_row))


@dataclass
class FuddResult:
    logits: torch.Tensor  # [N, C]: re-ranked inside each set, -inf outside it
    set_logits: torch.Tensor  # [N, k] the re-ranked scores of each set member
    sets: torch.Tensor  # [N, k] class indices
    covered: torch.Tensor  # [N, k] bool: the member had at least one answered pair in its set


def rerank(
    image_feats: torch.Tensor,
    sets: torch.Tensor,
    table: PairTable,
    fallback_weights: torch.Tensor,
    logit_scale: float,
    chunk: int = 256,
) -> FuddResult:
    """Re-rank inside each image's set: image_feats [N, D], sets [N, k], fallback_weights [C, D] -> FuddResult."""
    n, k = sets.shape
    C = table.num_classes
    set_logits = torch.empty(n, k, dtype=image_feats.dtype)
    covered = torch.empty(n, k, dtype=torch.bool)
    not_self = ~torch.eye(k, dtype=torch.bool)  # [k, k]
    for start in range(0, n, chunk):
        s = sets[start : start + chunk]  # [B, k]
        keys = s[:, :, None] * C + s[:, None, :]  # [B, k, k] row key of member i's side of pair (i, j)
        rows = _lookup(table, keys)
        rows = torch.where(not_self, rows, torch.full_like(rows, table.sums.shape[0] - 1))
        summed = table.sums[rows].sum(dim=2)  # [B, k, D]
        has = summed.abs().sum(-1) > 0  # [B, k]
        reps = torch.where(has[..., None], l2_normalize(summed).to(fallback_weights.dtype), fallback_weights[s])  # [B, k, D]
        f = image_feats[start : start + chunk]  # [B, D]
        set_logits[start : start + chunk] = logit_scale * torch.einsum("bd,bkd->bk", f.to(reps.dtype), reps).to(set_logits.dtype)
        covered[start : start + chunk] = has
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

