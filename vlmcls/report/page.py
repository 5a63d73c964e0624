"""One self-contained HTML report of an eval (or a classify) run: tables, inline SVG charts, a thumbnail gallery.

The report is a single file that opens offline: inline CSS, inline SVG, thumbnails as base64 JPEG data URIs, no
script and no external URL; a Content-Security-Policy forbids scripts and remote loads as a second line of
defence. Every string that comes from outside this module — class names, descriptors and explanations written
by an LLM, prompt text, file paths, error messages, method names — goes through :func:`html.escape` with
``quote=True`` before it reaches the page.

The renderer works on the plain results dict (``EvalReport.to_dict()``, the same thing ``--output`` saves), so a
saved results file can be rendered again. Eval reports show the summary table, the confusion matrix, per-class
recall bars, the worst confusions, a gallery (misclassified images first, worst confusions first) and the error
rows. Reports without labels (``classify --report``) show the summary, the predicted-class counts, a gallery of
the least confident images first, and the error rows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..output import atomic_open, check_output_path
from .html import count as _count, esc as _e, num as _num, pct as _pct, render_value as _render_value
from .html import short as _short, table as _table, why_html as _why_html
from .gallery import (  # noqa: F401  (as callers import them from here)
    GALLERY_LIMIT,
    THUMBNAIL_SIZE,
    _best_run,
    _read_thumbnail,
    jpeg_data_uri,
    select_gallery,
    select_rejected,
    thumbnail_data_uri,
)
from .charts import (  # noqa: F401  (the charts, as callers import them from here)
    _BAR_CLASSES,
    _MATRIX_CLASSES,
    _PALETTE,
    _confusion_svg,
    _open_world_matrix,
    _recall_chart,
    _reliability_svg,
    rejected_words,
)

if TYPE_CHECKING:
    from ..results import ClassificationResult
    from .evaluate import EvalReport
    from ..encode.images import ImageRecord

__all__ = [
    "GALLERY_LIMIT",
    "REPORT_SUFFIXES",
    "check_report_path",
    "classification_to_dict",
    "rejected_words",
    "select_gallery",
    "select_rejected",
    "thumbnail_data_uri",
    "render_report",
    "write_report",
]

log = logging.getLogger(__name__)

REPORT_SUFFIXES = (".html", ".htm")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
padding:0 16px;color:#1f2937;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.meta{color:#6b7280;margin:0 0 16px;word-break:break-all}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #e5e7eb;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f9fafb;white-space:nowrap;word-break:keep-all}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#eff6ff}.failed{color:#b91c1c}.note{color:#6b7280;font-size:13px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px;overflow:hidden}.card.wrong{border-color:#fca5a5}
.card img{display:block;width:96px;height:96px;object-fit:contain;background:#f3f4f6;float:left;margin:0 8px 4px 0}
.noimg{float:left;width:96px;height:96px;margin:0 8px 4px 0;background:#f3f4f6;color:#9ca3af;font-size:11px;
display:flex;align-items:center;justify-content:center}
.name{font-size:12px;color:#6b7280;word-break:break-all;clear:none}.truth{font-weight:600}
ol.topk{clear:both;margin:4px 0 0;padding-left:20px}ol.topk li.hit{font-weight:600;color:#15803d}
.bar{display:inline-block;height:7px;background:#93c5fd;vertical-align:middle;margin-left:6px}
.others{font-size:12px;margin-top:4px}.ok{color:#15803d}.bad{color:#b91c1c}
details{margin:4px 0}summary{cursor:pointer;color:#374151}dl{margin:2px 0;font-size:12px}dt{font-weight:600}
dd{margin:0 0 2px 12px;word-break:break-word}ul.plain{margin:2px 0;padding-left:16px;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#374151}svg text.val{font-size:10px;fill:#4b5563}
.card table{font-size:12px;max-width:100%}
.card td,.card th{padding:1px 4px}table.facts td{border:none;padding:1px 12px 1px 0}.correct{border-color:#86efac}
"""

# No script may run and nothing may load from anywhere but the page itself, even if escaping were ever missed.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# -- inputs ---------------------------------------------------------------------------------------------------


def check_report_path(path: str | os.PathLike) -> Path:
    """Fail before any work when the report path does not end in .html or its folder cannot be made."""
    return check_output_path(path, REPORT_SUFFIXES, "report", "a report is one HTML file: use .html")


def classification_to_dict(result: "ClassificationResult", *, data: str | None = None,
                           model: str | None = None) -> dict[str, Any]:
    """A classify run in the results-dict shape of an eval; metrics over the images whose true label (a class
    sub-folder, a label column) is one of the classes, none when no image has one."""
    from ..results import json_safe, prediction_row

    stats = result.stats
    info = {k: v for k, v in stats.items() if k not in ("method", "llm_calls", "llm_tokens")}
    return {
        "format": "vlmcls-classify/1",
        "data": data,
        "model": model,
        "classes": list(result.class_names),
        "top_k": max((len(p.top_k) for p in result.ok), default=0),
        "images": {"total": len(result.predictions), "classified": len(result.ok), "errors": len(result.errors),
                   "encoded": stats.get("encoded"), "cached": stats.get("cached")},
        "best_method": stats.get("method"),
        "methods": [{
            "method": stats.get("method"), "status": "ok", "error": None,
            "llm_calls": stats.get("llm_calls", 0), "llm_tokens": stats.get("llm_tokens", 0),
            "seconds": stats.get("seconds", stats.get("method_seconds")), "expected_squared_distance": None,
            "metrics": _labelled_metrics(result), "info": json_safe(info), "warnings": json_safe(result.warnings),
            "predictions": [prediction_row(p) for p in result.ok],
        }],
        "errors": [prediction_row(p) for p in result.errors],
    }


def _labelled_metrics(result: "ClassificationResult", k: int = 5) -> dict[str, Any] | None:
    """Accuracy, per-class recall and the worst confusions of a classify run, as ``classify`` prints them: over
    the images labelled with one of the classes (a folder name that is no class says nothing about accuracy)."""
    known = set(result.class_names)
    keep = [n for n, pred in enumerate(result.ok) if pred.true_label in known]  # rows of result.probs
    if not keep or result.probs is None:
        return None
    import torch  # only here: a re-run from the store scores in numpy, and a report without labels needs no torch

    from .evaluate import compute_metrics

    probs = torch.as_tensor(result.probs[keep])  # [N_labelled, C]
    metrics = compute_metrics([result.ok[n].true_label for n in keep], probs, result.class_names,
                              predicted_labels=[result.ok[n].label for n in keep], k=k, unknown_labels="keep")
    return metrics.to_dict()


# -- sections -------------------------------------------------------------------------------------------------


def _summary_section(results: Mapping[str, Any]) -> str:
    runs = results.get("methods", [])
    labelled = any(run.get("metrics") for run in runs)
    k = next((run["metrics"]["k"] for run in runs if run.get("metrics")), results.get("top_k"))
    show_squared = any(run.get("expected_squared_distance") is not None for run in runs)
    headers = ["method"] + (["top-1 %", f"top-{k} %", "mean recall %"] if labelled else [])
    headers += (["E[d²]"] if show_squared else []) + ["LLM calls", "tokens", "seconds", "status"]
    rows, css = [], []
    for run in runs:
        metrics = run.get("metrics") or {}
        row = [_e(run.get("method"))]
        if labelled:
            row += [_pct(metrics.get("top1")), _pct(metrics.get("top_k")), _pct(metrics.get("mean_recall"))]
        if show_squared:
            row.append(_num(run.get("expected_squared_distance")))
        status = "ok" if run.get("status") == "ok" else f'<span class="failed">{_e(run.get("error") or "failed")}</span>'
        cached = (run.get("info") or {}).get("llm_cached_answers")
        calls = _count(run.get("llm_calls")) + (f" (+{_count(cached)} cached)" if cached else "")
        row += [calls, _count(run.get("llm_tokens")), _num(run.get("seconds"), 2), status]
        rows.append(row)
        css.append("best" if run.get("method") == results.get("best_method") and len(runs) > 1 else "")
    numeric = set(range(1, len(headers) - 1))
    facts = _image_facts(results.get("images", {}))
    best_note = (f'<p class="note">The highlighted row, {_e(results.get("best_method"))}, has the best top-1: the '
                 "confusion matrix, per-class table, confusions and gallery below are its.</p>"
                 if labelled and len(runs) > 1 and results.get("best_method") else "")
    return f"<h2>Summary</h2>{_table(headers, rows, numeric, css)}{best_note}{facts}"


def _image_facts(images: Mapping[str, Any]) -> str:
    """The run's image counts and timings as one labelled row: '48 images · 48 classified · encoded in 2.59 s'."""
    cells = []
    for key, value in images.items():
        if value is None:
            continue
        label = key.replace("_", " ")
        if key.endswith("seconds") and isinstance(value, (int, float)):
            shown = f"{value:.2f} s"
            label = label.replace(" seconds", "") + " time"
        elif isinstance(value, float):
            shown = _num(value, 2)
        else:
            shown = _count(value)
        cells.append(f"<td><span class='truth'>{_e(shown)}</span> {_e(label)}</td>")
    return f'<table class="facts"><tr><td>images:</td>{"".join(cells)}</tr></table>' if cells else ""


def _per_class_section(results: Mapping[str, Any], best: Mapping[str, Any]) -> str:
    runs = [run for run in results.get("methods", []) if run.get("status") == "ok" and run.get("metrics")]
    best_scores = best["metrics"]["per_class"]
    names = [score["name"] for score in best_scores]
    by_name = [{score["name"]: score for score in run["metrics"]["per_class"]} for run in runs]
    order = sorted(range(len(names)), key=lambda c: (best_scores[c]["recall"] is None, best_scores[c]["recall"] or 0))
    order = [c for c in order if best_scores[c]["support"]][:_BAR_CLASSES]
    chart = _recall_chart([names[c] for c in order], runs, by_name, best)
    shown = "" if len(order) == len(names) else f" (the {len(order)} lowest of {len(names)})"
    rows = [[_e(s["name"]), _pct(s["recall"]), _pct(s["precision"]), _e(s["support"]), _e(s["predicted"])]
            for s in best_scores]
    table = _table(["class", "recall %", "precision %", "support", "predicted"], rows, {1, 2, 3, 4})
    lanes = ("one column per method (★ the best, which orders the rows), each with its own 0–100 % axis; the small "
             "numbers are each method's recall %" if len(runs) > 1 else "the number beside each bar is its recall %")
    return (f"<h2>Per-class recall</h2><p class=\"note\">lowest recall of {_e(best['method'])} first{shown}; "
            f"{lanes}.</p>" + chart
            + f"<details><summary>per-class table ({_e(best['method'])})</summary>{table}</details>")


def _confusions_section(best: Mapping[str, Any], limit: int = 20) -> str:
    pairs = best["metrics"].get("worst_confusions", [])
    if not pairs:
        return "<h2>Worst confusions</h2><p>None: every labelled image was classified right.</p>"
    support = {s["name"]: s["support"] for s in best["metrics"]["per_class"]}
    rows = [[_e(p["true"]), _e(p["predicted"]), _e(p["count"]), _pct(p["count"] / (support.get(p["true"]) or 1))]
            for p in pairs[:limit]]
    return (f"<h2>Worst confusions</h2><p class=\"note\">{_e(best['method'])}, most frequent first.</p>"
            + _table(["true class", "predicted as", "images", "% of the true class"], rows, {2, 3}))


def _distribution_section(results: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    counts: dict[str, int] = {}
    for row in run.get("predictions", []):
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:_BAR_CLASSES]
    if not ranked:
        return ""
    top = ranked[0][1]
    label_width = 12 + int(min(24, max(len(name) for name, _ in ranked)) * 6.3)
    chart, height = 560, 16 * len(ranked) + 4
    parts = [f'<svg width="{label_width + chart + 60}" height="{height}" role="img" '
             'aria-label="predicted classes">']
    for i, (name, count) in enumerate(ranked):
        y = i * 16
        parts.append(f'<text x="{label_width - 6}" y="{y + 11}" text-anchor="end"><title>{_e(name)}</title>'
                     f'{_e(_short(name, 24))}</text><rect x="{label_width}" y="{y + 2}" width="{max(1.0, chart * count / top):.1f}" '
                     f'height="11" fill="{_PALETTE[0]}"/><text x="{label_width + chart * count / top + 4:.1f}" y="{y + 11}">{count}</text>')
    parts.append("</svg>")
    return f"<h2>Predicted classes</h2><p class=\"note\">images per predicted class, most first.</p>{''.join(parts)}"


def _gallery_section(results: Mapping[str, Any], thumbnails: Mapping[str, str], limit: int) -> str:
    rows = select_gallery(results, limit)
    best = _best_run(results)
    if not rows or best is None:
        return ""
    words, classes = set(rejected_words(results, best)), set(results.get("classes", []))
    ok_runs = [run for run in results.get("methods", []) if run.get("status") == "ok"]
    others = {run["method"]: {p["id"]: p["label"] for p in run.get("predictions", [])} for run in ok_runs if run is not best}
    # Every method's reasons, not only the best one's: the descriptors behind a cbd answer matter beside templates.
    reasons = {run["method"]: {p["id"]: p["explanation"] for p in run.get("predictions", []) if p.get("explanation")}
               for run in sorted(ok_runs, key=lambda run: run is not best)}  # the best method's reasons first
    cards = []
    for row in rows:
        truth = row.get("true_label")
        wrong = truth is not None and row.get("label") != truth and not (
            row.get("label") in words and truth not in classes)
        uri = thumbnails.get(row["id"])
        picture = f'<img src="{_e(uri)}" alt="">' if uri else '<div class="noimg">no preview</div>'
        where = row.get("path") or row["id"]
        shown_name = "/".join(Path(str(where)).parts[-2:]) or str(where)  # class folder and file name
        head = f'<div class="name" title="{_e(where)}">{_e(_short(shown_name, 60))}</div>'
        if truth is not None:
            mark = '<span class="bad">✗</span>' if wrong else '<span class="ok">✓</span>'
            head += f'<div>true: <span class="truth">{_e(truth)}</span> {mark}</div>'
        ranked = "".join(
            f'<li class="{"hit" if c["label"] == truth else ""}">{_e(c["label"])} {_num(c["prob"])}'
            f'<span class="bar" style="width:{max(0.0, min(1.0, float(c["prob"]))) * 80:.0f}px"></span></li>'
            for c in row.get("top_k", []))
        other = ""
        if others:
            marks = []
            for method, labels in others.items():
                label = labels.get(row["id"])
                css = "" if truth is None else ("ok" if label == truth else "bad")
                marks.append(f'{_e(method)}: <span class="{css}">{_e(label if label is not None else "–")}</span>')
            other = f'<div class="others">{"; ".join(marks)}</div>'
        why = "".join(f"<details><summary>why ({_e(method)})</summary>{_why_html(by_id[row['id']])}</details>"
                      for method, by_id in reasons.items() if row["id"] in by_id)
        verdict = " wrong" if wrong else " correct" if truth is not None else ""
        cards.append(f'<div class="card{verdict}">{picture}{head}<ol class="topk">{ranked}</ol>'
                     f"{other}{why}</div>")
    total = len(best.get("predictions", []))
    order = ("misclassified first (✗), one image of each confusion in turn, worst confusion first, then right "
             "decisions (✓), least confident first" if best.get("metrics") else "least confident first")
    return (f"<h2>Gallery</h2><p class=\"note\">{len(rows)} of {total} images of {_e(best['method'])}, {order}.</p>"
            f'<div class="gallery">{"".join(cards)}</div>')


def _rejected_section(results: Mapping[str, Any], thumbnails: Mapping[str, str], limit: int) -> str:
    best = _best_run(results)
    rows = select_rejected(results, limit)
    if best is None or not rows:
        return ""
    classes = set(results.get("classes", []))
    total = sum(1 for p in best.get("predictions", []) if p.get("label") in set(rejected_words(results, best)))
    cards = []
    for row in rows:
        truth = row.get("true_label")
        uri = thumbnails.get(row["id"])
        picture = f'<img src="{_e(uri)}" alt="">' if uri else '<div class="noimg">no preview</div>'
        where = row.get("path") or row["id"]
        shown_name = "/".join(Path(str(where)).parts[-2:]) or str(where)
        head = f'<div class="name" title="{_e(where)}">{_e(_short(shown_name, 60))}</div>'
        if truth is not None:  # a rejection is right when the image is none of the classes
            mark = '<span class="bad">✗</span>' if truth in classes else '<span class="ok">✓</span>'
            head += f'<div>true: <span class="truth">{_e(truth)}</span> {mark}</div>'
        best_class = row["top_k"][0] if row.get("top_k") else None
        facts = f'<div>unknown score {_num(row["unknown_score"])}</div>'
        if best_class is not None:
            facts += f'<div>best class: {_e(best_class["label"])} {_num(best_class["prob"])}</div>'
        css = "" if truth is None else (" wrong" if truth in classes else " correct")
        cards.append(f'<div class="card{css}">{picture}{head}{facts}</div>')
    return (f"<h2>Rejected as none of the classes ({total})</h2><p class=\"note\">{len(rows)} of {total} images "
            f"{_e(best['method'])} answered {_e(', '.join(rejected_words(results, best)))}, the surest rejection "
            "(lowest unknown score) first; each keeps its best class in the results.</p>"
            f'<div class="gallery">{"".join(cards)}</div>')


def _reliability_section(results: Mapping[str, Any]) -> str:
    runs = [run for run in results.get("methods", []) if run.get("status") == "ok" and run.get("reliability")]
    if not runs:
        return ""
    charts = "".join(_reliability_svg(run, m) for m, run in enumerate(runs))
    return ("<h2>Calibration</h2><p class=\"note\">reliability diagram per method over the labelled in-list "
            "images: bars are each confidence bin's accuracy (top-1 probability binned), the diagonal is perfect "
            "calibration, the dot each bin's mean confidence, a darker bar more images; ECE is the image-weighted "
            f"gap.</p><div>{charts}</div>")


def _errors_section(results: Mapping[str, Any], limit: int = 500) -> str:
    rows = results.get("errors", [])
    if not rows:
        return "<h2>Error rows</h2><p>None: every image was read.</p>"
    shown = [[_e(r.get("path") or r.get("id")), _e(r.get("error")), _e(r.get("true_label") or "")] for r in rows[:limit]]
    more = f'<p class="note">… {len(rows) - limit} more in the results file.</p>' if len(rows) > limit else ""
    return f"<h2>Error rows ({len(rows)})</h2>" + _table(["image", "error", "true label"], shown) + more


def _warnings_section(results: Mapping[str, Any]) -> str:
    items = [(run.get("method"), w) for run in results.get("methods", []) for w in run.get("warnings") or []]
    if not items:
        return ""
    rows = [[_e(method), _render_value(warning)] for method, warning in items[:200]]
    return (f"<details><summary>method warnings ({len(items)})</summary>"
            + _table(["method", "warning"], rows) + "</details>")


# -- the page -------------------------------------------------------------------------------------------------


def render_report(results: Mapping[str, Any], thumbnails: Mapping[str, str] | None = None, *,
                  title: str | None = None, gallery_limit: int = GALLERY_LIMIT) -> str:
    """The HTML page for a results dict (eval or classify); ``thumbnails`` maps image id to a data URI."""
    thumbnails = thumbnails or {}
    best = _best_run(results)
    labelled = best is not None and bool(best.get("metrics"))
    classify = str(results.get("format", "")).startswith("vlmcls-classify")
    title = title or ("vlmcls eval report" if labelled and not classify else "vlmcls classification report")
    meta = " · ".join(f"{label}: {_e(value)}" for label, value in (
        ("data", results.get("data")), ("model", results.get("model")),
        ("classes", len(results.get("classes", []))), ("best method", results.get("best_method") if labelled else None),
    ) if value is not None)
    sections = [_summary_section(results)]
    if labelled:
        sections += [_confusion_svg(results, best), _per_class_section(results, best), _confusions_section(best),
                     _reliability_section(results)]
    elif best is not None:
        sections.append(_distribution_section(results, best))
    sections += [_gallery_section(results, thumbnails, gallery_limit),
                 _rejected_section(results, thumbnails, gallery_limit), _errors_section(results),
                 _warnings_section(results)]
    return html_page(title, meta, "".join(sections))


def write_report(
    report: "EvalReport | ClassificationResult | Mapping[str, Any]",
    path: str | os.PathLike,
    *,
    records: Sequence["ImageRecord"] | None = None,
    title: str | None = None,
    data: str | None = None,
    model: str | None = None,
    gallery_limit: int = GALLERY_LIMIT,
    thumbnail_size: int = THUMBNAIL_SIZE,
    thumbnails: dict[str, bytes] | None = None,
) -> Path:
    """Render an eval report, a classify result or a results dict to one HTML file (written atomically).

    Thumbnails are made for the gallery's images only: those kept while decoding (``thumbnails``, else an
    ``EvalReport``'s or a classify result's ``artifacts["thumbnails"]``, so no file is read twice), else read from
    ``records`` (dataset rows need them; an ``EvalReport`` brings its own) or else from each prediction's path.
    ``thumbnails`` (image id -> JPEG) also receives the ones read here, so writing the report again (``--watch``)
    reads no file again.
    """
    from ..results import ClassificationResult
    from .evaluate import EvalReport

    path = check_report_path(path)
    kept: Mapping[str, bytes] = {}  # image id -> thumbnail JPEG made while decoding
    if isinstance(report, EvalReport):
        records = records if records is not None else report.records
        results: Mapping[str, Any] = report.to_dict()
        kept = report.thumbnails
    elif isinstance(report, ClassificationResult):
        results = classification_to_dict(report, data=data, model=model)
        kept = report.artifacts.get("thumbnails") or {}
    else:
        results = report
    if thumbnails is not None:
        thumbnails.update({k: v for k, v in kept.items() if k not in thumbnails})
        kept = thumbnails
    by_id = {rec.id: rec for rec in records or []}
    uris = {}
    shown = {row["id"]: row for row in select_gallery(results, gallery_limit) + select_rejected(results, gallery_limit)}
    for row in shown.values():
        jpeg = kept.get(row["id"])
        if jpeg is None:
            source = by_id.get(row["id"]) or row.get("path")
            jpeg = _read_thumbnail(source, thumbnail_size) if source else None
            if jpeg is not None and thumbnails is not None:
                thumbnails[row["id"]] = jpeg
        if jpeg is not None:
            uris[row["id"]] = jpeg_data_uri(jpeg)
    page = render_report(results, uris, title=title, gallery_limit=gallery_limit)
    with atomic_open(path, errors="backslashreplace") as fh:  # a non-UTF-8 file name shows as \udcXX
        fh.write(page)
    return path


def html_page(title: str, meta: str, body: str) -> str:
    """One self-contained page in the report's style: the CSP that loads nothing, the CSS, a title and a meta line
    (``meta`` and ``body`` are HTML already escaped by the caller)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class=\"meta\">{meta}</p>{body}</body></html>\n"
    )
