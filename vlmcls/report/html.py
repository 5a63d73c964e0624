"""HTML building blocks of the report: escaping, number formats, tables, and explanations as readable tables.

Every function here returns markup in which every outside string has been escaped.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any, Mapping, Sequence

__all__ = ["visible_controls", "esc", "short", "pct", "count", "num", "table", "render_value", "why_html"]


def esc(value: Any) -> str:
    """Escape anything for HTML text and attribute values; control characters (an ESC in a file name or an LLM
    answer) are written as visible ``\\x1b`` text, never raw."""
    return html.escape(visible_controls("" if value is None else str(value)), quote=True)


# C0 controls but tab and line breaks, DEL, C1 controls: raw in a report or a CSV they recolour a terminal that
# prints the file, or confuse its reader.
_RAW_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def visible_controls(text: str) -> str:
    """``text`` with each raw control character written as visible ``\\xNN`` text (tab and line breaks kept)."""
    return _RAW_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text) if _RAW_CONTROL.search(text) else text


def short(text: Any, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else esc(value if value is not None else 0)


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int] = frozenset(),
          row_classes: Sequence[str] | None = None) -> str:
    """A table from already-escaped cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_value(value: Any, depth: int = 0) -> str:
    """An explanation (any JSON value) as compact nested HTML; every string escaped."""
    if depth > 4:
        return esc(short(value, 200))
    if isinstance(value, float):
        return num(value)
    if isinstance(value, Mapping):
        items = list(value.items())[:30]
        return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{render_value(v, depth + 1)}</dd>" for k, v in items) + "</dl>"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        if len(columns) <= 6 and all(not isinstance(x, (Mapping, list, tuple)) for v in value for x in v.values()):
            rows = [[render_value(v.get(c), depth + 1) for c in columns] for v in value[:20]]
            return table(columns, rows) + (f"<p class=\"note\">… {len(value) - 20} more</p>" if len(value) > 20 else "")
    if isinstance(value, (list, tuple)):
        more = f"<li>… {len(value) - 20} more</li>" if len(value) > 20 else ""
        return ('<ul class="plain">' + "".join(f"<li>{render_value(v, depth + 1)}</li>" for v in value[:20])
                + more + "</ul>")
    return esc(short(value, 400))


def _scored_rows(items: Sequence[Any]) -> list[list[str]]:
    rows = []
    for item in items:
        if isinstance(item, Mapping):
            text = item.get("descriptor", item.get("text", item.get("caption")))
            score = item.get("similarity", item.get("score"))
            rows.append([esc(short(text, 200)), num(score) if isinstance(score, (int, float)) else esc(score)])
        else:
            rows.append([esc(short(item, 200)), ""])
    return rows


_ROLES = {"top": "label", "runner_up": "runner up"}


def _move_html(part: str, detail: Mapping[str, Any]) -> str:
    """A differential move: from → to, then per attribute the two captions with their scores and the margin."""
    head = (f"<div>{esc(part)}: moved <span class='truth'>{esc(detail['moved_from'])}</span> → "
            f"<span class='truth'>{esc(detail['moved_to'])}</span></div>")
    because = detail.get("because")
    items = because if isinstance(because, list) else []
    if items and all(isinstance(item, Mapping) and "caption" in item for item in items):
        rows = []  # narrow enough for a gallery card: the captions name their classes
        for item in items:
            rows.append([f"<b>{esc(item.get('attribute'))}</b> (margin {num(item.get('margin'))}): "
                         f"{esc(short(item['caption'], 200))}", num(item.get("score"))])
            rows.append([f"vs {esc(short(item.get('other_caption'), 200))}", num(item.get("other_score"))])
        return head + table(["differential caption", "score"], rows, {1})
    if isinstance(because, Mapping):
        return head + table(["because", "value"], [[esc(k), render_value(v, 1)] for k, v in because.items()])
    return head + (render_value(because, 1) if because else "")


def why_html(explanation: Any) -> str:
    """An explanation as tables a reader can scan: per class (the label, then the runner-up), its descriptors with
    their scores; a differential move as from → to with each caption that decided it and its score; anything else
    as a compact nested list."""
    if not isinstance(explanation, Mapping):
        return render_value(explanation)
    parts = []
    for part, detail in explanation.items():
        if isinstance(detail, Mapping) and "moved_from" in detail and "moved_to" in detail:
            parts.append(_move_html(part, detail))
        elif isinstance(detail, Mapping) and any(isinstance(v, Mapping) and isinstance(v.get("descriptors"), list)
                                                 for v in detail.values()):
            for role, entry in detail.items():
                if isinstance(entry, Mapping) and isinstance(entry.get("descriptors"), list):
                    shown_role = _ROLES.get(str(role), str(role).replace("_", " "))
                    parts.append(f"<div>{esc(part)} — {esc(shown_role)}: <span class='truth'>{esc(entry.get('class'))}</span>"
                                 "</div>" + table(["descriptor", "score"], _scored_rows(entry["descriptors"]), {1}))
                else:
                    parts.append(f"<div>{esc(role)}: {render_value(entry, 1)}</div>")
        else:
            parts.append(f"<div>{esc(part)}</div>{render_value(detail, 1)}")
    return "".join(parts)
