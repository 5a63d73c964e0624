"""TransCLIP (``transclip``): transductive assignments over all of the run's images, after any head or refiner.

Prepared once on the driver from a gather of every image's features and logits so far (from the feature store when
cached, so a re-run with other classes encodes nothing); each image's answer is then looked up by its position in
the run, batch by batch, on any engine. The logits it hands on are those whose probabilities, under the model's
score rule, are TransCLIP's assignments z: ``log z`` (softmax) or ``log z − log(1 − z)`` (sigmoid). The maths is
:mod:`vlmcls.adapters.transclip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .pipeline import BatchScores, Pipeline, RunContext, RunReport, merge_notes
from .registry import MethodRecord, REFINER, option, register, templates_head

if TYPE_CHECKING:
    import torch

__all__ = ["TransclipConfig"]

_Z_FLOOR = 1e-300


@dataclass
class TransclipConfig:
    lam: float = option(1.0, "λ: how strongly assignments keep to the predictions so far (KL weight; 1 = paper's "
                        "zero-shot).", minimum=0.0)
    neighbours: int = option(3, "k of the Laplacian over each image's nearest other images.", minimum=1)
    iterations: int = option(10, "Mean/covariance updates (z is updated once more at the end).", minimum=0)
    anchor: float = option(0.0, "StatA's anchor on the class means toward their text (0 = off, as published; "
                           "try 1 when a run holds few of the classes).", minimum=0.0)


def _gathered(positions, feats, scores: BatchScores):
    return positions, feats, scores.logits


@dataclass
class TransclipStage:
    logits: torch.Tensor  # [N, C] by position in the run
    moved: torch.Tensor  # [N] bool: the assignment's argmax differs from the predictions so far
    class_names: list[str]
    images: int
    by_position = True  # each image's answer comes from the pass over the whole run

    def apply(self, feats: torch.Tensor, upstream: BatchScores, explain: bool, positions: Any = None) -> BatchScores:
        import torch

        if positions is None:
            raise ConfigError("refiner 'transclip' scores the run's own images only (its answers come from one pass "
                              "over all of them); it cannot score other images such as a support folder.")
        if self.logits is None:  # a run too small to transduce: the scores so far, unchanged
            return upstream
        rows = torch.as_tensor(positions, dtype=torch.long)
        logits = self.logits[rows]
        moved = self.moved[rows]
        notes = upstream.notes
        if explain:
            own = [{"zero_shot_class": self.class_names[int(upstream.logits[n].argmax())]} if bool(moved[n]) else None
                   for n in range(rows.numel())]
            notes = merge_notes(upstream.notes, "transclip", own)
        return BatchScores(logits, notes, upstream.labels, counts={"transclip_moved": float(moved.sum())})

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {"transclip_moved": int(counts.get("transclip_moved", 0))}


def _prepare_transclip(context: RunContext, config: TransclipConfig, upstream: Pipeline, gather,
                       report: RunReport) -> TransclipStage:
    import torch

    from ..adapters.transclip import TransclipSettings, transclip_assignments

    parts = gather(upstream, _gathered)
    positions = torch.cat([torch.as_tensor(p) for p, _, _ in parts])
    order = torch.argsort(positions)
    feats = torch.cat([torch.as_tensor(f) for _, f, _ in parts])[order]  # [N, D] in the run's order
    logits = torch.cat([torch.as_tensor(l) for _, _, l in parts])[order]  # [N, C]
    names = list(context.class_names)
    if feats.shape[0] < 2:
        report.warnings.append({"method": "transclip", "warning": f"{feats.shape[0]} image(s): TransCLIP learns "
                                "from a run's images together and needs two or more; scores left as they were"})
        return TransclipStage(None, None, names, int(feats.shape[0]))
    if config.anchor > 0 and upstream.weights is None:
        raise ConfigError(f"transclip.anchor pulls class means toward the head's text weights; head "
                          f"'{report.head}' has none. Use a linear text head (name, templates, cbd, waffle, cupl) "
                          "or leave transclip.anchor at 0.")
    settings = TransclipSettings(lam=config.lam, neighbours=config.neighbours, iterations=config.iterations,
                                 anchor=config.anchor)
    result = transclip_assignments(feats, logits, settings, upstream.weights if config.anchor > 0 else None)
    z = result.z.clamp(min=_Z_FLOOR)
    if context.text.score_rule == "sigmoid":
        out = torch.log(z) - torch.log1p(-z.clamp(max=1 - 1e-16))
    else:
        out = torch.log(z)
    moved = result.z.argmax(dim=1) != logits.argmax(dim=1)
    return TransclipStage(out.float(), moved, names, int(feats.shape[0]))



register(MethodRecord(
    name="transclip", kind=REFINER,
    summary="TransCLIP: transductive GMM + Laplacian + KL-to-text over all of the run's images (no labels)",
    text_source="-", config=TransclipConfig, prepare=_prepare_transclip,
    cost="one pass over all image features; N×N kNN in chunks, then ~11 × [N, C, D] products",
    head_when_alone=templates_head, order=40,
))
