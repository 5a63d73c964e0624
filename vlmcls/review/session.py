"""One review of one run: its rows as the page shows them, the labels file, "improve with my labels" and the order
to label in. No web code here: the server (:mod:`vlmcls.review.server`) calls these."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .labels import LabelLog
from .run_results import RunResults, final_label, load_results

__all__ = ["ReviewSession", "Improvement"]

log = logging.getLogger(__name__)


@dataclass
class Improvement:
    """A re-scored run, held until the reviewer keeps it."""

    rows: list[dict[str, Any]]  # the new rows, in the run's order
    changed: list[dict[str, Any]]  # [{row, path, before, after}]
    accuracy_before: float | None
    accuracy_after: float | None
    support: int  # labelled images used
    info: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"changed": self.changed, "changed_count": len(self.changed), "support": self.support,
                "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after, "info": self.info}


class ReviewSession:
    """The state one `vlmcls review` serves; safe to call from the server's threads."""

    def __init__(self, results: str | Path, cache_dir: str | None = None, classifier: Any = None) -> None:
        self.run: RunResults = load_results(results)
        self.log = LabelLog(self.run.path)
        self.rows = self.run.rows  # what the page shows: the run's rows, or the improved ones once kept
        self.cache_dir = cache_dir
        self._classifier = classifier
        self._pending: Improvement | None = None
        self._lock = threading.Lock()  # one re-scoring at a time; labels may go on meanwhile

    # -- reading ----------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.run.class_names

    def accuracy(self, rows: list[dict[str, Any]] | None = None) -> float | None:
        """Top-1 accuracy of ``rows`` (default: those shown) over the images with a true label among the classes."""
        rows = self.rows if rows is None else rows
        known = set(self.class_names)
        judged = [(r.get("label"), r["true_label"]) for r in rows if r.get("error") is None and r.get("true_label") in known]
        return round(sum(a == b for a, b in judged) / len(judged), 4) if judged else None

    def state(self) -> dict[str, Any]:
        """Everything the page draws: classes, rows with their corrections, accuracy."""
        self.run.reload_corrections()  # another reviewer of this run may have labelled meanwhile
        rows = []
        for n, row in enumerate(self.rows):
            correction = self.run.corrections.get(row["path"])
            top = row["top_k"]
            rows.append({
                "row": n, "path": row["path"], "name": "/".join(Path(row["path"]).parts[-2:]), "label": row.get("label"),
                "top_k": top, "error": row.get("error"), "true_label": row.get("true_label"),
                "margin": round(top[0]["prob"] - (top[1]["prob"] if len(top) > 1 else 0.0), 6) if top else None,
                "open_world": row.get("unknown_score", row.get("open_world_score")),
                "corrected": correction is not None,
                "correction": None if correction is None else (correction.label if not correction.unknown else None),
                "unknown": bool(correction and correction.unknown),
                "final": final_label(row, correction),
                "was": self.run.rows[n].get("label") if self.rows is not self.run.rows else None,
            })
        return {"classes": self.class_names, "rows": rows, "accuracy": self.accuracy(),
                "labelled": sum(1 for c in self.run.corrections.values() if c.label is not None),
                "results": self.run.path.name, "can_improve": bool(self.run.settings.get("model"))}

    def image_file(self, n: int) -> Path | None:
        """Row ``n``'s image file, when ``n`` is a row and its file is there."""
        if not 0 <= n < len(self.rows):
            return None
        path = self.run.image_file(n)
        return path if path is not None and path.is_file() else None

    # -- writing ----------------------------------------------------------------------------------
    def act(self, n: int, action: str, label: str | None = None, reviewer: str | None = None) -> dict[str, Any]:
        """Record one act on row ``n`` in the labels file (always the one beside the results)."""
        if not isinstance(n, int) or not 0 <= n < len(self.rows):
            raise ConfigError(f"row {n!r} is not a row of the results (0 … {len(self.rows) - 1}).")
        if action == "label" and label not in self.class_names:
            raise ConfigError(f"'{label}' is not one of the run's classes.")
        path = self.run.rows[n]["path"]
        file = self.run.image_file(n)
        return self.log.append(path, action, label, row=n, file=str(file) if file is not None else None,
                               reviewer=reviewer)

    # -- improve with my labels -------------------------------------------------------------------
    def classifier(self) -> Any:
        if self._classifier is None:
            from ..api import Classifier

            model = self.run.settings.get("model")
            if not model:
                raise ConfigError(f"'{self.run.path}' has no run settings beside it ({self.run.path.stem}.run.json); "
                                  "re-run classify with this version to write them.")
            self._classifier = Classifier(model, cache_dir=self.cache_dir)
        return self._classifier

    def records(self) -> list:
        """The run's images as records in the results' order (their true labels kept, for accuracy)."""
        from ..encode.images import ImageRecord

        records = []
        for n, row in enumerate(self.run.rows):
            file = self.run.image_file(n)
            if file is None:
                raise ConfigError(f"row {n} ('{row['path']}') names no file; improving needs the run's image files.")
            records.append(ImageRecord(id=row["path"], path=file, label=row.get("true_label"), source_index=n))
        return records

    def improve(self) -> Improvement:
        """Score the run again with the labelled images as Tip-Adapter's support set (α, β by leave-one-out when
        two or more are labelled); features from the store, so no image is encoded again."""
        from ..engines import LocalEngine, RunRequest
        from ..methods import with_label_support
        from ..results import json_safe

        settings = self.run.settings
        with self._lock:
            self.run.reload_corrections()
            support = sum(1 for c in self.run.corrections.values() if c.label is not None)
            if not support:
                raise ConfigError("no image is labelled yet; label some images, then improve.")
            options = with_label_support(settings.get("options") or {}, self.log.path, support)
            request = RunRequest(self.records(), list(settings["classes"]), settings.get("method", "templates"),
                                 options, int(settings.get("top_k", 5)))
            result = LocalEngine(self.classifier()).run(request)
            rows = [json_safe(p.to_dict()) for p in result.predictions]
            for row, old in zip(rows, self.run.rows):
                row["path"] = old["path"]
            changed = [{"row": n, "path": new["path"], "before": old.get("label"), "after": new.get("label")}
                       for n, (old, new) in enumerate(zip(self.rows, rows)) if old.get("label") != new.get("label")]
            info = {k: v for k, v in result.stats.items() if k.startswith("tip_") or k in ("encoded", "cached")}
            self._pending = Improvement(rows, changed, self.accuracy(), self.accuracy(rows), support, info)
            return self._pending

    def keep(self) -> Path:
        """Keep the pending improvement: the page shows it, and it is written beside the results as
        ``<stem>.improved<suffix>`` (the run's own file is never replaced)."""
        from ..output import write_rows

        if self._pending is None:
            raise ConfigError("nothing to keep: improve first.")
        suffix = ".jsonl" if self.run.path.suffix.lower() == ".parquet" else self.run.path.suffix
        target = self.run.path.with_name(f"{self.run.path.stem}.improved{suffix}")
        write_rows(self._pending.rows, target)
        self.rows, self._pending = self._pending.rows, None
        return target

    # -- which to label next ----------------------------------------------------------------------
    def label_next(self, count: int = 48) -> list[int]:
        """Row numbers of the unlabelled images to label next (:func:`vlmcls.review.active.label_next_order`)."""
        import numpy as np

        from .active import label_next_order

        self.run.reload_corrections()
        ok = [n for n, r in enumerate(self.rows) if r.get("error") is None and r["top_k"]]
        feats = self.classifier().encode_images([self.records()[n] for n in ok], as_numpy=True)
        if len(feats.records) != len(ok):  # an image gone since the run: order by margin alone
            feats = None
        k = max(len(self.rows[n]["top_k"]) for n in ok) if ok else 1
        probs = np.zeros((len(ok), max(k, 2)))
        for j, n in enumerate(ok):
            top = [t["prob"] for t in self.rows[n]["top_k"]]
            probs[j, :len(top)] = top
        labelled = [j for j, n in enumerate(ok) if self.rows[n]["path"] in self.run.corrections]
        vectors = feats.feats if feats is not None else np.eye(len(ok), dtype=np.float32)
        return [ok[j] for j in label_next_order(vectors, probs, labelled, count)]
