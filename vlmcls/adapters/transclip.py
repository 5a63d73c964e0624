"""TransCLIP (Zanella et al., NeurIPS 2024): transductive zero-shot assignments over all of a run's images.

Written from the paper's objective and block majorise-minimise updates (the released code is AGPL-3.0 and was only
read to check constants). With f_i the unit image features [N, D], ŷ_i the zero-shot distribution softmax(logits_i),
a Gaussian mixture with class means μ_k and one shared diagonal covariance diag(σ²), and the k-nearest-neighbour
affinities w_ij = f_i·f_j (j among i's k = 3 nearest other images, 0 elsewhere)::

    log p_ik = −½ Σ_d (f_id − μ_kd)² / σ²_d                                  (the GMM term; log det is the same for all k)
    z_i     ∝ ŷ_i^λ ⊙ exp( log p_i / T + (1 / 2k) Σ_j (w_ij + w_ji) z_j )      (z-update, 5 sweeps, all rows at once)
    μ_k     = normalise( Σ_i z_ik f_i / Σ_i z_ik )                           (μ-update)
    σ²_d    = Σ_i Σ_k z_ik (f_id − μ_kd)² / Σ_i Σ_k z_ik                      (σ-update)

T = 50 is the released code's temperature on the GMM term and 1/(2k) its weight on the symmetrised Laplacian; λ = 1
(zero-shot). Initialisation: z = ŷ; μ_k = normalise(Σ z_ik f_i over the 8 images most probable for k); σ² = 1/D.
Iterations: z-update, then μ and σ, ten times, then a last z-update (11 z-updates in all). Output: z.

Guards (each a no-op on ordinary runs): a class whose assignments sum to < 1e-12 keeps its mean (the update would
divide by zero: a run of images from one class); σ² ≥ 1e-12 (a run of identical images has no spread); fewer than
k + 1 images use every other image as neighbours. ``anchor`` > 0 adds StatA's statistical anchor on the means
(Zanella et al., CVPR 2025) for runs that hold few of the classes: μ_k ← normalise(β_k μ_k + (1 − β_k) t_k) with
β_k = n_k / (anchor + n_k), n_k the images currently assigned to k and t_k its unit text weight — a class no image
is assigned to stays at its text; the covariance is not anchored (TransCLIP's is shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from .cache_model import _check_feats

__all__ = ["TransclipSettings", "TransclipResult", "transclip_assignments", "knn_affinity", "gmm_log_likelihood", "z_update"]

MASS_FLOOR = 1e-12
VARIANCE_FLOOR = 1e-12


@dataclass(frozen=True)
class TransclipSettings:
    lam: float = 1.0  # λ: weight of the zero-shot prediction in the KL term (1 in zero-shot)
    neighbours: int = 3  # k of the kNN Laplacian
    iterations: int = 10  # μ/σ updates; z is updated once more at the end
    sweeps: int = 5  # z-update sweeps per iteration
    temperature: float = 50.0  # T on the GMM term
    init_top: int = 8  # images per class that initialise its mean
    anchor: float = 0.0  # StatA's α on the means (0: off, TransCLIP as published)


@dataclass
class TransclipResult:
    z: Tensor  # [N, C] final assignments (rows sum to 1)
    zero_shot: Tensor  # [N, C] ŷ
    means: Tensor  # [C, D]
    variance: Tensor  # [D]


def knn_affinity(feats: Tensor, k: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Each image's k nearest *other* images by cosine: (indices [N, k'], cosines [N, k']), k' = min(k, N − 1)."""
    count = feats.shape[0]
    k = min(k, count - 1)
    index = torch.empty(count, k, dtype=torch.long)
    value = torch.empty(count, k, dtype=feats.dtype)
    for start in range(0, count, chunk):
        rows = slice(start, min(start + chunk, count))
        sims = feats[rows] @ feats.T  # [b, N]
        own = torch.arange(sims.shape[0])
        sims[own, own + start] = -torch.inf  # never its own neighbour, even when a duplicate ties with it
        top = torch.topk(sims, k, dim=1)
        index[rows], value[rows] = top.indices, top.values
    return index, value


def _laplacian(index: Tensor, value: Tensor, z: Tensor) -> Tensor:
    """Σ_j (w_ij + w_ji) z_j for all i: [N, C]."""
    forward = (value[:, :, None] * z[index]).sum(dim=1)  # Σ_j w_ij z_j
    backward = torch.zeros_like(z).index_add_(0, index.reshape(-1), (value[:, :, None] * z[:, None, :]).reshape(-1, z.shape[1]))
    return forward + backward  # backward: Σ_j w_ji z_j


def gmm_log_likelihood(feats: Tensor, means: Tensor, variance: Tensor) -> Tensor:
    """−½ Σ_d (f_id − μ_kd)² / σ²_d: [N, C]."""
    inverse = 1.0 / variance  # [D]
    return -0.5 * ((feats ** 2) @ inverse[:, None] - 2.0 * feats @ (means * inverse).T + ((means ** 2) @ inverse)[None, :])


def z_update(log_likelihood: Tensor, zero_shot: Tensor, z: Tensor, index: Tensor, value: Tensor,
             s: TransclipSettings) -> Tensor:
    """The z-update's sweeps (module docstring)."""
    weight = 1.0 / (2 * s.neighbours)
    prior = zero_shot ** s.lam
    for _ in range(s.sweeps):
        energy = log_likelihood / s.temperature
        if index.shape[1]:
            energy = energy + weight * _laplacian(index, value, z)
        energy = energy - energy.amax(dim=1, keepdim=True)
        unnormalised = prior * torch.exp(energy)
        z = unnormalised / unnormalised.sum(dim=1, keepdim=True)
    return z


def _init_means(feats: Tensor, z: Tensor, top: int) -> Tensor:
    top = min(top, feats.shape[0])
    chosen = torch.sort(z, dim=0, descending=True, stable=True).indices[:top]  # [top, C]
    weights = torch.zeros_like(z).scatter_(0, chosen, z.gather(0, chosen))  # z_ik on each class's top images
    return torch.nn.functional.normalize(weights.T @ feats, dim=1)


def transclip_assignments(image_feats: Tensor, zero_shot_logits: Tensor, settings: TransclipSettings = TransclipSettings(),
              text_weights: Tensor | None = None) -> TransclipResult:
    """TransCLIP's assignments for every image of a run (module docstring); float64, deterministic."""
    _check_feats(image_feats, "image features")
    count = image_feats.shape[0]
    if zero_shot_logits.shape[0] != count:
        raise ConfigError(f"{count} image features but {zero_shot_logits.shape[0]} rows of logits.")
    if count < 2:
        raise ConfigError("TransCLIP needs at least two images: it learns from the run's images together.")
    feats = image_feats.to(torch.float64)
    zero_shot = torch.softmax(zero_shot_logits.to(torch.float64), dim=1)  # ŷ [N, C]
    z = zero_shot.clone()
    means = _init_means(feats, z, settings.init_top)  # [C, D]
    variance = torch.full((feats.shape[1],), 1.0 / feats.shape[1], dtype=torch.float64)
    index, value = knn_affinity(feats, settings.neighbours)
    anchors = None
    if settings.anchor > 0:
        if text_weights is None:
            raise ConfigError("the StatA anchor needs the head's text weights.")
        anchors = torch.nn.functional.normalize(text_weights.to(torch.float64), dim=1)
    for step in range(settings.iterations + 1):
        z = z_update(gmm_log_likelihood(feats, means, variance), zero_shot, z, index, value, settings)
        if step == settings.iterations:
            break
        mass = z.sum(dim=0)  # [C]
        updated = torch.nn.functional.normalize(z.T @ feats, dim=1)  # the division by the mass cancels
        means = torch.where((mass > MASS_FLOOR)[:, None], updated, means)
        if anchors is not None:
            assigned = torch.bincount(z.argmax(dim=1), minlength=z.shape[1]).to(torch.float64)
            beta = (assigned / (settings.anchor + assigned))[:, None]
            means = torch.nn.functional.normalize(beta * means + (1 - beta) * anchors, dim=1)
        spread = (z.T @ feats ** 2).sum(dim=0) - 2 * (means * (z.T @ feats)).sum(dim=0) + mass @ means ** 2  # [D]
        variance = (spread / mass.sum()).clamp(min=VARIANCE_FLOOR)
    return TransclipResult(z, zero_shot, means, variance)
