"""Which images the report shows and how: the gallery's choice (mistakes first, then the least sure), the rejected
images, and thumbnails as inline JPEG data URIs (made from the decoded images, or read once when cached)."""

from __future__ import annotations

import base64
import logging
from typing import Any, Mapping

from ..errors import ConfigError, ImageError
from .charts import rejected_words

log = logging.getLogger(__name__)

GALLERY_LIMIT = 60  # thumbnails in the gallery: enough to see the failure modes, small enough to open fast
THUMBNAIL_SIZE = 96  # pixels, longest side


def _best_run(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    runs = [m for m in results.get("methods", []) if m.get("status") == "ok"]
    for run in runs:
        if run.get("method") == results.get("best_method"):
            return run
    return runs[0] if runs else None


def select_gallery(results: Mapping[str, Any], limit: int = GALLERY_LIMIT) -> list[dict[str, Any]]:
    """The gallery's rows of the best method: misclassified first — one image of each confusion in turn, worst
    confusion first, most confident mistake first — then the least confident right ones (at least a quarter of
    the gallery when there are enough). Without labels: least confident first."""
    best = _best_run(results)
    if best is None or limit <= 0:
        return []
    rows = list(best.get("predictions", []))
    metrics = best.get("metrics")

    def confidence(row: Mapping[str, Any]) -> float:
        return float(row["top_k"][0]["prob"]) if row.get("top_k") else 0.0

    if not metrics:
        return sorted(rows, key=confidence)[:limit]
    pair_rank = {(c["true"], c["predicted"]): i for i, c in enumerate(metrics.get("worst_confusions", []))}
    words, classes = set(rejected_words(results, best)), set(results.get("classes", []))

    def right(row: Mapping[str, Any]) -> bool:  # rejecting an image that is none of the classes is right
        truth = row.get("true_label")
        return row.get("label") == truth or (row.get("label") in words and truth not in classes)

    by_pair: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("true_label") is not None and not right(row):
            by_pair.setdefault((row["true_label"], row["label"]), []).append(row)
    groups = [sorted(by_pair[pair], key=lambda r: -confidence(r))
              for pair in sorted(by_pair, key=lambda pair: pair_rank.get(pair, len(pair_rank)))]
    # Round-robin over the confusions, worst first, so one big confusion cannot fill the whole gallery.
    wrong = [group[i] for i in range(max(map(len, groups), default=0)) for group in groups if i < len(group)]
    rest = sorted((r for r in rows if r.get("true_label") is None or right(r)),
                  key=confidence)
    # A quarter of the gallery (at least) shows right decisions, so a page of mistakes can be read against them.
    keep_right = min(len(rest), max(limit // 4, limit - len(wrong)))
    return wrong[:limit - keep_right] + rest[:keep_right]


def thumbnail_data_uri(source: Any, size: int = THUMBNAIL_SIZE) -> str | None:
    """A small JPEG of an image (a record, path or bytes) as a data URI, or None when it cannot be read."""
    jpeg = _read_thumbnail(source, size)
    return jpeg_data_uri(jpeg) if jpeg is not None else None


def _read_thumbnail(source: Any, size: int) -> bytes | None:
    """A small JPEG of an image (a record, path or bytes), read and decoded now; None when it cannot be read."""
    from ..encode.images import load_image, thumbnail_jpeg

    try:
        return thumbnail_jpeg(load_image(source, min_side=size, heif_thumbnails=True), size)  # a picture only
    except (ImageError, ConfigError, OSError, ValueError) as exc:
        log.info("no thumbnail for '%s': %s", getattr(source, "id", source), exc)
        return None


def jpeg_data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def select_rejected(results: Mapping[str, Any], limit: int = GALLERY_LIMIT) -> list[dict[str, Any]]:
    """The best method's rows rejected as none of the classes, the surest rejections (lowest unknown score) first."""
    best = _best_run(results)
    if best is None:
        return []
    words = set(rejected_words(results, best))
    rows = [p for p in best.get("predictions", []) if p.get("label") in words and p.get("unknown_score") is not None]
    return sorted(rows, key=lambda p: p["unknown_score"])[:limit]
