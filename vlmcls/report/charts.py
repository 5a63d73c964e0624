"""The report's charts as inline SVG (no scripts, every string escaped): the confusion matrix (with an unknown
column when rows carry open-world decisions), the per-class recall lanes and the reliability diagram."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .html import esc as _e, num as _num, pct as _pct, short as _short

_MATRIX_CLASSES = 40  # larger confusion matrices show the classes involved in the most confusions
_BAR_CLASSES = 100  # per-class bars show the classes with the lowest recall first, up to this many (16 px each)
_PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#65a30d", "#b45309")


def rejected_words(results: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """The labels a run gave to images it rejected as none of the classes (the open-world refiner's word): answers outside the
    classes on rows that carry an unknown score. Empty when the run made no unknown decision."""
    classes = set(results.get("classes", []))
    return list(dict.fromkeys(p["label"] for p in run.get("predictions", [])
                              if p.get("unknown_score") is not None and p.get("label") not in classes))


def _open_world_matrix(results: Mapping[str, Any], run: Mapping[str, Any],
                       words: Sequence[str]) -> tuple[list[str], list[str], list[list[int]]]:
    """Rows: true labels (the classes, then labels outside them such as eval's unknown folder); columns: the
    classes, then any other answer, the rejection word last. Counted from the prediction rows, which hold the
    unknown folder's images too (the metrics leave them out)."""
    classes = list(results.get("classes", []))
    rows_seen = [p for p in run.get("predictions", []) if p.get("true_label") is not None]
    truths = classes + sorted({p["true_label"] for p in rows_seen} - set(classes))
    answers = classes + sorted({p["label"] for p in rows_seen} - set(classes) - set(words)) + list(words)
    row_of, col_of = {t: i for i, t in enumerate(truths)}, {a: j for j, a in enumerate(answers)}
    matrix = [[0] * len(answers) for _ in truths]
    for p in rows_seen:
        matrix[row_of[p["true_label"]]][col_of[p["label"]]] += 1
    return truths, answers, matrix


def _confusion_svg(results: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    words = rejected_words(results, run)
    if words:
        names, columns, matrix = _open_world_matrix(results, run, words)
    else:
        names = list(run["metrics"].get("labels") or results.get("classes", []))
        columns, matrix = names, run["metrics"]["confusion"]  # [L, L] true × predicted
    classes = set(results.get("classes", []))
    shown = list(range(len(names)))
    shown_columns = list(range(len(columns)))
    note = ""
    if len(names) > _MATRIX_CLASSES and not words:
        involvement = [sum(matrix[c]) - matrix[c][c] + sum(row[c] for row in matrix) - matrix[c][c]
                       for c in range(len(names))]
        shown = sorted(sorted(range(len(names)), key=lambda c: -involvement[c])[:_MATRIX_CLASSES])
        shown_columns = shown
        note = (f'<p class="note">{len(names)} classes: showing the {_MATRIX_CLASSES} involved in the most '
                "confusions.</p>")
    elif len(names) > _MATRIX_CLASSES:  # open world: keep the rejection column and the rows of other images
        keep = set(sorted(range(len(classes)), key=lambda c: -(sum(matrix[c]) - matrix[c][c]))[:_MATRIX_CLASSES])
        shown = [c for c in range(len(names)) if c in keep or names[c] not in classes]
        shown_columns = [j for j in range(len(columns)) if j in keep or columns[j] not in classes]
        note = (f'<p class="note">{len(classes)} classes: showing the {_MATRIX_CLASSES} with the most confusions.</p>')
    cell = max(10, min(34, 640 // max(1, len(shown_columns), len(shown))))
    label_chars = min(24, max((len(x) for x in [names[c] for c in shown] + [columns[j] for j in shown_columns]),
                              default=1))
    margin = 12 + int(label_chars * 6.3)
    width, height = margin + cell * len(shown_columns), margin + cell * len(shown)
    parts = [f'<svg width="{width + int(label_chars * 3.3) + 10}" height="{height + 10}" '
             f'role="img" aria-label="confusion matrix">']
    for i, c in enumerate(shown):
        y = margin + i * cell + cell / 2 + 4
        parts.append(f'<text x="{margin - 4}" y="{y:.1f}" text-anchor="end"><title>{_e(names[c])}</title>'
                     f"{_e(_short(names[c], 24))}</text>")
    for j, c in enumerate(shown_columns):
        x = margin + j * cell + cell / 2 + 4
        style = ' style="font-weight:600"' if columns[c] in words else ""
        parts.append(f'<text x="{x:.1f}" y="{margin - 4}" transform="rotate(-60 {x:.1f} {margin - 4})"{style}>'
                     f"<title>{_e(columns[c])}</title>{_e(_short(columns[c], 24))}</text>")
    for i, t in enumerate(shown):
        row_total = sum(matrix[t]) or 1
        for j, p in enumerate(shown_columns):
            count = matrix[t][p]
            share = count / row_total
            # right: the true class, or a rejection of an image that is none of the classes
            right = names[t] == columns[p] or (columns[p] in words and names[t] not in classes)
            colour = "37,99,235" if right else "107,114,128" if columns[p] in words else "220,38,38"
            x, y = margin + j * cell, margin + i * cell
            tip = f"true {names[t]} → predicted {columns[p]}: {count} ({100 * share:.1f}% of {names[t]})"
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgba({colour},{0.06 + 0.94 * share:.3f})" '
                         f'stroke="#fff"><title>{_e(tip)}</title></rect>')
            if count and cell >= 18:
                ink = "#fff" if share > 0.5 else "#111827"
                parts.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" '
                             f'style="fill:{ink}">{count}</text>')
    parts.append("</svg>")
    rejection = (f" The column {', '.join(repr(w) for w in words)} holds the images rejected as none of the classes "
                 "(grey for an in-list image, blue for one that is none of them)." if words else "")
    return ("<h2>Confusion matrix</h2>"
            f'<p class="note">method {_e(run.get("method"))}; rows: true class, columns: predicted class; colour: '
            f"share of the row (blue: right, red: confused). Hover a cell for its numbers.{_e(rejection)}</p>"
            + note + "".join(parts))


def _recall_chart(classes: Sequence[str], runs: Sequence[Mapping[str, Any]], by_name: Sequence[Mapping[str, Any]],
                  best: Mapping[str, Any]) -> str:
    """Recall per class and method as small multiples: one row per class, one lane per method.

    Every bar has a lane and a row of its own and every number a fixed slot at its lane's right end, so nothing
    overprints at any number of classes or methods: 12 rows of 4 lanes or 100 rows of one alike (rows 16 px)."""
    row_height, bar_height = 16, 10  # a row holds one 11 px label, with room to spare
    label_width = 16 + int(min(24, max((len(name) for name in classes), default=1)) * 6.3)
    lane_width = max(130, min(560, (900 - label_width) // max(1, len(runs))))  # 4 methods: ~190 px each
    value_width = 26  # the slot for "100" at 10 px, right of the bar's full length
    bar_full = lane_width - value_width - 12  # 12 px gap between lanes
    header_height, axis_height = 22, 18
    width = label_width + lane_width * len(runs)
    axis_y = header_height + row_height * len(classes)
    height = axis_y + axis_height
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="per-class recall">']
    for i in range(0, len(classes), 2):  # every other row shaded, so a long chart reads across
        parts.append(f'<rect x="0" y="{header_height + (i + 1) * row_height}" width="{width}" '
                     f'height="{row_height if i + 1 < len(classes) else 0}" fill="#f9fafb"/>')
    for m, run in enumerate(runs):
        x0 = label_width + m * lane_width
        colour = _PALETTE[m % len(_PALETTE)]
        marker = " ★" if run is best and len(runs) > 1 else ""
        max_chars = max(4, int((lane_width - 20) / 6.6) - len(marker))
        parts.append(f'<rect x="{x0}" y="5" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x0 + 14}" y="14"><title>{_e(run["method"])}</title>'
                     f'{_e(_short(run["method"], max_chars))}{marker}</text>')
        for tick in (0, 50, 100):  # each lane's own axis, so a 0 % row reads as zero, not as missing
            x = x0 + bar_full * tick / 100
            anchor = "start" if tick == 0 else "end" if tick == 100 else "middle"
            parts.append(f'<rect x="{x:.1f}" y="{header_height}" width="1" height="{axis_y - header_height}" '
                         f'fill="#e5e7eb"/><text x="{x:.1f}" y="{axis_y + 13}" text-anchor="{anchor}">{tick}%</text>')
        parts.append(f'<rect x="{x0}" y="{axis_y}" width="{bar_full}" height="1" fill="#9ca3af"/>')
    for i, name in enumerate(classes):
        y0 = header_height + i * row_height
        parts.append(f'<text x="{label_width - 8}" y="{y0 + 12}" text-anchor="end">'
                     f"<title>{_e(name)}</title>{_e(_short(name, 24))}</text>")
        for m, run in enumerate(runs):
            score = by_name[m].get(name)
            if score is None:
                continue
            x0 = label_width + m * lane_width
            recall = score["recall"] or 0.0
            tip = (f"{name} — {run['method']}: recall {_pct(score['recall'])}%, precision "
                   f"{_pct(score['precision'])}%, support {score['support']}")
            parts.append(f'<rect x="{x0}" y="{y0 + (row_height - bar_height) / 2:.0f}" '
                         f'width="{max(1.0, recall * bar_full):.1f}" height="{bar_height}" '
                         f'fill="{_PALETTE[m % len(_PALETTE)]}"><title>{_e(tip)}</title></rect>'
                         f'<text class="val" x="{x0 + bar_full + value_width:.0f}" y="{y0 + 12}" '
                         f'text-anchor="end">{100 * recall:.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _reliability_svg(run: Mapping[str, Any], m: int) -> str:
    """One method's reliability diagram: accuracy against confidence per bin, the diagonal, and its ECE."""
    bins = run["reliability"]
    size, pad = 200, 34  # plot side and the room for the axes' labels
    total = sum(b["count"] for b in bins) or 1
    colour = _PALETTE[m % len(_PALETTE)]
    parts = [f'<svg width="{size + pad + 12}" height="{size + pad + 26}" role="img" '
             f'aria-label="reliability diagram" style="margin:0 18px 8px 0">',
             f'<text x="{pad}" y="14"><title>{_e(run["method"])}</title>{_e(_short(run["method"], 28))} — ECE '
             f'{_num(run.get("ece"))}</text>']
    top = 22  # the plot starts under the title

    def at(v: float, axis: str) -> float:
        return pad + v * size if axis == "x" else top + (1 - v) * size

    parts.append(f'<rect x="{pad}" y="{top}" width="{size}" height="{size}" fill="#f9fafb" stroke="#9ca3af"/>')
    for b in bins:
        if not b["count"]:
            continue
        x, w = at(b["low"], "x"), (b["high"] - b["low"]) * size
        y = at(b["accuracy"], "y")
        opacity = 0.35 + 0.65 * b["count"] / total
        tip = (f"confidence {b['low']:.2f}–{b['high']:.2f}: {b['count']} images, mean confidence "
               f"{b['confidence']:.3f}, accuracy {b['accuracy']:.3f}")
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{top + size - y:.1f}" fill="{colour}" '
                     f'fill-opacity="{opacity:.2f}" stroke="#fff"><title>{_e(tip)}</title></rect>')
        # where the bar should reach: its mean confidence (rects and text only: the report's audited tag set)
        parts.append(f'<rect x="{at(b["confidence"], "x") - 2:.1f}" y="{at(b["confidence"], "y") - 2:.1f}" '
                     'width="4" height="4" fill="#111827"/>')
    parts.append(f'<rect x="{pad}" y="{top + size - 0.5}" width="{size * 2 ** 0.5:.1f}" height="1" fill="#6b7280" '
                 f'transform="rotate(-45 {pad} {top + size})"/>')  # the diagonal: perfect calibration
    for tick in (0, 0.5, 1):
        parts.append(f'<text x="{at(tick, "x"):.1f}" y="{top + size + 13}" text-anchor="middle">{tick:g}</text>'
                     f'<text x="{pad - 4}" y="{at(tick, "y") + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{pad + size / 2}" y="{top + size + 26}" text-anchor="middle">confidence</text>'
                 f'<text x="10" y="{top + size / 2}" transform="rotate(-90 10 {top + size / 2})" '
                 'text-anchor="middle">accuracy</text></svg>')
    return "".join(parts)
