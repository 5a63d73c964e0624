"""Temperature scaling (Guo et al., ICML 2017) fitted on labelled support images, never on the images classified.

One scalar T > 0 divides the logits before the softmax: the argmax (every label) is unchanged, only how sure the
probabilities are. T is the minimiser of the support images' negative log-likelihood, found on a log-spaced grid
and refined by golden-section search (the NLL is unimodal in log T for softmax logits).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError

__all__ = ["fit_temperature", "nll_at_temperature"]

_LOG_T_RANGE = (-5.0, 5.0)  # T from e^-5 to e^5: wider than any CLIP logit scale needs


def nll_at_temperature(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels [S]`` under softmax(``logits [S, C]`` / T)."""
    return float(-torch.log_softmax(logits.double() / temperature, dim=1).gather(1, labels[:, None]).mean())


def fit_temperature(logits: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """The T that minimises the NLL of softmax(logits / T) on these labelled images (logits [S, C], labels [S])."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] < 2:
        raise ConfigError(f"a temperature needs at least two labelled support images with logits [S, C]; got "
                          f"logits {tuple(logits.shape)} for {labels.shape[0]} labels.")
    grid = torch.linspace(*_LOG_T_RANGE, 101).tolist()
    losses = [nll_at_temperature(logits, labels, math.exp(g)) for g in grid]
    best = min(range(len(grid)), key=losses.__getitem__)
    low, high = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):  # golden-section on log T inside the grid cell around the best point
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll_at_temperature(logits, labels, math.exp(a)) < nll_at_temperature(logits, labels, math.exp(b)):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)
