"""FuDD's maths, in numpy: each image's ambiguous set, the pairs it holds, the table of differential captions per
pair, and the re-rank inside the set (REFERENCE.md, FuDD). The stage and its record are in :mod:`.fudd`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..encode.embeddings import to_numpy as _np, to_torch  # numpy maths: a cached run needs no torch
from ..errors import ConfigError
from ..templates import wordify

if TYPE_CHECKING:
    import torch

__all__ = ["ambiguous_sets", "count_pairs", "fudd_template", "fudd_text", "PairTable", "build_pair_table",
           "FuddResult", "rerank", "explain_moves", "most_frequent_pairs"]

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
