"""FuDD re-ranking against a plain per-image, per-pair implementation of the reference rule."""

from collections import Counter
from itertools import combinations

import pytest
import torch

from vlmcls.differential import ambiguous_sets, build_pair_table, count_pairs, rerank
from vlmcls.embeddings import l2_normalize
from vlmcls.errors import ConfigError


def _world(seed=0, n=12, C=9, k=4, D=16, drop_every=3):
    g = torch.Generator().manual_seed(seed)
    names = [f"c{i}" for i in range(C)]
    feats = l2_normalize(torch.randn(n, D, generator=g, dtype=torch.float64))
    weights = torch.randn(C, D, generator=g, dtype=torch.float64) * 0.3  # unnormalised, like mean_similarity
    sets = ambiguous_sets(feats @ weights.T, k)
    texts, pairs = [], {}
    for u, ((a, b), _) in enumerate(count_pairs(sets)):
        if u % drop_every == 0 or int(sets[0, 0]) in (a, b):
            continue  # unanswered pairs; one class has none at all and must fall back to its weight
        prompt_pairs = []
        for j in range(1 + u % 3):
            ta, tb = f"{names[a]}/{names[b]}/{j}/a", f"{names[a]}/{names[b]}/{j}/b"
            texts += [ta, tb]
            prompt_pairs.append({"attr_type": f"t{j}", "prompt_pair": [ta, tb]})
        # half the entries list the classes in reverse order: matching must be by name
        classes, prompt_pairs = ([names[a], names[b]], prompt_pairs) if u % 2 else (
            [names[b], names[a]], [{"attr_type": p["attr_type"], "prompt_pair": p["prompt_pair"][::-1]} for p in prompt_pairs])
        pairs[f"{classes[0]}_{classes[1]}"] = {"classes": classes, "prompt_pairs": prompt_pairs}
    text_feats = l2_normalize(torch.randn(len(texts), D, generator=g, dtype=torch.float64))
    return names, feats, weights, sets, pairs, text_feats, {t: i for i, t in enumerate(texts)}


def _reference(names, feats, weights, sets, pairs, text_feats, index, scale):
    """The FuDD rule written plainly: per image, per member, collect its sentences from pairs inside the set."""
    out = torch.full((feats.shape[0], len(names)), float("-inf"), dtype=torch.float64)
    for n in range(feats.shape[0]):
        members = [names[int(c)] for c in sets[n]]
        for a in members:
            sentences = []
            for b in members:
                for entry in pairs.values():
                    if set(entry["classes"]) == {a, b} and a != b:
                        side = entry["classes"].index(a)
                        sentences += [index[p["prompt_pair"][side]] for p in entry["prompt_pairs"]]
            if sentences:
                rep = text_feats[sentences].mean(0)
                rep = rep / rep.norm()
            else:
                rep = weights[names.index(a)]
            out[n, names.index(a)] = scale * feats[n] @ rep
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_matches_the_plain_rule(seed):
    names, feats, weights, sets, pairs, text_feats, index = _world(seed)
    table = build_pair_table(pairs, names, text_feats, index)
    result = rerank(feats, sets, table, weights, 100.0, chunk=5)  # chunks smaller than N on purpose
    expected = _reference(names, feats, weights, sets, pairs, text_feats, index, 100.0)
    torch.testing.assert_close(result.logits, expected, atol=1e-9, rtol=0)
    assert not bool(result.covered.all()) and bool(result.covered.any())  # both paths exercised


def test_pairs_are_counted_across_images_most_frequent_first():
    sets = torch.tensor([[0, 1, 2], [1, 0, 3], [2, 1, 0]])
    counted = count_pairs(sets)
    expected = Counter(tuple(sorted(p)) for row in sets.tolist() for p in combinations(row, 2))
    assert dict(counted) == dict(expected)
    assert counted[0] == ((0, 1), 3) and [c for _, c in counted] == sorted(expected.values(), reverse=True)


def test_an_ambiguous_set_needs_two_classes():
    with pytest.raises(ConfigError, match="fudd-k"):
        ambiguous_sets(torch.zeros(2, 5), 1)
