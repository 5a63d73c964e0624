"""FuDD re-ranking against a plain per-image, per-pair implementation of the reference rule."""

import zlib
from collections import Counter
from itertools import combinations

import pytest
import torch

from vlmcls.methods.fudd import (
    ambiguous_sets,
    build_pair_table,
    count_pairs,
    fudd_text,
    rerank,
)
from vlmcls.encode.embeddings import l2_normalize
from vlmcls.errors import ConfigError


def _embed(texts, D=16):
    """A fixed unit vector per text (seeded by its bytes): any encoder will do to compare the two rules."""
    rows = [torch.randn(D, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())), dtype=torch.float64) for t in texts]
    return l2_normalize(torch.stack(rows))


def _world(seed=0, n=12, C=9, k=4, D=16, drop_every=3):
    """Pairs keyed as FuDD's released files: integer class ids, key "min_max"; some pairs unanswered, one class
    with no answered pair at all, a caption repeated across two pairs and inside one, one differing only in case."""
    g = torch.Generator().manual_seed(seed)
    names = [f"c{i}" for i in range(C)]
    feats = l2_normalize(torch.randn(n, D, generator=g, dtype=torch.float64))
    sets = ambiguous_sets(feats @ torch.randn(C, D, generator=g, dtype=torch.float64).T, k)
    pairs = {}
    for u, ((a, b), _) in enumerate(count_pairs(sets)):
        if u % drop_every == 0 or int(sets[0, 0]) in (a, b):
            continue  # unanswered pairs; one class has none at all and must fall back to its template
        prompt_pairs = [{"attr_type": f"t{j}", "prompt_pair": [f"{names[a]} vs {names[b]}, {j}", f"{names[b]} vs {names[a]}, {j}"]}
                        for j in range(1 + u % 3)]
        if u % 4 in (1, 2):  # the other pairs' captions are their own (summed whole, a fast path)
            prompt_pairs.append({"attr_type": "shared", "prompt_pair": [f"{names[a]} with Red fur.", f"{names[b]} is plain."]})
            prompt_pairs.append({"attr_type": "again", "prompt_pair": [f"{names[a]} with red fur.", f"{names[b]} is plain."]})
        # half the entries list the classes in reverse order (prompt_pair[0] describes classes[0])
        classes, prompt_pairs = ([a, b], prompt_pairs) if u % 2 else (
            [b, a], [{"attr_type": p["attr_type"], "prompt_pair": p["prompt_pair"][::-1]} for p in prompt_pairs])
        pairs[f"{min(a, b)}_{max(a, b)}"] = {"classes": classes, "prompt_pairs": prompt_pairs}
    return names, feats, sets, pairs


def _reference(names, feats, sets, pairs, scale):
    """BatsResearch/fudd (prompt_factory.get_prompts + fudd_model), written plainly: per image, per pair of the
    set, the pair's captions or both templates; set() per class, then capitalize(); mean of unit embeddings."""
    out = torch.full((feats.shape[0], len(names)), float("-inf"), dtype=torch.float64)
    for n in range(feats.shape[0]):
        ids = sets[n].tolist()
        prompts = [[] for _ in ids]
        for i, j in combinations(range(len(ids)), 2):
            key = f"{min(ids[i], ids[j])}_{max(ids[i], ids[j])}"
            if key not in pairs:
                got = [[f"a photo of a {names[ids[i]]}."], [f"a photo of a {names[ids[j]]}."]]
            else:
                got = [[], []]
                for p in pairs[key]["prompt_pairs"]:
                    got[[ids[i], ids[j]].index(pairs[key]["classes"][0])].append(p["prompt_pair"][0])
                    got[[ids[i], ids[j]].index(pairs[key]["classes"][1])].append(p["prompt_pair"][1])
            prompts[i] += got[0]
            prompts[j] += got[1]
        for i, texts in enumerate(prompts):
            rep = _embed([t.capitalize() for t in set(texts)]).mean(0)
            out[n, ids[i]] = scale * feats[n] @ (rep / rep.norm())
    return out


def _rerank(names, feats, sets, pairs):
    table = build_pair_table(pairs, names)
    return rerank(feats, sets, table, _embed([fudd_text(t) for t in table.texts]), 100.0, chunk=5)  # chunks < N


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_matches_the_reference_rule(seed):
    names, feats, sets, pairs = _world(seed)
    result = _rerank(names, feats, sets, pairs)
    expected = _reference(names, feats, sets, pairs, 100.0)
    torch.testing.assert_close(result.logits, expected, atol=1e-6, rtol=0)
    assert not bool(result.covered.all()) and bool(result.covered.any())  # both paths exercised
    private = build_pair_table(pairs, names).private
    assert bool(private.any()) and not bool(private.all())


def test_pairs_named_by_class_name_give_the_same_scores_as_integer_ids():
    names, feats, sets, pairs = _world(1)
    by_name = {f"{names[e['classes'][0]]}_{names[e['classes'][1]]}": {**e, "classes": [names[c] for c in e["classes"]]}
               for e in pairs.values()}
    torch.testing.assert_close(_rerank(names, feats, sets, by_name).logits, _rerank(names, feats, sets, pairs).logits)


def test_a_repeated_caption_counts_once_and_a_missing_pair_adds_the_template():
    names = ["cat", "dog", "fox"]
    pairs = {"0_1": {"classes": [0, 1], "prompt_pairs": [{"attr_type": "a", "prompt_pair": ["fluffy", "sleek"]},
                                                          {"attr_type": "b", "prompt_pair": ["fluffy", "big"]}]},
             "0_2": {"classes": [2, 0], "prompt_pairs": [{"attr_type": "a", "prompt_pair": ["red", "fluffy"]}]}}
    table = build_pair_table(pairs, names)
    feats = _embed(["image"])
    result = rerank(feats, torch.tensor([[0, 1, 2]]), table, _embed([fudd_text(t) for t in table.texts]), 1.0)
    cat = _embed(["Fluffy"])[0]  # "fluffy" three times over two pairs: one sentence
    dog = l2_normalize(_embed(["Sleek", "Big", "A photo of a dog."]).mean(0))  # (dog, fox) unanswered
    fox = l2_normalize(_embed(["Red", "A photo of a fox."]).mean(0))
    torch.testing.assert_close(result.set_logits[0], torch.stack([cat, dog, fox]) @ feats[0], atol=1e-6, rtol=0)


def test_pair_entries_that_name_no_class_are_listed():
    pairs = {"0_1": {"classes": [0, 1], "prompt_pairs": [{"attr_type": "a", "prompt_pair": ["x", "y"]}]},
             "0_7": {"classes": [0, 7], "prompt_pairs": []},  # index past the class list
             "cat_emu": {"classes": ["cat", "emu"], "prompt_pairs": []},
             "0_0": {"classes": [0, 0], "prompt_pairs": []},
             "true_1": {"classes": [True, 1], "prompt_pairs": []}}  # a bool is not an index
    table = build_pair_table(pairs, ["cat", "dog"])
    assert table.unmatched == ["0_7", "cat_emu", "0_0", "true_1"]
    assert list(table.sentences) == [(0, 1)]


def test_pairs_are_counted_across_images_most_frequent_first():
    sets = torch.tensor([[0, 1, 2], [1, 0, 3], [2, 1, 0]])
    counted = count_pairs(sets)
    expected = Counter(tuple(sorted(p)) for row in sets.tolist() for p in combinations(row, 2))
    assert dict(counted) == dict(expected)
    assert counted[0] == ((0, 1), 3) and [c for _, c in counted] == sorted(expected.values(), reverse=True)


def test_an_ambiguous_set_needs_two_classes():
    with pytest.raises(ConfigError, match=r"fudd\.k"):
        ambiguous_sets(torch.zeros(2, 5), 1)
