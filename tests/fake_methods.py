"""Stand-in methods for tests: a head record whose logits, notes and costs a test scripts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from vlmcls.methods import HEAD, BatchScores, MethodRecord


@dataclass
class _Empty:
    """A config with no settings."""


@dataclass
class ScriptedHead:
    logits_fn: Callable[[torch.Tensor], torch.Tensor]  # feats [B, D] -> logits [B, C]
    notes_fn: Callable[[torch.Tensor], list[dict]] | None = None
    weights: Any = None
    text_feats: Any = None

    def apply(self, feats, upstream, explain):
        notes = self.notes_fn(feats) if self.notes_fn is not None else None  # explains whether asked or not
        return BatchScores(self.logits_fn(feats), notes)

    def summarize(self, counts, images):
        return {}


def scripted_head(name: str, logits_fn, *, llm_calls: int = 0, llm_tokens: int = 0, warnings=(), notes_fn=None,
                  fail: Exception | None = None) -> MethodRecord:
    """``logits_fn(feats [B, D], class_names) -> logits [B, C]``; ``fail`` is raised when the stage is prepared."""

    def prepare(context, config, upstream, gather, report):
        if fail is not None:
            raise fail
        report.llm_calls += llm_calls
        report.llm_tokens += llm_tokens
        report.warnings.extend(warnings)
        names = list(context.class_names)
        return ScriptedHead(lambda feats: logits_fn(feats, names), notes_fn)

    return MethodRecord(name=name, kind=HEAD, summary="a test's scripted head", text_source="-", config=_Empty,
                        prepare=prepare, cost="-")
