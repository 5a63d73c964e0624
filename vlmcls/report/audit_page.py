"""The descriptor audit as HTML, in the eval report's style (its CSS, escaping and table helper).

:func:`render_audit_section` is the section alone (for a page that holds more); :func:`write_audit_report` writes
one self-contained page. Descriptors are LLM text: every string goes through the report's escaping.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..output import atomic_open
from .page import _e, _num, _pct, _table, check_report_path, html_page

if TYPE_CHECKING:
    from .audit import AuditResult

__all__ = ["render_audit_section", "render_audit_report", "write_audit_report"]

_VERDICT_CSS = {"helps": "ok", "hurts": "bad", "neutral": "note"}


def _signed_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"


def _facts_table(facts: list[tuple[str, str]]) -> str:
    """Label → value rows with no header row (the labels say what each value is)."""
    rows = "".join(f'<tr><th scope="row">{label}</th><td class="num">{value}</td></tr>' for label, value in facts)
    return f'<table class="facts-list"><tbody>{rows}</tbody></table>'


def render_audit_section(result: "AuditResult", limit: int | None = None) -> str:
    """The audit's summary, the warnings that apply, and every descriptor's row, worst first."""
    where = (f"the {result.report_images} held-out images ({result.holdout:g} of each class)" if result.holdout
             else f"the {result.report_images} audited images")
    without = f"without the {' and '.join(result.dropped)} ones"
    counts = result.counts
    facts = [
        ("images audited", _e(result.audited_images)),
        ("verdicts", ", ".join(f"{_e(verdict)}: {count}" for verdict, count in counts.items())),
        (f"top-1 % on {_e(where)}, all descriptors", _pct(result.accuracy_before)),
        (f"top-1 % on {_e(where)}, {_e(without)}", _pct(result.accuracy_after)),
    ]
    if result.expected_before is not None:
        facts += [(f"expected accuracy % on {_e(where)}, all descriptors", _pct(result.expected_before)),
                  (f"expected accuracy % on {_e(where)}, {_e(without)}", _pct(result.expected_after))]
    warning = ""
    if result.pruning_lowers_top1:
        warning += (f'<p class="bad">Pruning lowers top-1 on {_e(where)}: {_pct(result.accuracy_before)} → '
                    f"{_pct(result.accuracy_after)} %. Keep the full descriptor file, or prune by hand.</p>")
    if result.optimistic:
        warning += ('<p class="bad">The accuracy after pruning is measured on the images the pruning was decided '
                    "on, so it is optimistic. Audit with a holdout (<code>--holdout 0.5</code>) to prune on one half "
                    "and report on the other.</p>")
    rows = []
    for v in result.worst(limit):
        delta, margin = v.shown_expected()
        rows.append([_e(v.class_name), _e(v.descriptor), delta, margin,
                     f'<span class="{_VERDICT_CSS[v.verdict]}">{_e(v.verdict)}</span>',
                     _signed_pct(v.delta_top1), _signed_pct(v.delta_recall), _num(v.separation, 2), _e(v.rival or "–")])
    table = _table(["class", "descriptor", "Δ expected acc. (points)", "± (neutral within)", "verdict",
                    "Δ top-1 (points)", "Δ recall (points)", "separation", "rival"], rows, {2, 3, 5, 6, 7})
    shown = "" if limit is None or limit >= sum(counts.values()) else f" (the {limit} worst)"
    note = ('<p class="note">Each Δ is the change when that one descriptor is left out: <b>positive means leaving it '
            "out helps, so the descriptor hurts; negative means the descriptor helps</b>. The verdict follows the "
            "expected accuracy (mean probability of the true class), which moves with every image: hurts when "
            "Δ expected ≥ ±, helps when Δ expected ≤ −±, neutral in between; ± is 0.01 points or two standard "
            "errors of the per-image changes, whichever is larger. Top-1 and recall move in whole images and are "
            "shown as counted. Separation: how often the descriptor is closer to an image of its class than to an "
            "image of the rival (the class it is most confused with); 0.5 separates nothing.</p>")
    return (f"<h2>Descriptor audit</h2>{_facts_table(facts)}{warning}<h2>Descriptors, worst first{shown}</h2>"
            f"{note}{table}")


def render_audit_report(result: "AuditResult", *, data: str | None = None, model: str | None = None,
                        title: str = "vlmcls descriptor audit") -> str:
    meta = " · ".join(f"{label}: {_e(value)}" for label, value in (
        ("data", data), ("model", model), ("classes", len(result.class_names))) if value is not None)
    return html_page(title, meta, render_audit_section(result))


def write_audit_report(result: "AuditResult", path: str | os.PathLike, *, data: str | None = None,
                       model: str | None = None) -> Path:
    """One self-contained HTML page of the audit, written atomically."""
    path = check_report_path(path)
    page = render_audit_report(result, data=data, model=model)
    with atomic_open(path) as fh:
        fh.write(page)
    return path
