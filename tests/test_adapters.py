"""The training-free refiners against plain dense implementations of their formulas (float64, loops)."""

from __future__ import annotations

import json
import math
import os
import random
from collections import deque

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmcls.adapters import (  # noqa: E402
    LabelMetric,
    build_cache,
    build_unsupervised_cache,
    cache_logits,
    cache_size_per_class,
    expected_squared_distance,
    frechet_mean,
    label_space_scores,
    tune_alpha_beta,
    unsupervised_cache_logits,
)
from vlmcls.adapters.unsupervised import prediction_weights  # noqa: E402
from vlmcls.errors import ConfigError  # noqa: E402

ATOL = 1e-6


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def random_tree_edges(count: int, seed: int) -> list[tuple[str, str]]:
    """A random recursive tree over labels n0..n{count-1}: each label's parent is an earlier label."""
    rng = random.Random(seed)
    return [(f"n{rng.randrange(i)}", f"n{i}") for i in range(1, count)]


def bfs_distances(edges, names, join_roots=False) -> torch.Tensor:
    """All-pairs path lengths by one breadth-first search per label; a forest is joined by an extra root."""
    neighbours = {name: [] for name in names}
    for parent, child in edges:
        neighbours[parent].append(child)
        neighbours[child].append(parent)
    if join_roots:
        children = {child for _, child in edges}
        neighbours["<root>"] = [name for name in names if name not in children]
        for root in neighbours["<root>"]:
            neighbours[root].append("<root>")
    distances = torch.zeros(len(names), len(names), dtype=torch.float64)
    for row, source in enumerate(names):
        seen = {source: 0}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            for other in neighbours[node]:
                if other not in seen:
                    seen[other] = seen[node] + 1
                    queue.append(other)
        for column, target in enumerate(names):
            distances[row, column] = seen[target]
    return distances


def dense_frechet(probs: torch.Tensor, squared: torch.Tensor) -> tuple[list[int], list[float]]:
    """argmin_y sum_i P_i d(y, i)^2 by plain loops; squared is [K observed, M candidates]."""
    picks, values = [], []
    for image in range(probs.shape[0]):
        best, best_value = None, math.inf
        for y in range(squared.shape[1]):
            value = sum(float(probs[image, i]) * float(squared[i, y]) for i in range(squared.shape[0]))
            if value < best_value - 1e-12:
                best, best_value = y, value
        picks.append(best)
        values.append(best_value)
    return picks, values


# ---------------------------------------------------------------- Fréchet mean: tree metric


def test_tree_objective_matches_all_pairs_bfs_on_random_tree():
    edges = random_tree_edges(200, seed=1)
    metric = LabelMetric.from_tree(edges)
    distances = bfs_distances(edges, metric.names)
    generator = torch.Generator().manual_seed(0)
    observed = torch.randperm(200, generator=generator)[:40]
    weights = torch.rand(9, 40, generator=generator, dtype=torch.float64)
    weights[0, :30] = 0.0  # a sparse row

    dense = weights @ distances[observed].square()  # [9, 200]
    assert torch.allclose(metric.objective(weights, observed), dense, atol=ATOL)
    candidates = torch.randperm(200, generator=generator)[:50]
    assert torch.allclose(metric.objective(weights, observed, candidates), dense[:, candidates], atol=ATOL)
    positions, values = metric.best(weights, observed)
    assert positions.tolist() == dense.argmin(dim=1).tolist()
    assert torch.allclose(values, dense.min(dim=1).values, atol=ATOL)

    a, b = torch.randint(0, 200, (300,), generator=generator), torch.randint(0, 200, (300,), generator=generator)
    assert torch.allclose(metric.squared_distances(a, b), distances[a, b].square(), atol=ATOL)


def test_forest_is_joined_by_a_hidden_root_that_is_never_predicted():
    edges = [e for e in random_tree_edges(120, seed=2) if e[1] not in ("n7", "n30", "n31")]
    metric = LabelMetric.from_tree(edges, nodes=[f"n{i}" for i in range(120)])
    assert len(metric) == 120  # the hidden root is not a label
    distances = bfs_distances(edges, metric.names, join_roots=True)
    observed = torch.tensor([metric.index[n] for n in ("n7", "n30", "n50", "n90")])
    weights = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    dense = weights @ distances[observed].square()
    assert torch.allclose(metric.objective(weights, observed), dense, atol=ATOL)
    positions, _ = metric.best(weights, observed)
    assert positions.tolist() == dense.argmin(dim=1).tolist()


def test_frechet_mean_from_clip_logits_follows_the_reference_rule():
    edges = random_tree_edges(150, seed=3)
    metric = LabelMetric.from_tree(edges)
    distances = bfs_distances(edges, metric.names)
    generator = torch.Generator().manual_seed(1)
    observed_names = [metric.names[i] for i in torch.randperm(150, generator=generator)[:25].tolist()]
    image_feats = unit(torch.randn(12, 32, generator=generator, dtype=torch.float64))
    class_feats = unit(torch.randn(25, 32, generator=generator, dtype=torch.float64))
    logits = 100.0 * image_feats @ class_feats.T  # [12, 25]
    probs = torch.softmax(logits, dim=1)
    observed = [metric.index[n] for n in observed_names]

    result = frechet_mean(logits, observed_names, metric)
    picks, values = dense_frechet(probs, distances[observed].square())
    assert result.labels == [metric.names[p] for p in picks]
    assert torch.allclose(result.objective, torch.tensor(values, dtype=torch.float64), atol=ATOL)
    assert result.zero_shot_labels == [observed_names[c] for c in logits.argmax(dim=1).tolist()]

    leaves = sorted(set(metric.names) - {parent for parent, _ in edges})
    restricted = frechet_mean(logits, observed_names, metric, label_space=leaves)
    columns = [metric.index[n] for n in leaves]
    picks, values = dense_frechet(probs, distances[observed][:, columns].square())
    assert restricted.labels == [leaves[p] for p in picks]
    assert restricted.indices.tolist() == picks


def test_top_k_truncation_reports_kept_mass_and_uses_only_kept_classes():
    edges = random_tree_edges(100, seed=4)
    metric = LabelMetric.from_tree(edges)
    distances = bfs_distances(edges, metric.names)
    generator = torch.Generator().manual_seed(2)
    observed_names = [metric.names[i] for i in torch.randperm(100, generator=generator)[:20].tolist()]
    logits = 3.0 * torch.randn(10, 20, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)

    result = frechet_mean(logits, observed_names, metric, top_k=3)
    truncated = torch.zeros_like(probs)
    for image in range(10):
        for column in probs[image].argsort(descending=True)[:3].tolist():
            truncated[image, column] = probs[image, column]
    assert torch.allclose(result.kept_mass, truncated.sum(dim=1), atol=ATOL)
    assert (result.kept_mass < 1.0).all()
    picks, values = dense_frechet(truncated, distances[[metric.index[n] for n in observed_names]].square())
    assert result.labels == [metric.names[p] for p in picks]
    assert torch.allclose(result.objective, torch.tensor(values, dtype=torch.float64), atol=ATOL)


ANIMALS = [
    ("animal", "dog"), ("animal", "cat"),
    ("dog", "poodle"), ("dog", "beagle"),
    ("cat", "siamese"), ("cat", "tabby"),
]  # fmt: skip


def test_unobserved_parent_is_predicted_when_the_model_is_torn_between_its_children():
    metric = LabelMetric.from_tree(ANIMALS)
    observed = ["tabby", "beagle", "siamese", "poodle"]  # not in the metric's order: matched by name
    logits = torch.tensor([[0.0, 5.1, 0.0, 5.0], [9.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    result = frechet_mean(logits, observed, metric)
    assert result.zero_shot_labels == ["beagle", "tabby"]
    assert result.labels == ["dog", "tabby"]  # "dog" was never prompted
    assert result.contributions[0][0]["class"] == "beagle"
    assert result.contributions[0][0]["squared_distance"] == pytest.approx(1.0)

    truth = ["dog", "tabby"]
    loki = label_space_scores(result.labels, truth, metric)
    zero_shot = label_space_scores(result.zero_shot_labels, truth, metric)
    assert loki == {"accuracy": 1.0, "expected_squared_distance": 0.0, "count": 2.0}
    assert zero_shot["expected_squared_distance"] == pytest.approx(0.5)  # beagle is 1 edge from dog


def test_unobserved_class_between_two_observed_ones_wins_with_self_derived_metric():
    generator = torch.Generator().manual_seed(3)
    dog, coyote, car = unit(torch.randn(3, 16, generator=generator, dtype=torch.float64))
    wolf = unit(dog + coyote)
    metric = LabelMetric.from_embeddings(["dog", "wolf", "coyote", "car"], torch.stack([dog, wolf, coyote, car]))
    logits = torch.tensor([[4.0, 4.0, -2.0]], dtype=torch.float64)  # over dog, coyote, car
    result = frechet_mean(logits, ["dog", "coyote", "car"], metric)
    assert result.labels == ["wolf"]


def test_self_derived_metric_matches_loops_and_its_closed_form():
    generator = torch.Generator().manual_seed(4)
    names = [f"class {i}" for i in range(30)]
    text_feats = unit(torch.randn(30, 24, generator=generator, dtype=torch.float64))
    metric = LabelMetric.from_embeddings(names, text_feats)
    observed_names = names[5:17]
    logits = 100.0 * unit(torch.randn(8, 24, generator=generator, dtype=torch.float64)) @ text_feats[5:17].T
    probs = torch.softmax(logits, dim=1)

    result = frechet_mean(logits, observed_names, metric)
    squared = torch.tensor(
        [[float(((text_feats[5 + i] - text_feats[y]) ** 2).sum()) for y in range(30)] for i in range(12)],
        dtype=torch.float64,
    )
    picks, values = dense_frechet(probs, squared)
    assert result.indices.tolist() == picks
    assert torch.allclose(result.objective, torch.tensor(values, dtype=torch.float64), atol=ATOL)
    closed_form = (text_feats @ (probs @ text_feats[5:17]).T).argmax(dim=0)  # argmax_y t_y · sum_i P_i t_i
    assert result.indices.tolist() == closed_form.tolist()


def test_distance_matrix_metric_matches_loops():
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    distances = torch.cdist(points, points)
    names = [f"L{i}" for i in range(20)]
    metric = LabelMetric.from_distance_matrix(names, distances.numpy())
    logits = 2.0 * torch.randn(6, 7, generator=generator, dtype=torch.float64)
    result = frechet_mean(logits, names[3:10], metric)
    picks, values = dense_frechet(torch.softmax(logits, dim=1), distances[3:10].square())
    assert result.indices.tolist() == picks
    assert torch.allclose(result.objective, torch.tensor(values, dtype=torch.float64), atol=ATOL)
    truth = [names[(p + 1) % 20] for p in picks]
    expected = sum(float(distances[p, (p + 1) % 20]) ** 2 for p in picks) / len(picks)
    assert expected_squared_distance(result.labels, truth, metric) == pytest.approx(expected)


def test_observed_class_missing_from_the_metric_is_named():
    metric = LabelMetric.from_tree(ANIMALS)
    with pytest.raises(ConfigError, match="'poodel'.*did you mean 'poodle'"):
        frechet_mean(torch.zeros(1, 2), ["poodel", "tabby"], metric)
    with pytest.raises(ConfigError, match="expected \\[N, 2\\]"):
        frechet_mean(torch.zeros(1, 3), ["poodle", "tabby"], metric)


# ---------------------------------------------------------------- metric files


HIERARCHY_FILES = {
    "edges.csv": "parent,child\n" + "".join(f"{p},{c}\n" for p, c in ANIMALS),
    "edges_swapped.csv": "child,parent\n" + "".join(f"{c},{p}\n" for p, c in ANIMALS),
    "edges.tsv": "".join(f"{p}\t{c}\n" for p, c in ANIMALS),
    "edges.txt": "# animals\n" + "".join(f"{p} -> {c}\n" for p, c in ANIMALS),
    "pairs.json": json.dumps([[p, c] for p, c in ANIMALS]),
    "mapping.json": json.dumps({"animal": ["dog", "cat"], "dog": ["poodle", "beagle"], "cat": ["siamese", "tabby"]}),
    "nested.json": json.dumps({"animal": {"dog": {"poodle": {}, "beagle": {}}, "cat": {"siamese": {}, "tabby": {}}}}),
}


@pytest.mark.parametrize("filename", sorted(HIERARCHY_FILES))
def test_every_hierarchy_format_gives_the_same_distances(tmp_path, filename):
    path = tmp_path / filename
    path.write_text(HIERARCHY_FILES[filename], encoding="utf-8")
    metric = LabelMetric.from_hierarchy_file(path)
    reference = LabelMetric.from_tree(ANIMALS)
    firsts = [x for x in reference.names for _ in reference.names]
    seconds = [y for _ in reference.names for y in reference.names]
    ours = metric.squared_distances(metric.indices(firsts), metric.indices(seconds))
    theirs = reference.squared_distances(reference.indices(firsts), reference.indices(seconds))
    assert sorted(metric.names) == sorted(reference.names)
    assert torch.equal(ours, theirs)


BAD_HIERARCHIES = {
    "cycle.csv": ("a,b\nb,c\nc,a\n", "cycle"),
    "two_parents.csv": ("a,b\nc,b\n", "two parents"),
    "self.csv": ("a,a\n", "itself"),
    "three_columns.csv": ("a,b,c\n", "two columns"),
    "broken.json": ("{not json", "not valid JSON"),
    "scalar.json": ("{\"a\": 3}", "children of 'a'"),
    "empty.txt": ("# nothing\n", "no edges"),
    "words.txt": ("a b c\n", "line 1"),
}


@pytest.mark.parametrize("filename", sorted(BAD_HIERARCHIES))
def test_bad_hierarchy_files_raise_config_error(tmp_path, filename):
    text, message = BAD_HIERARCHIES[filename]
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        LabelMetric.from_hierarchy_file(path)


def test_missing_hierarchy_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LabelMetric.from_hierarchy_file(tmp_path / "nope.csv")


def test_distance_csv_columns_are_matched_to_rows_by_name(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(",c,a,b\na,2,0,1\nb,3,1,0\nc,0,2,3\n", encoding="utf-8")  # columns in another order
    metric = LabelMetric.from_distance_file(path)
    pairs = {("a", "b"): 1.0, ("a", "c"): 2.0, ("b", "c"): 3.0, ("c", "c"): 0.0}
    for (x, y), distance in pairs.items():
        value = metric.squared_distances(metric.indices([x]), metric.indices([y]))
        assert value.item() == pytest.approx(distance**2)


def test_distance_npy_reads_names_beside_it(tmp_path):
    matrix = np.array([[0.0, 1.0, 4.0], [1.0, 0.0, 2.0], [4.0, 2.0, 0.0]])
    np.save(tmp_path / "d.npy", matrix)
    with pytest.raises(ConfigError, match="names"):
        LabelMetric.from_distance_file(tmp_path / "d.npy")
    (tmp_path / "d.txt").write_text("x\ny\nz\n", encoding="utf-8")
    metric = LabelMetric.from_distance_file(tmp_path / "d.npy")
    assert metric.names == ["x", "y", "z"]
    assert metric.squared_distances(metric.indices(["z"]), metric.indices(["x"])).item() == 16.0
    explicit = LabelMetric.from_distance_file(tmp_path / "d.npy", names=["p", "q", "r"])
    assert explicit.names == ["p", "q", "r"]


BAD_DISTANCES = {
    "asymmetric.csv": (",a,b\na,0,1\nb,2,0\n", "not symmetric"),
    "negative.csv": (",a,b\na,0,-1\nb,-1,0\n", "negative"),
    "diagonal.csv": (",a,b\na,1,1\nb,1,0\n", "diagonal"),
    "ragged.csv": (",a,b\na,0\nb,1,0\n", "row 2"),
    "text.csv": (",a,b\na,0,x\nb,1,0\n", "not a number"),
    "renamed.csv": (",a,b\na,0,1\nc,1,0\n", "differ"),
}


@pytest.mark.parametrize("filename", sorted(BAD_DISTANCES))
def test_bad_distance_files_raise_config_error(tmp_path, filename):
    text, message = BAD_DISTANCES[filename]
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        LabelMetric.from_distance_file(path)


def test_npy_with_wrong_number_of_names_raises(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="3 × 3|2 × 2"):
        LabelMetric.from_distance_file(tmp_path / "d.npy", names=["a", "b"])


# ---------------------------------------------------------------- Tip-Adapter


def test_cache_logits_match_the_formula_written_with_loops():
    generator = torch.Generator().manual_seed(6)
    classes = ["ant", "bee", "cow", "dog"]
    support = unit(torch.randn(12, 10, generator=generator, dtype=torch.float64))
    support_labels = [classes[(3 * i + 1) % 4] for i in range(12)]
    text = unit(torch.randn(4, 10, generator=generator, dtype=torch.float64))
    images = unit(torch.randn(7, 10, generator=generator, dtype=torch.float64))
    zero_shot = 100.0 * images @ text.T
    alpha, beta = 1.7, 3.2

    output = cache_logits(images, zero_shot, build_cache(support, support_labels, classes), alpha, beta)
    expected = torch.zeros(7, 4, dtype=torch.float64)
    for n in range(7):
        for c in range(4):
            votes = sum(
                math.exp(-beta * (1.0 - float(images[n] @ support[s])))
                for s in range(12)
                if support_labels[s] == classes[c]
            )
            expected[n, c] = 100.0 * float(images[n] @ text[c]) + alpha * votes
    assert torch.allclose(output.logits, expected, atol=ATOL)

    explained = output.explain(0)
    predicted = classes[int(expected[0].argmax())]
    own = [s for s in range(12) if support_labels[s] == predicted]
    assert explained["class"] == predicted
    assert explained["nearest_cached_example"] == max(own, key=lambda s: float(images[0] @ support[s]))
    column = classes.index(predicted)
    assert explained["cache_term"] == pytest.approx(float(expected[0, column] - zero_shot[0, column]))


def test_build_cache_rejects_unknown_labels_and_unnormalised_features():
    feats = unit(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ConfigError, match="'zebra'"):
        build_cache(feats, ["cat", "zebra"], ["cat", "dog"])
    with pytest.raises(ConfigError, match="not L2-normalised"):
        build_cache(3.0 * feats, ["cat", "dog"], ["cat", "dog"])


def loo_reference(support, labels, classes, zero_shot, alphas, betas):
    """Leave-one-out grid search by loops: best accuracy, then best mean log-probability of the truth."""
    best, grid = None, []
    for beta in betas:
        for alpha in alphas:
            correct, log_likelihood = 0, 0.0
            for s in range(len(labels)):
                scores = []
                for c, name in enumerate(classes):
                    votes = sum(
                        math.exp(-beta * (1.0 - float(support[s] @ support[o])))
                        for o in range(len(labels))
                        if o != s and labels[o] == name
                    )
                    scores.append(float(zero_shot[s, c]) + alpha * votes)
                truth = classes.index(labels[s])
                correct += int(max(range(len(classes)), key=lambda c: (scores[c], -c)) == truth)
                top = max(scores)
                log_likelihood += scores[truth] - top - math.log(sum(math.exp(v - top) for v in scores))
            key = (correct / len(labels), log_likelihood / len(labels))
            grid.append(key[0])
            if best is None or key > best[0]:
                best = (key, alpha, beta)
    return best[1], best[2], torch.tensor(grid, dtype=torch.float64).reshape(len(betas), len(alphas))


def test_tuning_uses_leave_one_out_on_support_only():
    # Support: each class sits where zero-shot text is slightly wrong, so its own shots must correct it.
    # Queries of class "b" sit inside the "a" support cluster, where zero-shot is right and the cache misleads.
    generator = torch.Generator().manual_seed(7)
    e = torch.eye(6, dtype=torch.float64)
    noise = lambda count: 0.01 * torch.randn(count, 6, generator=generator, dtype=torch.float64)  # noqa: E731
    support = unit(torch.cat([e[2] + 0.02 * e[1] + noise(4), e[3] + 0.02 * e[0] + noise(4)]))
    labels = ["a"] * 4 + ["b"] * 4
    classes = ["a", "b"]
    text = e[:2]
    queries = unit(e[2] + 0.05 * e[1] + noise(5))
    query_truth = torch.ones(5, dtype=torch.long)
    alphas, betas = [0.1, 0.5, 1.0, 2.0, 3.0], [0.1, 1.0, 4.0, 7.0]

    cache = build_cache(support, labels, classes)
    tuned = tune_alpha_beta(cache, 100.0 * support @ text.T, alphas=alphas, betas=betas)
    alpha, beta, grid = loo_reference(support, labels, classes, 100.0 * support @ text.T, alphas, betas)
    assert (tuned.alpha, tuned.beta) == (alpha, beta)
    assert torch.allclose(tuned.accuracy, grid)  # no support image ever voted for itself
    assert tuned.loo_accuracy == 1.0 and tuned.zero_shot_accuracy == 0.0

    def query_accuracy(alpha, beta):
        logits = cache_logits(queries, 100.0 * queries @ text.T, cache, alpha, beta).logits
        return (logits.argmax(dim=1) == query_truth).double().mean().item()

    best_for_queries = max(((a, b) for b in betas for a in alphas), key=lambda pair: query_accuracy(*pair))
    assert query_accuracy(*best_for_queries) == 1.0
    assert query_accuracy(tuned.alpha, tuned.beta) < 1.0  # the queries would have chosen otherwise
    assert best_for_queries != (tuned.alpha, tuned.beta)


# ---------------------------------------------------------------- TFUP-style unsupervised cache


@pytest.mark.parametrize(
    ("images", "classes", "expected"),
    [(1000, 10, 16), (100, 10, 9), (400, 10, 12), (45, 1, 13), (70, 2, 10), (5, 2, 5), (50, 3, 9)],
)
def test_cache_size_follows_the_tfup_rule(images, classes, expected):
    assert cache_size_per_class(images, classes) == min(max(int(0.3 * images / classes), 9), 16, images) == expected


def kl(p, q) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def test_unsupervised_cache_matches_the_rule_written_with_loops():
    generator = torch.Generator().manual_seed(8)
    classes = ["c0", "c1", "c2"]
    images = unit(torch.randn(40, 12, generator=generator, dtype=torch.float64))
    text = unit(torch.randn(3, 12, generator=generator, dtype=torch.float64))
    zero_shot = 100.0 * images @ text.T
    per_class = cache_size_per_class(40, 3)  # 0.3·40/3 = 4 -> clamped up to 9
    assert per_class == 9

    cache = build_unsupervised_cache(images, zero_shot, classes)
    probs = [torch.softmax(10.0 * (images[n] @ text.T), dim=0).tolist() for n in range(40)]
    expected_sources = []
    for c in range(3):
        ranked = sorted(range(40), key=lambda n: (-probs[n][c], n))[: 2 * per_class]
        typicality = {j: sum(kl(probs[j], probs[k]) for k in ranked if k != j) for j in ranked}
        expected_sources += sorted(ranked, key=lambda j: (typicality[j], ranked.index(j)))[:per_class]
    assert cache.sources == expected_sources

    def reference_sim(n):  # wlb12345/TFUP utils.get_sim_based_kl, one test row
        row = torch.tensor([kl(probs[n], probs[j]) for j in expected_sources], dtype=torch.float64)
        z = (row - row.mean()) / row.std()  # unbiased
        return 2 * (1 - (z - z.min()) / (z.max() - z.min()))

    for kl_weight, sim in (("reference", reference_sim),
                           ("exp", lambda n: torch.tensor([2.0 * math.exp(-kl(probs[n], probs[j])) for j in expected_sources]))):
        output = unsupervised_cache_logits(images, zero_shot, cache, kl_weight=kl_weight)
        expected = zero_shot.clone()
        for n in range(40):
            weights = sim(n)
            for position, j in enumerate(expected_sources):
                similarity = float(images[n] @ images[j]) * float(weights[position])
                expected[n, position // per_class] += 0.3 * math.exp(-1.0 * (1.0 - similarity))
        torch.testing.assert_close(output.logits, expected, atol=1e-6, rtol=0)
        assert output.explain(0)["nearest_cached_example"] in expected_sources


def test_reference_weight_ranks_keys_within_each_query_row():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.001, 0.001, 0.998]], dtype=torch.float64)
    weights = prediction_weights(p, p.log(), p.log())
    assert weights[0].tolist() == pytest.approx([2.0, weights[0, 1].item(), 0.0])  # closest 2, farthest 0
    assert 0.0 < weights[0, 1] < 2.0
    one_key = prediction_weights(p, p.log(), p[:1].log())  # a single key: the reference divides by zero
    assert one_key.tolist() == [[1.0], [1.0], [1.0]]
    with pytest.raises(ConfigError, match="kl_weight is 'cosine'"):
        prediction_weights(p, p.log(), p.log(), "cosine")


def test_exp_kl_weight_is_two_for_agreeing_predictions_and_falls_towards_zero():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.001, 0.001, 0.998]], dtype=torch.float64)
    weights = prediction_weights(p, p.log(), p.log(), "exp")
    assert weights.diagonal().tolist() == pytest.approx([2.0, 2.0])
    assert ((weights > 0) & (weights <= 2.0)).all()
    assert weights[0, 1] < 0.1


def test_unsupervised_cache_needs_logits_for_every_class():
    images = unit(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="expected \\[4, 3\\]"):
        build_unsupervised_cache(images, torch.zeros(4, 2), ["a", "b", "c"])
