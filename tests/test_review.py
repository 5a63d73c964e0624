"""`vlmcls review`: the page's security, its labels file, "improve with my labels" and `classify --labels`, on a
demo-world run (the real demo model; no network)."""

import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmcls.cli import app

flask = pytest.importorskip("flask", reason="the review page needs Flask: pip install 'vlmcls[review]'")

from vlmcls.review import ReviewSession  # noqa: E402
from vlmcls.review.server import CSP, create_app  # noqa: E402

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[1] / "vlmcls" / "data"
MODEL = f"local-dir:{DEMO / 'demo_model'}"
PER_CLASS = 8


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A cbd run over 96 fresh demo-world images (8 per class), with its own feature store."""
    from vlmcls.demo.render import render_dataset
    from vlmcls.demo.world import DEMO_CLASSES

    root = tmp_path_factory.mktemp("demo_run")
    render_dataset(root / "images", list(DEMO_CLASSES), PER_CLASS, 77)
    out = root / "run" / "out.jsonl"
    result = runner.invoke(app, ["classify", str(root / "images"), "-c", str(DEMO / "demo/classes.txt"),
                                 "--model", MODEL, "--cache", str(root / "cache"), "--method", "cbd",
                                 "--opt", f"cbd.descriptors={DEMO / 'demo/descriptors.json'}", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def review(demo_run, tmp_path):
    """A fresh copy of the run (results + settings), so each test starts with no labels."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("out.jsonl", "out.run.json"):
        (folder / name).write_bytes((demo_run.parent / name).read_bytes())
    return folder / "out.jsonl", str(demo_run.parents[1] / "cache")


def test_classify_writes_the_run_settings_beside_the_results(demo_run):
    settings = json.loads((demo_run.parent / "out.run.json").read_text())
    assert settings["model"] == MODEL and settings["method"] == "cbd"
    assert len(settings["classes"]) == 12 and settings["top_k"] == 5
    assert settings["options"] == {"cbd": {"descriptors": str(DEMO / "demo/descriptors.json")}}
    assert settings["images"].endswith("images") and os.path.isabs(settings["cwd"])


# -- security -------------------------------------------------------------------------------------------------


@pytest.fixture
def client(review):
    results, cache = review
    session = ReviewSession(results, cache_dir=cache)
    app_ = create_app(session, token="s3cret-token", port=5555)
    return app_.test_client(), session


BASE = "http://127.0.0.1:5555"


def test_every_request_needs_the_token(client):
    c, _ = client
    for path in ("/", "/page.js", "/api/state", "/image/0", "/api/next"):
        assert c.get(path, base_url=BASE).status_code == 403, path
        assert c.get(path + "?token=wrong", base_url=BASE).status_code == 403, path
    page = c.get("/?token=s3cret-token", base_url=BASE)
    assert page.status_code == 200 and b"vlmcls review" in page.data
    assert c.get("/image/0?token=s3cret-token", base_url=BASE).status_code == 200


def test_paths_from_the_request_are_never_served(client):
    c, session = client
    for path in ("/../../etc/passwd", "/image/../../etc/passwd", "/image/..%2F..%2Fetc%2Fpasswd", "/etc/passwd",
                 "/image/-1", f"/image/{len(session.rows)}", "/image/0.png", "/static/page.js", "/out.jsonl",
                 "/image/%2Fetc%2Fpasswd"):
        response = c.get(path + "?token=s3cret-token", base_url=BASE)
        assert response.status_code == 404, (path, response.status_code)


def test_state_changes_need_the_token_header_and_refuse_other_origins(client):
    c, session = client
    body = {"acts": [{"row": 0, "action": "label", "label": session.class_names[0]}]}
    # the token in the query is enough to look, not to write
    assert c.post("/api/act?token=s3cret-token", json=body, base_url=BASE).status_code == 403
    # a cross-site form post: no header, a form body, another origin
    form = c.post("/api/act?token=s3cret-token", data={"row": "0", "action": "label", "label": "x"},
                  headers={"Origin": "http://evil.example"}, base_url=BASE)
    assert form.status_code == 403
    evil = c.post("/api/act", json=body, headers={"X-Review-Token": "s3cret-token", "Origin": "http://evil.example"},
                  base_url=BASE)
    assert evil.status_code == 403
    plain = c.post("/api/act", data="row=0", headers={"X-Review-Token": "s3cret-token",
                                                      "Content-Type": "application/x-www-form-urlencoded"},
                   base_url=BASE)
    assert plain.status_code == 415
    rebound = c.get("/?token=s3cret-token", base_url="http://attacker.example:5555")  # DNS rebinding
    assert rebound.status_code == 403
    assert not session.log.path.exists()
    ok = c.post("/api/act", json=body, headers={"X-Review-Token": "s3cret-token", "Origin": BASE}, base_url=BASE)
    assert ok.status_code == 200 and session.log.path.exists()


def test_no_external_scripts_fonts_or_styles(client):
    c, _ = client
    page = c.get("/?token=s3cret-token", base_url=BASE)
    assert page.headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP and "http" not in CSP
    text = page.data.decode()
    assert "http://" not in text and "https://" not in text
    js = c.get("/page.js?token=s3cret-token", base_url=BASE).data.decode()
    assert "http://" not in js and "https://" not in js and "innerHTML" not in js


def test_the_labels_file_is_only_ever_written_beside_the_results(client, tmp_path):
    c, session = client
    outside = tmp_path / "elsewhere.jsonl"
    for body in ({"row": 1, "action": "label", "label": session.class_names[1], "path": str(outside),
                  "labels": str(outside), "file": "../../x.jsonl"},
                 {"row": "../../x", "action": "label", "label": session.class_names[1]},
                 {"row": 2, "action": "label", "label": "../../../tmp/x"}):
        c.post("/api/act", json=body, headers={"X-Review-Token": "s3cret-token"}, base_url=BASE)
    written = sorted(p.name for p in session.run.path.parent.iterdir())
    assert written == ["out.jsonl", "out.labels.jsonl", "out.run.json"]
    assert not outside.exists() and not (tmp_path.parent / "x.jsonl").exists()
    lines = session.log.path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["row"] == 1  # the bad row and the bad class were refused


# -- improve with my labels, classify --labels ------------------------------------------------------------------


def _label_least_sure(session, count):
    """Label the ``count`` least sure images with their true class (what a reviewer would do)."""
    rows = sorted((r for r in session.state()["rows"] if not r["error"]), key=lambda r: r["margin"])
    for r in rows[:count]:
        session.act(r["row"], "label", r["true_label"])


def test_improve_with_my_labels_reads_cached_features_and_raises_accuracy(review):
    results, cache = review
    session = ReviewSession(results, cache_dir=cache)
    _label_least_sure(session, 12)
    improvement = session.improve()
    assert improvement.info.get("encoded") == 0  # every feature came from the store
    assert improvement.support == 12 and improvement.changed
    assert improvement.accuracy_after > improvement.accuracy_before
    assert "tip_alpha" in improvement.info
    kept = session.keep()
    assert kept.name == "out.improved.jsonl" and session.accuracy() == improvement.accuracy_after
    assert (results.parent / "out.jsonl").read_bytes() == (results.parent.parent / "copy/out.jsonl").read_bytes()


def test_classify_labels_flag_uses_the_review_labels_as_support(review, tmp_path):
    results, cache = review
    session = ReviewSession(results, cache_dir=cache)
    _label_least_sure(session, 12)
    settings = json.loads((results.parent / "out.run.json").read_text())
    out = tmp_path / "again.jsonl"
    result = runner.invoke(app, ["classify", settings["images"], "-c", str(DEMO / "demo/classes.txt"), "--model", MODEL,
                                 "--cache", cache, "--method", "cbd", "--opt",
                                 f"cbd.descriptors={DEMO / 'demo/descriptors.json'}", "--labels",
                                 str(session.log.path), "--opt", "tip.tune=true", "-o", str(out)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "0 / 96" in result.output.replace("\n", " ")  # encoded now / cached: nothing encoded
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    before = sum(r["label"] == r["true_label"] for r in session.rows)
    after = sum(r["label"] == r["true_label"] for r in rows)
    assert after > before
    assert json.loads((tmp_path / "again.run.json").read_text())["options"]["tip"]["labels"] == str(session.log.path)


def test_label_next_orders_unlabelled_images_and_skips_labelled_ones(review):
    results, cache = review
    session = ReviewSession(results, cache_dir=cache)
    order = session.label_next(count=20)
    assert len(order) == len(set(order)) == 20
    session.act(order[0], "label", session.class_names[0])
    again = session.label_next(count=20)
    assert order[0] not in again
