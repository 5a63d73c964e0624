"""Label metrics for the Fréchet-mean adapter: a tree, a named distance matrix, or class text embeddings.

Every metric answers two questions over its labels (by index into ``metric.names``):
``objective(weights, observed, candidates)`` = ``sum_i weights[n, i] · d(candidate, observed_i)^2`` for every
image n and candidate, and ``squared_distances(a, b)`` = ``d(a_k, b_k)^2`` element-wise. The tree metric answers
both without any ``|Y| × |Y|`` matrix (see :class:`TreeMetric`).
"""

from __future__ import annotations

import difflib
import os
from abc import ABC, abstractmethod
from collections import deque
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .metric_files import read_distance_file, read_hierarchy_file

__all__ = ["LabelMetric", "TreeMetric", "MatrixMetric", "EmbeddingMetric", "expected_calibration_error"]


def _check_names(names: Sequence[str], what: str) -> list[str]:
    names = list(names)
    if not names:
        raise ConfigError(f"{what} is empty; give at least one label name.")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ConfigError(f"{what} holds {bad[0]!r}; label names must be non-empty strings.")
    seen: set[str] = set()
    twice = [n for n in names if n in seen or seen.add(n)]
    if twice:
        raise ConfigError(f"{what} names '{twice[0]}' more than once; each label must appear once.")
    return names


class LabelMetric(ABC):
    """A distance between labels, known by name; build one with a ``from_*`` constructor."""

    kind: str = ""

    def __init__(self, names: Sequence[str]):
        self.names = _check_names(names, "the label list of the metric")
        self.index = {name: position for position, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} labels)"

    # -- constructors -------------------------------------------------------------------------------------------

    @staticmethod
    def from_tree(edges: Iterable[tuple[str, str]], nodes: Iterable[str] = ()) -> "TreeMetric":
        """A hierarchy from ``(parent, child)`` edges; distance = number of edges on the path between labels."""
        return TreeMetric(edges, nodes)

    @staticmethod
    def from_hierarchy_file(path: str | os.PathLike) -> "TreeMetric":
        """A hierarchy read from a JSON, CSV/TSV or text file of parent/child edges (see ``metric_files``)."""
        edges, lone = read_hierarchy_file(path)
        try:
            return TreeMetric(edges, lone)
        except ConfigError as exc:
            raise ConfigError(f"hierarchy file '{path}': {exc}") from exc

    @staticmethod
    def from_distance_matrix(names: Sequence[str], distances: np.ndarray | Tensor) -> "MatrixMetric":
        """A metric from a square matrix of distances (not squared) whose rows and columns follow ``names``."""
        return MatrixMetric(names, distances)

    @staticmethod
    def from_distance_file(
        path: str | os.PathLike, names: Sequence[str] | str | os.PathLike | None = None
    ) -> "MatrixMetric":
        """A metric read from a named ``.csv`` matrix, or a ``.npy`` matrix plus its names."""
        label_names, matrix = read_distance_file(path, names)
        try:
            return MatrixMetric(label_names, matrix)
        except ConfigError as exc:
            raise ConfigError(f"distance file '{path}': {exc}") from exc

    @staticmethod
    def from_embeddings(names: Sequence[str], feats: np.ndarray | Tensor) -> "EmbeddingMetric":
        """The self-derived metric: ``d(i, j) = ||t_i - t_j||`` on class text embeddings ``feats [L, D]``."""
        return EmbeddingMetric(names, feats)

    # -- lookups ------------------------------------------------------------------------------------------------

    def indices(self, names: Sequence[str], what: str = "labels") -> Tensor:
        """Positions of ``names`` in the metric, by name; a ConfigError names every label the metric lacks."""
        missing = [n for n in names if n not in self.index]
        if missing:
            hints = []
            for name in missing[:5]:
                close = difflib.get_close_matches(str(name), self.names, n=1)
                hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ConfigError(
                f"{len(missing)} of the {what} are not in the label metric: {', '.join(hints)}{more}. "
                "Add them to the hierarchy or distance file, or fix their spelling "
                f"(the metric has {len(self)} labels)."
            )
        return torch.tensor([self.index[n] for n in names], dtype=torch.long)

    # -- the two questions --------------------------------------------------------------------------------------

    @abstractmethod
    def squared_distances(self, a: Tensor, b: Tensor) -> Tensor:
        """``d(a_k, b_k)^2`` for index tensors of equal shape (float64)."""

    @abstractmethod
    def objective(self, weights: Tensor, observed: Tensor, candidates: Tensor | None = None) -> Tensor:
        """``[B, M]`` values of ``sum_i weights[b, i] · d(candidate_m, observed_i)^2``; ``None`` = every label."""

    def best(self, weights: Tensor, observed: Tensor, candidates: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """For each row of ``weights [B, K]``, the position among candidates minimising the objective, and its value.

        Ties go to the earliest candidate.
        """
        values = self.objective(weights, observed, candidates)  # [B, M]
        best_values, best_positions = values.min(dim=1)
        return best_positions, best_values


class MatrixMetric(LabelMetric):
    """Distances given as a dense named matrix; the objective is one matrix product."""

    kind = "matrix"

    def __init__(self, names: Sequence[str], distances: np.ndarray | Tensor):
        super().__init__(names)
        matrix = torch.as_tensor(np.asarray(distances, dtype=np.float64))
        size = len(self.names)
        if matrix.shape != (size, size):
            raise ConfigError(
                f"the distance matrix has shape {tuple(matrix.shape)} but {size} labels are named; "
                f"it must be {size} × {size}."
            )
        if not torch.isfinite(matrix).all():
            raise ConfigError("the distance matrix holds NaN or infinite values; every distance must be finite.")
        if (matrix < 0).any():
            raise ConfigError(
                f"the distance matrix holds a negative distance ({matrix.min().item():g}); distances must be >= 0."
            )
        scale = max(matrix.abs().max().item(), 1.0)
        diagonal = matrix.diagonal().abs().max().item()
        if diagonal > 1e-9 * scale:
            raise ConfigError(
                f"the distance matrix has a non-zero diagonal ({diagonal:g}); d(label, itself) must be 0."
            )
        asymmetry = (matrix - matrix.T).abs().max().item()
        if asymmetry > 1e-6 * scale:
            raise ConfigError(
                f"the distance matrix is not symmetric (largest |d(i,j) - d(j,i)| = {asymmetry:g}); "
                "give a symmetric matrix of distances."
            )
        self.squared = matrix.square()  # [L, L] d^2

    def squared_distances(self, a: Tensor, b: Tensor) -> Tensor:
        return self.squared[a, b]

    def objective(self, weights: Tensor, observed: Tensor, candidates: Tensor | None = None) -> Tensor:
        rows = self.squared[observed]  # [K, L]
        if candidates is not None:
            rows = rows[:, candidates]  # [K, M]
        return weights.to(torch.float64) @ rows  # [B, M]


class EmbeddingMetric(LabelMetric):
    """The self-derived metric ``d^2(i, j) = ||t_i - t_j||^2``, solved in closed form.

    ``sum_i P_i ||t_y - t_i||^2 = ||t_y||^2 sum_i P_i - 2 t_y · (sum_i P_i t_i) + sum_i P_i ||t_i||^2``, so the
    Fréchet mean is ``argmax_y t_y · (sum_i P_i t_i)`` for unit vectors; the expansion above is exact for any norm.
    """

    kind = "embedding"

    def __init__(self, names: Sequence[str], feats: np.ndarray | Tensor):
        super().__init__(names)
        text_feats = torch.as_tensor(np.asarray(feats, dtype=np.float64))  # [L, D]
        if text_feats.ndim != 2 or text_feats.shape[0] != len(self.names):
            raise ConfigError(
                f"the class text features have shape {tuple(text_feats.shape)}; expected [{len(self.names)}, D], "
                "one row per label name."
            )
        if not torch.isfinite(text_feats).all():
            raise ConfigError("the class text features hold NaN or infinite values.")
        self.feats = text_feats  # [L, D]
        self.squared_norms = text_feats.square().sum(dim=1)  # [L]

    def squared_distances(self, a: Tensor, b: Tensor) -> Tensor:
        return (self.feats[a] - self.feats[b]).square().sum(dim=-1)

    def objective(self, weights: Tensor, observed: Tensor, candidates: Tensor | None = None) -> Tensor:
        weights = weights.to(torch.float64)  # [B, K]
        feats = self.feats if candidates is None else self.feats[candidates]  # [M, D]
        norms = self.squared_norms if candidates is None else self.squared_norms[candidates]  # [M]
        mean = weights @ self.feats[observed]  # [B, D] = sum_i P_i t_i
        spread = weights @ self.squared_norms[observed]  # [B]
        total = weights.sum(dim=1, keepdim=True)  # [B, 1]
        return total * norms[None, :] - 2.0 * (mean @ feats.T) + spread[:, None]


class TreeMetric(LabelMetric):
    """Path length in a hierarchy, without any ``|Y| × |Y|`` matrix.

    The objective over every label comes from a two-pass dynamic programme (re-rooting): bottom-up sums of
    weight ``W`` and weighted distance ``S1`` per subtree, then top-down ``F1(c) = F1(p) + W_total - 2 W(c)`` and
    ``F2(c) = F2(p) + 2 F1(p) + W_total - 4 S1(c) - 4 W(c)``, where ``F2(y) = sum_i w_i d(y, i)^2`` is the objective.
    It runs only over the ancestors of the observed labels (their closure); any other label ``y`` hangs ``h`` edges
    below its nearest closure ancestor ``a`` and has ``F2(y) = F2(a) + 2h F1(a) + h^2 W_total``, which is never
    smaller than ``F2(a)``, so the unrestricted minimum always lies in the closure (across a forest's hidden root
    too: the real root above any weight is strictly better than every label in an unweighted tree). Work per image is
    O(closure size); images are a column dimension, nodes are processed a depth level at a time (so the
    number of Python steps grows with the tree's height, ~20–30 for WordNet-like trees).

    A forest is joined under a hidden root that is not a label, so two labels in different trees are
    ``depth(a) + depth(b) + 2`` apart (depths counted from their own roots).
    """

    kind = "tree"

    def __init__(self, edges: Iterable[tuple[str, str]], nodes: Iterable[str] = ()):
        names: list[str] = []
        index: dict[str, int] = {}
        parent_of: list[int] = []

        def position(name: object) -> int:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"the hierarchy holds the label {name!r}; labels must be non-empty strings.")
            if name not in index:
                index[name] = len(names)
                names.append(name)
                parent_of.append(-1)
            return index[name]

        for edge in edges:
            if len(edge) != 2:
                raise ConfigError(f"the hierarchy holds the edge {edge!r}; an edge is a (parent, child) pair.")
            parent, child = position(edge[0]), position(edge[1])
            if parent == child:
                raise ConfigError(f"the hierarchy links '{edge[0]}' to itself; remove that edge.")
            if parent_of[child] not in (-1, parent):
                raise ConfigError(
                    f"'{edge[1]}' has two parents, '{names[parent_of[child]]}' and '{edge[0]}'; a hierarchy must be "
                    "a tree (one parent per label). Keep one of the two edges."
                )
            parent_of[child] = parent
        for name in nodes:
            position(name)
        if not names:
            raise ConfigError("the hierarchy is empty; give at least one (parent, child) edge.")
        super().__init__(names)

        children: list[list[int]] = [[] for _ in names]
        for child, parent in enumerate(parent_of):
            if parent >= 0:
                children[parent].append(child)
        roots = [node for node, parent in enumerate(parent_of) if parent < 0]
        depth = [-1] * len(names)
        queue = deque(roots)
        for root in roots:
            depth[root] = 0
        while queue:
            node = queue.popleft()
            for child in children[node]:
                depth[child] = depth[node] + 1
                queue.append(child)
        unreached = [names[node] for node, d in enumerate(depth) if d < 0]
        if unreached:
            shown = ", ".join(f"'{n}'" for n in unreached[:5])
            raise ConfigError(
                f"the hierarchy has a cycle: {len(unreached)} labels never reach a root ({shown}); "
                "a label cannot be its own ancestor."
            )
        # The hidden root for a forest takes the last index; it is never a candidate label.
        self.has_hidden_root = len(roots) > 1
        if self.has_hidden_root:
            hidden = len(names)
            parent_of = [hidden if p < 0 else p for p in parent_of] + [-1]
            depth = [d + 1 for d in depth] + [0]
        self.parent = torch.tensor(parent_of, dtype=torch.long)  # [V], -1 at the root
        self.depth = torch.tensor(depth, dtype=torch.long)  # [V]
        self.num_nodes = len(parent_of)  # V = labels (+ the hidden root)
        self.root = int((self.parent < 0).nonzero()[0])

    # -- helpers -------------------------------------------------------------------------------------------------

    def _closure(self, seeds: Tensor) -> Tensor:
        """Mask ``[V]`` of the seeds and all their ancestors."""
        mask = torch.zeros(self.num_nodes, dtype=torch.bool)
        frontier = seeds.unique()
        while frontier.numel():
            mask[frontier] = True
            up = self.parent[frontier]
            up = up[up >= 0]
            frontier = up[~mask[up]].unique()
        mask[self.root] = True
        return mask

    def _rerooted(self, weights: Tensor, observed: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run the two passes over the closure; returns ``local [V]`` row of each node (-1 outside), F1, F2, total."""
        nodes = mask.nonzero().squeeze(1)
        node_depth = self.depth[nodes]
        node_depth, order = torch.sort(node_depth, stable=True)
        nodes = nodes[order]  # [M] root first, then one depth level after another
        count = nodes.numel()
        local = torch.full((self.num_nodes,), -1, dtype=torch.long)
        local[nodes] = torch.arange(count)
        local_parent = local[self.parent[nodes].clamp(min=0)]  # [M]; the root's entry is never read
        level_starts = torch.cumsum(torch.bincount(node_depth), 0).tolist()
        level_starts = [0] + level_starts  # level d holds rows level_starts[d] : level_starts[d + 1]

        inside = mask[observed]  # observed labels outside the closure carry no weight in this batch
        weights, observed = weights[:, inside].to(torch.float64), observed[inside]  # [B, K']
        batch = weights.shape[0]
        subtree_weight = torch.zeros(count, batch, dtype=torch.float64)  # W [M, B]
        subtree_weight.index_add_(0, local[observed], weights.T)
        first = torch.zeros(count, batch, dtype=torch.float64)  # S1 [M, B], later F1
        for level in range(len(level_starts) - 2, 0, -1):
            rows = slice(level_starts[level], level_starts[level + 1])
            parents = local_parent[rows]
            subtree_weight.index_add_(0, parents, subtree_weight[rows].clone())
            first.index_add_(0, parents, first[rows] + subtree_weight[rows])

        total = subtree_weight[0]  # [B]
        observed_depth = self.depth[observed].to(torch.float64)  # [K]
        second = torch.empty(count, batch, dtype=torch.float64)  # F2 [M, B]
        second[0] = weights @ observed_depth.square()  # at the root, d(root, i) = depth(i)
        for level in range(1, len(level_starts) - 1):
            rows = slice(level_starts[level], level_starts[level + 1])
            parents = local_parent[rows]
            parent_first = first[parents]  # already F1: parents sit on an earlier level
            second[rows] = (
                second[parents] + 2.0 * parent_first + total - 4.0 * first[rows] - 4.0 * subtree_weight[rows]
            )
            first[rows] = parent_first + total - 2.0 * subtree_weight[rows]  # S1 -> F1 in place
        return local, first, second, total

    # -- the two questions --------------------------------------------------------------------------------------

    def objective(self, weights: Tensor, observed: Tensor, candidates: Tensor | None = None) -> Tensor:
        if candidates is None:
            candidates = torch.arange(len(self.names))
        mask = self._closure(observed)
        local, first, second, total = self._rerooted(weights, observed, mask)
        anchor = candidates.clone()
        hops = torch.zeros_like(candidates)
        outside = (~mask[anchor]).nonzero().squeeze(1)
        while outside.numel():  # climb each candidate to its nearest closure ancestor
            anchor[outside] = self.parent[anchor[outside]]
            hops[outside] += 1
            outside = outside[~mask[anchor[outside]]]
        rows = local[anchor]
        hops = hops.to(torch.float64)[:, None]  # [M, 1]
        values = second[rows] + 2.0 * hops * first[rows] + hops.square() * total[None, :]  # [M, B]
        return values.T

    def best(self, weights: Tensor, observed: Tensor, candidates: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if candidates is not None:
            return super().best(weights, observed, candidates)
        # Every label is a candidate: the minimum lies in the closure (class docstring); only rows with weight
        # in this batch seed it, so truncated weights give a smaller closure.
        seeds = observed[(weights != 0).any(dim=0)]
        mask = self._closure(seeds)
        local, _, second, _ = self._rerooted(weights, observed, mask)
        if self.has_hidden_root:
            mask[-1] = False
        labels = mask.nonzero().squeeze(1)  # ascending label index, so ties go to the earliest label
        best_values, best_rows = second[local[labels]].min(dim=0)
        return labels[best_rows], best_values

    def squared_distances(self, a: Tensor, b: Tensor) -> Tensor:
        shape = a.shape
        a, b = a.reshape(-1).clone(), b.reshape(-1).clone()
        depth_a, depth_b = self.depth[a], self.depth[b]
        path = (depth_a - depth_b).abs()
        deeper = depth_a > depth_b
        a[deeper], b[~deeper] = self._climb(a[deeper], (depth_a - depth_b)[deeper]), self._climb(
            b[~deeper], (depth_b - depth_a)[~deeper]
        )
        apart = (a != b).nonzero().squeeze(1)
        while apart.numel():  # same depth now: climb together until the paths meet
            a[apart], b[apart] = self.parent[a[apart]], self.parent[b[apart]]
            path[apart] += 2
            apart = apart[a[apart] != b[apart]]
        return path.to(torch.float64).square().reshape(shape)

    def _climb(self, nodes: Tensor, steps: Tensor) -> Tensor:
        nodes, steps = nodes.clone(), steps.clone()
        moving = (steps > 0).nonzero().squeeze(1)
        while moving.numel():
            nodes[moving] = self.parent[nodes[moving]]
            steps[moving] -= 1
            moving = moving[steps[moving] > 0]
        return nodes


def expected_calibration_error(probs: np.ndarray | Tensor, labels: Sequence[int] | np.ndarray | Tensor,
                               bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (15: the test-time adaptation literature's default):
    Σ_b (n_b / N) · |accuracy_b − mean confidence_b|, confidence = the top probability, right = top class is the
    label. ``labels`` are class columns; a row whose label is −1 (unknown) counts as wrong. 0.0 for no rows."""
    p = probs.detach().cpu().numpy() if isinstance(probs, Tensor) else np.asarray(probs)
    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs have shape {p.shape} and labels {y.shape}; expected [N, C] and [N].")
    if bins < 1:
        raise ValueError(f"bins is '{bins}'; it must be at least 1.")
    if not len(y):
        return 0.0
    confidence = p.max(axis=1).astype(np.float64)
    right = (p.argmax(axis=1) == y).astype(np.float64)
    # bins (lo, hi]; a confidence of exactly 0 goes to the first
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - confidence[inside].mean())
    return float(total)
