"""An audit people can trust: every verdict follows the number printed beside it, at 80 columns, as the README runs."""

import json
import re

import pytest
from typer.testing import CliRunner

from vlmcls.cli import app
from vlmcls.demo import DEMO_CLASSES_FILE, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_ID
from vlmcls.demo.render import render_dataset
from vlmcls.demo.world import DEMO_CLASSES

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_audit(tmp_path_factory):
    """The README's audit, as pasted: `vlmcls demo images /tmp/demo -n 20`, then the audit with --holdout 0.5."""
    root = tmp_path_factory.mktemp("audit_readme")
    render_dataset(root / "demo", list(DEMO_CLASSES), 20, 1234)  # the `demo images` defaults
    out = root / "audit.json"
    args = ["audit", str(root / "demo"), "--classes", str(DEMO_CLASSES_FILE), "--model", DEMO_MODEL_ID,
            "--descriptors", str(DEMO_DESCRIPTORS_FILE), "--output", str(out), "--report", str(root / "audit.html"),
            "--write-pruned", str(root / "pruned.json"), "--holdout", "0.5"]
    result = runner.invoke(app, args, catch_exceptions=False, env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text()), (root / "audit.html").read_text()


def test_every_verdict_has_the_sign_of_its_change_in_expected_accuracy(demo_audit):
    _, audit, _ = demo_audit
    rows = [row for rows in audit.values() for row in rows]
    assert len(rows) == 38 and {r["verdict"] for r in rows} >= {"helps", "hurts"}
    for row in rows:
        delta, margin = row["delta_expected"], row["neutral_within"]
        assert margin >= 1e-4
        if row["verdict"] == "hurts":
            assert delta > 0 and delta >= margin, row
        elif row["verdict"] == "helps":
            assert delta < 0 and -delta >= margin, row
        else:
            assert abs(delta) < margin, row


def test_the_table_shows_what_decides_and_fits_80_columns(demo_audit):
    output, audit, _ = demo_audit
    lines = output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    header = next(line for line in lines if line.startswith("class"))
    assert header.split()[:6] == ["class", "descriptor", "Δ", "exp.", "±", "verdict"]
    assert "+ means leaving it out helps" in " ".join(output.split())  # the sign convention, stated
    by_descriptor = {(c, r["descriptor"]): r for c, rows in audit.items() for r in rows}
    table_rows = [line for line in lines if line.split() and line.split()[0] in DEMO_CLASSES]
    assert len(table_rows) == 15
    for line in table_rows:  # every printed row: verdict and printed Δ exp. / ± agree with the rule
        match = re.match(r"(\w+)\s+(.+?)\s+([+-]\d+\.\d+)\s+(\d+\.\d+)\s+(helps|neutral|hurts)\s", line)
        assert match, line
        name, descriptor, delta, margin, verdict = match.groups()
        assert by_descriptor[(name, descriptor)]["verdict"] == verdict
        delta, margin = float(delta), float(margin)
        assert (verdict == "hurts") == (delta >= margin) and (verdict == "helps") == (delta <= -margin)


def _plain(text: str) -> str:
    """The output without table borders and line wraps: one line of words."""
    return " ".join(re.sub(r"[│┃┌┐└┘─━┬┴├┤┼]", " ", text).split())


def test_pruning_that_lowers_held_out_top1_is_flagged_with_both_accuracies(demo_audit):
    output, _, html = demo_audit
    flat = _plain(output)
    assert "before → after pruning, on the 120 held-out images" in flat
    top1 = re.search(r"top-1 % (\d+\.\d\d) with all descriptors → (\d+\.\d\d) without the hurts ones", flat)
    assert top1 and re.search(r"expected accuracy % (\d+\.\d\d) → (\d+\.\d\d)", flat), flat
    before, after = float(top1.group(1)), float(top1.group(2))
    # The README's example is such a case (58.33 → 57.50 when measured): the output must say so.
    assert after < before
    assert "warning: pruning lowers top-1 on the 120 held-out images" in flat
    assert "Pruning lowers top-1" in html
    assert "<thead><tr><th></th><th></th></tr></thead>" not in html  # the summary has no empty header row
    assert "Δ expected acc." in html and "positive means leaving it out helps" in html
