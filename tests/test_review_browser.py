"""The review page in a real headless browser (the system's Chromium through Playwright): label five images by
keyboard, reload, the labels are still there; "improve with my labels" changes the predictions and the accuracy
shown rises. Set VLMCLS_SCREENSHOTS=DIR to keep the screenshots."""

import os
import re
import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="the review page needs Flask: pip install 'vlmcls[review]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install playwright")

from test_review import demo_run, review  # noqa: E402,F401  (fixtures: a demo-world run and a fresh copy)
from vlmcls.review import ReviewSession  # noqa: E402
from vlmcls.review.server import create_app  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def served(review):
    from werkzeug.serving import make_server

    results, cache = review
    session = ReviewSession(results, cache_dir=cache)
    app = create_app(session)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    app.config["REVIEW_PORT"] = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/?token={app.config['REVIEW_TOKEN']}", session
    server.shutdown()


@pytest.fixture
def page(tmp_path):
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        # launch() gives Chromium a fresh temporary profile of its own (it refuses --user-data-dir)
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=CHROMIUM_FLAGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def _shot(page, name):
    folder = os.environ.get("VLMCLS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=False)


def _wait_text(page, selector, ok, seconds=20):
    """Poll from Python: the page's CSP forbids the string evaluation wait_for_function uses."""
    import time

    deadline = time.monotonic() + seconds
    while not ok(page.inner_text(selector)):
        assert time.monotonic() < deadline, f"{selector}: {page.inner_text(selector)!r}"
        page.wait_for_timeout(200)


def _accuracy(page) -> float:
    return float(re.search(r"([\d.]+) %", page.inner_text("#accuracy")).group(1))


def test_label_five_by_keyboard_reload_then_improve(served, page):
    url, session = served
    page.goto(url)
    page.wait_for_selector(".card.focus")
    before = _accuracy(page)
    truth = {r["row"]: r["true_label"] for r in session.state()["rows"]}
    _shot(page, "review-1-least-sure.png")
    for _ in range(4):  # ] cycles the views: by class, unknown, changed by me, label next
        page.keyboard.press("]")
    page.wait_for_selector("#views button.on[data-view=next]")
    page.wait_for_selector(".card.focus")
    _shot(page, "review-2-label-next.png")
    labelled = []
    for k in range(1, 6):  # type the true class's first letters, then Enter
        row = int(page.get_attribute(".card.focus", "data-row"))
        cls = truth[row]
        page.keyboard.type(cls[:3])
        assert cls in page.inner_text("#prefix")
        page.keyboard.press("Enter")
        _wait_text(page, "#labelled", lambda text: f"{k} labelled" in text)
        assert page.query_selector(f'.card[data-row="{row}"]') is None  # labelled: out of the to-label view
        labelled.append(row)
    assert len(session.log.path.read_text().splitlines()) == 5

    page.reload()  # the labels come back from the labels file
    page.wait_for_selector(".card.focus")
    assert "5 labelled" in page.inner_text("#labelled")
    shown_done = set()
    for _ in range(6):  # page through the least-sure view by keyboard
        shown_done |= {int(c.get_attribute("data-row")) for c in page.query_selector_all(".card.done")}
        page.keyboard.press("PageDown")
    assert shown_done == set(labelled)
    page.keyboard.press("PageUp")
    _shot(page, "review-3-reloaded.png")

    page.keyboard.press("!")  # improve with my labels
    _wait_text(page, "#improve-result", lambda text: "…" not in text, 120)
    assert page.query_selector("#keep"), page.inner_text("#improve-result")
    summary = page.inner_text("#improve-result")
    changed, after_text = re.search(r"(\d+) labels change .* → ([\d.]+) %", summary).groups()
    assert int(changed) > 0 and float(after_text) > before
    _shot(page, "review-4-improve.png")
    page.keyboard.press("K")
    _wait_text(page, "#accuracy", lambda text: after_text in text)
    assert _accuracy(page) > before
    page.keyboard.press("[")  # from label next back to: changed by me
    page.wait_for_selector(".card .was")  # the images the improvement moved show what they were
    _shot(page, "review-5-changed.png")
    page.keyboard.press("Control+z")  # undo the last label
    _wait_text(page, "#labelled", lambda text: "4 labelled" in text)
