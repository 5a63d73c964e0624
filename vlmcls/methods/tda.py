"""TDA (``tda``): a test-time positive and negative cache filled from the run's images as a stream.

The stream is the run's own order: the listing order (a folder's sorted paths, a list file's lines, a dataset's
rows), so a re-run gives the same rows; the same images listed in another order (a shuffled list file) give other
caches and may give other answers for the images early in the stream. The stream is replayed once on the driver
from a gather of every image's features and logits (:func:`vlmcls.adapters.tda.replay_stream`); each image is then
scored from the cache as it stood at its turn, batch by batch, on any engine. The maths is :mod:`vlmcls.adapters.tda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .pipeline import BatchScores, Pipeline, RunContext, RunReport, merge_notes
from .registry import MethodRecord, REFINER, option, register, templates_head

if TYPE_CHECKING:
    import torch

    from ..adapters.tda import TdaLog

__all__ = ["TdaConfig"]


@dataclass
class TdaConfig:
    positive_capacity: int = option(3, "Images kept per class in the positive cache.", minimum=1)
    positive_alpha: float = option(2.0, "Weight α⁺ of the positive cache.", minimum=0.0)
    positive_beta: float = option(5.0, "Sharpness β⁺ of the positive cache.", minimum=0.0)
    negative_capacity: int = option(2, "Images kept per class in the negative cache.", minimum=1)
    negative_alpha: float = option(0.117, "Weight α⁻ of the negative cache.", minimum=0.0)
    negative_beta: float = option(1.0, "Sharpness β⁻ of the negative cache.", minimum=0.0)
    entropy_lower: float = option(0.2, "The negative cache takes images whose entropy / log2(C) is above this…",
                                  minimum=0.0)
    entropy_upper: float = option(0.5, "…and below this.", minimum=0.0)
    mask_lower: float = option(0.03, "A negative item pushes down the classes it gave a probability above this…",
                               minimum=0.0, maximum=1.0)
    mask_upper: float = option(1.0, "…and below this.", minimum=0.0, maximum=1.0)


def _gathered(positions, feats, scores: BatchScores):
    return positions, feats, scores.logits


@dataclass
class TdaStage:
    stream: TdaLog
    class_names: list[str]
    by_position = True  # each image is scored with the caches as they stood at its turn in the stream

    def apply(self, feats: torch.Tensor, upstream: BatchScores, explain: bool, positions: Any = None) -> BatchScores:
        from ..adapters.tda import tda_logits

        if positions is None:
            raise ConfigError("refiner 'tda' scores the run's own images only (each at its turn in the stream); "
                              "it cannot score other images such as a support folder.")
        refined, positive, negative = tda_logits(feats, upstream.logits, positions, self.stream)
        notes = upstream.notes
        if explain:
            own = []
            for n in range(feats.shape[0]):
                label = int(refined[n].argmax())
                own.append({"class": self.class_names[label],
                            "zero_shot_class": self.class_names[int(upstream.logits[n].argmax())],
                            "positive_cache_term": round(float(positive[n, label]), 6),
                            "negative_cache_term": round(float(negative[n, label]), 6)})
            notes = merge_notes(upstream.notes, "tda", own)
        return BatchScores(refined.float(), notes, upstream.labels)

    def summarize(self, counts: dict[str, float], images: int) -> dict[str, Any]:
        return {"tda_positive_items": int(self.stream.positive.images.numel()),
                "tda_negative_items": int(self.stream.negative.images.numel())}


def _prepare_tda(context: RunContext, config: TdaConfig, upstream: Pipeline, gather, report: RunReport) -> TdaStage:
    import torch

    from ..adapters.tda import TdaSettings, replay_stream

    if config.entropy_lower >= config.entropy_upper or config.mask_lower >= config.mask_upper:
        raise ConfigError(f"tda.entropy_lower ({config.entropy_lower}) must be below tda.entropy_upper "
                          f"({config.entropy_upper}) and tda.mask_lower ({config.mask_lower}) below tda.mask_upper "
                          f"({config.mask_upper}).")
    parts = gather(upstream, _gathered)  # the stream needs every image's logits, in the run's order
    positions = torch.cat([torch.as_tensor(p) for p, _, _ in parts])
    order = torch.argsort(positions)
    feats = torch.cat([torch.as_tensor(f) for _, f, _ in parts])[order]  # [N, D]
    logits = torch.cat([torch.as_tensor(l) for _, _, l in parts])[order]  # [N, C]
    settings = TdaSettings(**{k: getattr(config, k) for k in TdaSettings.__dataclass_fields__})
    return TdaStage(replay_stream(feats, logits, settings), list(context.class_names))



register(MethodRecord(
    name="tda", kind=REFINER, summary="TDA: positive/negative caches filled from the run's images in listing order",
    text_source="-", config=TdaConfig, prepare=_prepare_tda,
    cost="one ordered pass over all image features (the stream), then a small cache product per image",
    head_when_alone=templates_head, order=30,
))
