"""What a new user meets first (issue 17): fail fast on the real problem, show accuracy, steer with --watch;
and text that must not crash or fool the CLI (issue 14: markup, output paths, class-file encodings, exit codes)."""

import json
import re
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import imagegen
from llm_server import llm_server  # noqa: F401  (fixture)
from vlmcls.cli import app

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo"
DEMO_MODEL = f"local-dir:{DEMO.parent / 'demo_model'}"


def _invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kwargs)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _warm_imports() -> None:
    """Import torch and open_clip before timing: a first import takes many seconds on a busy machine."""
    import open_clip  # noqa: F401
    import vlmcls.api  # noqa: F401


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- 17.1: no hub, and every path checked before the model loads ----------------------------------------------
def test_hub_model_offline_fails_in_seconds_saying_how_to_use_a_local_copy(labelled_folder):
    _warm_imports()
    started = time.perf_counter()
    result = _invoke("classify", labelled_folder, "--classes", "cat,dog", "--model", "ViT-B-32:laion2b_e16")
    assert time.perf_counter() - started < 10
    assert result.exit_code == 3
    message = _one_line(result.output)
    assert "HF_HUB_OFFLINE=1 is set" in message and "local-dir:/path/folder" in message
    assert "Traceback" not in result.output and "retry" not in message.lower()


def test_unreachable_hub_fails_in_seconds(labelled_folder, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    _warm_imports()
    started = time.perf_counter()
    result = _invoke("classify", labelled_folder, "--classes", "cat,dog", "--model", "hf:openai/clip-vit-base-patch32")
    assert time.perf_counter() - started < 10
    assert result.exit_code == 3
    message = _one_line(result.output)
    assert "cannot be reached" in message and "hf:/path/folder" in message


@pytest.mark.parametrize("case", ["images", "classes", "descriptors"])
def test_missing_inputs_are_usage_errors_found_before_the_model_loads(case, labelled_folder, tmp_path):
    # The default hub model cannot load offline (exit 3): exit 2 proves the paths were checked first.
    args = {"images": labelled_folder, "classes": "cat,dog", "descriptors": None}
    missing = tmp_path / "nope"
    if case == "images":
        args["images"] = missing
    elif case == "classes":
        args["classes"] = f"{missing}.txt"
    else:
        args["descriptors"] = f"{missing}.json"
    extra = ["--descriptors", args["descriptors"], "--method", "cbd"] if args["descriptors"] else []
    result = _invoke("classify", args["images"], "--classes", args["classes"], *extra)
    assert result.exit_code == 2, result.output
    assert "does not exist" in _one_line(result.output) and str(missing) in _one_line(result.output)


# -- 17.2: an LLM endpoint that is not running ----------------------------------------------------------------
def test_describe_with_no_server_stops_at_once_naming_the_url_and_writes_nothing(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    out = tmp_path / "descriptors.json"
    _warm_imports()
    started = time.perf_counter()
    result = _invoke("describe", "--classes", DEMO / "classes.txt", "--llm", f"base_url={url}", "--llm", "model=m",
                     "-o", out)
    assert time.perf_counter() - started < 10
    assert result.exit_code == 3
    message = _one_line(result.output)
    assert f"cannot connect to the LLM at '{url}'" in message and "--llm base_url=" in message
    assert message.count(url) == 1 and "retry" not in message.lower()
    assert not out.exists()


def test_describe_writes_nothing_when_no_class_got_an_answer(llm_server, tmp_path):  # noqa: F811
    llm_server.script(["500"] * 12)
    out = tmp_path / "descriptors.json"
    result = _invoke("describe", "--classes", "zorblax,quintor", "--llm", f"base_url={llm_server.base_url}",
                     "--llm", "model=m", "--llm", "retries=0", "-o", out)
    assert result.exit_code == 3
    assert "no class got descriptors" in _one_line(result.output)
    assert not out.exists()


def test_classify_does_not_run_on_names_alone_when_every_class_fell_back(tiny_open_clip, labelled_folder, tmp_path):
    out = tmp_path / "pred.jsonl"
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    result = _invoke("classify", labelled_folder, "--classes", "cat,dog", "--method", "cbd", "--model",
                     f"local-dir:{tiny_open_clip}", "--llm", f"base_url={url}", "--llm", "model=m", "-o", out)
    assert result.exit_code == 3
    assert f"cannot connect to the LLM at '{url}'" in _one_line(result.output)
    assert not out.exists()


# -- 17.3 / 14.12: class lists and class files ------------------------------------------------------------------
def test_one_class_is_a_usage_error_that_says_how_classes_are_given(labelled_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "animals.txt").write_text("cat\ndog\n")
    result = _invoke("classify", labelled_folder, "--classes", "animals")
    assert result.exit_code == 2
    message = _one_line(result.output)
    assert "only one class ('animals')" in message and "'cat,dog,bird'" in message
    assert "Did you mean the file 'animals.txt'?" in message


def test_latin1_and_binary_class_files_are_usage_errors_naming_the_file(labelled_folder, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\nthé\n".encode("latin-1"))
    result = _invoke("classify", labelled_folder, "--classes", latin)
    assert result.exit_code == 2
    assert f"classes file '{latin}' is not UTF-8" in _one_line(result.output)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    result = _invoke("classify", labelled_folder, "--classes", binary)
    assert result.exit_code == 2 and "is binary" in _one_line(result.output)


def test_a_utf8_bom_does_not_stay_in_the_first_class_name(tiny_open_clip, labelled_folder, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_bytes("\ufeffcat\ndog\n".encode("utf-8"))
    out = tmp_path / "pred.jsonl"
    _invoke("classify", labelled_folder, "--classes", classes, "--model", f"local-dir:{tiny_open_clip}", "-o", out,
            "--top-k", "2")
    labels = {item["label"] for line in out.read_text().splitlines() for item in json.loads(line)["top_k"]}
    assert labels == {"cat", "dog"}


# -- 17.4: a bad pretrained tag -----------------------------------------------------------------------------------
def test_unknown_pretrained_tag_is_a_usage_error_listing_the_tags(labelled_folder):
    result = _invoke("classify", labelled_folder, "--classes", "cat,dog", "--model", "ViT-B-32:notatag")
    assert result.exit_code == 2
    message = _one_line(result.output)
    assert "unknown pretrained tag 'notatag' for 'ViT-B-32'" in message and "openai" in message
    assert "ERROR" not in result.output


# -- 17.5: accuracy when labels are known --------------------------------------------------------------------------
def test_summary_shows_accuracy_and_confusions_for_labelled_images():
    result = _invoke("classify", DEMO / "images", "--classes", DEMO / "classes.txt", "--method", "cbd",
                     "--descriptors", DEMO / "descriptors.json", "--model", DEMO_MODEL)
    assert result.exit_code == 0
    text = _one_line(result.output)
    assert "top-1 accuracy" in text and "of 48 labelled" in text
    assert "worst confusions (true → predicted)" in text and "predicted per class" in text


def test_readme_main_job_runs_full_fudd_offline_and_gets_the_pairs_right(tmp_path):
    out = tmp_path / "pred.jsonl"
    result = _invoke("classify", DEMO / "images", "--classes", DEMO / "classes.txt", "--method", "fudd",
                     "--descriptors", DEMO / "descriptors.json", "--pairs", DEMO / "pairs.json", "--model", DEMO_MODEL,
                     "-o", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    correct = sum(r["label"] == r["true_label"] for r in rows)
    assert correct >= 46  # CbD alone gets 28 of 48: the one-attribute pairs need the differential captions


def test_shipped_pairs_file_is_what_the_demo_world_defines():
    from itertools import combinations

    from vlmcls.demo.world import DEMO_CLASSES, differential_descriptions

    pairs = json.loads((DEMO / "pairs.json").read_text())
    assert len(pairs) == len(list(combinations(DEMO_CLASSES, 2)))
    for entry in pairs.values():
        a, b = entry["classes"]
        expected = [{"attr_type": t, "prompt_pair": [ta, tb]} for t, ta, tb in differential_descriptions(a, b)]
        assert entry["prompt_pairs"] == expected


# -- the steering loop --------------------------------------------------------------------------------------------
def test_watch_reruns_after_an_edit_rewrites_outputs_and_reports_moved_images(tmp_path):
    descriptors = tmp_path / "descriptors.json"
    table = json.loads((DEMO / "descriptors.json").read_text())
    descriptors.write_text(json.dumps(table))
    out = tmp_path / "pred.jsonl"
    holder = {}

    def run():
        holder["result"] = _invoke("classify", DEMO / "images", "--classes", DEMO / "classes.txt", "--method", "cbd",
                                   "--descriptors", descriptors, "--model", DEMO_MODEL, "-o", out, "--watch",
                                   "--watch-limit", "1", "-q")

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 240
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.exists(), "the first run never wrote its output"
    before = {json.loads(line)["path"]: json.loads(line)["label"] for line in out.read_text().splitlines()}
    # Swap two classes' descriptors: their images should swap labels.
    table["bexapod"], table["gleebis"] = table["gleebis"], table["bexapod"]
    descriptors.write_text(json.dumps(table))
    thread.join(timeout=120)
    assert not thread.is_alive(), "--watch did not stop after its one re-run"
    result = holder["result"]
    assert result.exit_code == 0, result.output
    after = {json.loads(line)["path"]: json.loads(line)["label"] for line in out.read_text().splitlines()}
    moved = {path for path in after if after[path] != before[path]}
    assert moved and {before[p] for p in moved} <= {"bexapod", "gleebis"}
    text = _one_line(result.output)
    assert f"re-run after editing descriptors.json: {len(moved)} of 48 images changed label" in text
    assert "top-1 accuracy:" in text and "→" in text


# -- 14.3: markup and control sequences in data ---------------------------------------------------------------------
def test_markup_in_class_names_and_paths_prints_as_written(tiny_open_clip, tmp_path):
    root = tmp_path / "odd"
    imagegen.make_class_tree(root, {"a": [(1, 2, 3)], "b": [(200, 200, 200)]})
    first = next((root / "a").iterdir())
    (root / "a" / "q[").mkdir()
    first.rename(root / "a" / "q[" / "]z.png")  # the path reads 'a/q[/]z.png': a closing tag with no opening
    result = _invoke("classify", root, "--classes", "[/]bird,[red]cat[/red],dog\x1b[2J", "--model",
                     f"local-dir:{tiny_open_clip}", "--top-k", "3", env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "[/]bird" in result.output or "[red]cat[/red]" in result.output
    assert "a/q[/]z.png" in result.output  # the full path, as written
    assert "\x1b[2J" not in result.output


def test_error_hints_with_brackets_print_intact(tmp_path):
    missing = tmp_path / "[/]{x}[bold].json"
    result = _invoke("classify", tmp_path, "--classes", "a,b", "--method", "cbd", "--descriptors", missing)
    assert result.exit_code == 2
    assert str(missing) in result.output.replace("\n", "")


# -- 14.11: output targets checked before the model loads -------------------------------------------------------------
def test_output_onto_a_folder_or_read_only_file_or_an_input_fails_before_the_model(labelled_folder, tmp_path):
    # the default hub model would fail with exit 3 offline: exit 2 means nothing was loaded
    cases = {"is a folder": ["-o", tmp_path]}
    locked = tmp_path / "locked.jsonl"
    locked.write_text("keep me\n")
    locked.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    cases["is read-only"] = ["-o", locked]
    descriptors = tmp_path / "d.json"
    descriptors.write_text('{"cat": ["fur"], "dog": ["a tail"]}')
    cases["is an input of this run"] = ["--method", "cbd", "--descriptors", descriptors, "-o", descriptors]
    for expected, extra in cases.items():
        result = _invoke("classify", labelled_folder, "--classes", "cat,dog", *extra)
        message = _one_line(result.output)
        assert result.exit_code == 2, (expected, result.output)
        assert expected in message, (expected, message)
    assert locked.read_text() == "keep me\n"
    # classify's outputs now differ by suffix (-o data, --report .html, --export a folder); the shared check still
    # refuses two outputs naming one file
    from vlmcls.cli._preflight import check_outputs
    from vlmcls.errors import ConfigError

    with pytest.raises(ConfigError, match="both name"):
        check_outputs({"-o": (tmp_path / "r.json", (".json",), None), "--x": (tmp_path / "r.json", (".json",), None)}, [])


def test_export_onto_an_image_of_the_run_is_refused(labelled_folder):
    image = sorted((labelled_folder / "cat").iterdir())[0]
    before = image.read_bytes()
    result = _invoke("classify", labelled_folder, "--classes", "cat,dog", "--export", image)
    assert result.exit_code == 2 and "is a file; give a folder" in _one_line(result.output)
    assert image.read_bytes() == before


def test_stale_warnings_file_is_removed_and_interrupted_writes_leave_no_tmp(tiny_open_clip, tmp_path):
    from vlmcls.output import write_rows

    root = tmp_path / "ok"
    imagegen.make_class_tree(root, {"a": [(1, 2, 3)], "b": [(200, 200, 200)]})
    out = tmp_path / "pred.jsonl"
    stale = tmp_path / "pred.warnings.jsonl"
    stale.write_text('{"item": "old"}\n')
    result = _invoke("classify", root, "--classes", "x,y", "--model", f"local-dir:{tiny_open_clip}", "-o", out)
    assert result.exit_code == 0 and out.exists() and not stale.exists()
    with pytest.raises(TypeError):
        write_rows([{"path": "a"}, {"path": object()}], tmp_path / "half.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "pred.jsonl", "pred.run.json", "vlmcls-cache"]  # + the run settings (review)


# -- 14.13: internal errors and Ctrl-C have their own exit codes ------------------------------------------------------
def test_internal_error_exits_4_with_one_line_and_the_traceback_file(tiny_open_clip, labelled_folder, monkeypatch):
    from vlmcls import scoring

    def broken(*args, **kwargs):
        raise RuntimeError("boom in scoring")

    monkeypatch.setattr(scoring, "compute_logits", broken)
    monkeypatch.setattr("vlmcls.api.compute_logits", broken)
    result = _invoke("classify", labelled_folder, "--classes", "cat,dog", "--model", f"local-dir:{tiny_open_clip}",
                     "--method", "name")
    assert result.exit_code == 4, result.output
    message = _one_line(result.output)
    assert "internal error: RuntimeError: boom in scoring" in message and "Traceback" not in result.output
    log_path = message.split("the traceback is in ")[1].split(")")[0]
    assert "boom in scoring" in Path(log_path).read_text() and "Traceback" in Path(log_path).read_text()
    os.unlink(log_path)


def test_ctrl_c_says_how_much_is_cached_and_the_same_command_resumes(tiny_open_clip, labelled_folder,
                                                                     interrupt_encoding):
    args = ["classify", labelled_folder, "--classes", "cat,dog", "--model", f"local-dir:{tiny_open_clip}",
            "--batch-size", "2", "--decode", "workers=0", "-o", labelled_folder.parent / "p.jsonl"]
    restore = interrupt_encoding(2)
    result = _invoke(*args)
    assert result.exit_code == 130
    assert "interrupted: 2 of 7 images cached; the same command resumes." in _one_line(result.output)
    restore()
    again = _invoke(*args)
    assert "2 / 4" not in again.output  # the summary counts: encoded now / cached
    assert json.loads((labelled_folder.parent / "p.jsonl").read_text().splitlines()[0])


# -- 17.9: small things a new user trips over ----------------------------------------------------------------------
def test_cache_clear_with_an_unknown_kind_is_refused_not_reported_as_done():
    result = _invoke("cache", "clear", "--kind", "nonsense", "-y")
    assert result.exit_code == 2
    assert "unknown cache kind 'nonsense'. Valid: image, text, llm, digest" in _one_line(result.output)
    assert "removed" not in result.output


def test_help_keeps_brackets_and_errors_are_one_line_without_a_leading_blank(tmp_path):
    help_text = _invoke("classify", "--help", env={"COLUMNS": "250"}).output
    assert "{class: [descriptor, …]}" in help_text
    result = _invoke("classify", tmp_path / "missing", "--classes", "a,b", env={"COLUMNS": "40"})
    assert result.exit_code == 2
    assert result.output.startswith("error: image source") and result.output.count("\n") == 1


def test_a_missing_file_in_a_path_list_is_an_error_row_naming_the_path_resolved_from_the_list(
        tiny_open_clip, tmp_path, monkeypatch):
    data = tmp_path / "data"
    imagegen.write_solid(data / "imgs" / "red.png", imagegen.RED)
    (data / "list.txt").write_text("imgs/red.png\nimgs/gone.png\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the list is given relative to here; its entries are relative to its own folder

    result = _invoke("classify", "../data/list.txt", "--classes", "red,blue", "--model", f"local-dir:{tiny_open_clip}",
                     "--output", "pred.jsonl", env={"COLUMNS": "400"})

    assert result.exit_code == 1
    rows = [json.loads(line) for line in (elsewhere / "pred.jsonl").read_text().splitlines()]
    not_found = f"not found: {data / 'imgs' / 'gone.png'}"
    assert [row["error"] for row in rows] == [None, not_found]
    assert rows[0]["label"] == "red"
    assert not_found in _one_line(result.output)


@pytest.mark.parametrize(
    "command",
    [["classify"], ["eval"], ["describe"], ["audit"], ["cache"], ["cache", "info"], ["cache", "clear"], ["prompts"],
     ["prompts", "list"], ["prompts", "show"], ["prompts", "path"], ["demo"], ["demo", "images"], ["demo", "paths"], []],
    ids=lambda command: " ".join(command) or "vlmcls",
)
def test_help_shows_no_value_placeholder_on_flags_and_names_arguments_plainly(command):
    help_text = _invoke(*command, "--help", env={"COLUMNS": "250"}).output
    assert "--help" in help_text and "<bool>" not in help_text
    assert not any(f"<{kind}" in help_text for kind in ("str", "path", "int", "float"))  # click's TEXT, PATH, …
    usage = next(line for line in help_text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage
    expected_usage = {"classify": "[OPTIONS] IMAGES", "eval": "[OPTIONS] DATA", "audit": "[OPTIONS] DATA",
                      "show": "[OPTIONS] NAME", "path": "[OPTIONS] [NAME]", "images": "[OPTIONS] OUT_DIR"}
    if command and command[-1] in expected_usage:
        assert usage.rstrip().endswith(expected_usage[command[-1]])


def test_help_texts_show_as_written_and_values_are_named_like_click():
    help_text = _invoke("classify", "--help", env={"COLUMNS": "250"}).output
    assert "needs vlmcls[int8]" in help_text  # was read as a rich markup tag and vanished
    assert re.search(r"--top-k\s+-k\s+INTEGER", help_text) and re.search(r"--output\s+-o\s+PATH", help_text)
    assert re.search(r"--classes\s+-c\s+TEXT", help_text)


def test_flags_still_take_no_value_and_a_missing_argument_is_named_as_in_usage():
    cleared = _invoke("cache", "clear", "--kind", "llm", "--yes")  # a flag still takes no value
    assert cleared.exit_code == 0, cleared.output
    assert "Missing argument 'NAME'" in _one_line(_invoke("prompts", "show").output)


def test_eval_checks_its_outputs_before_the_model_loads(labelled_folder, tmp_path):
    result = _invoke("eval", labelled_folder, "--classes", "cat,dog", "--output", tmp_path)
    assert result.exit_code == 2 and "is a folder" in _one_line(result.output)
    result = _invoke("eval", labelled_folder, "--classes", "cat,dog", "--report", tmp_path / "r.txt")
    assert result.exit_code == 2 and "a report is one HTML file" in _one_line(result.output)


def test_watch_ends_cleanly_on_ctrl_c_keeping_the_last_outputs(tiny_open_clip, labelled_folder, tmp_path, monkeypatch):
    from vlmcls.engines import watch  # the loop (and its clock) lives in the library

    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(watch.time, "sleep", interrupt)
    out = tmp_path / "pred.jsonl"
    result = _invoke("classify", labelled_folder / "cat", "--classes", "cat,dog", "--model",
                     f"local-dir:{tiny_open_clip}", "-o", out, "--watch", "-q")
    assert result.exit_code == 0, result.output
    assert "watch stopped after 0 re-runs; the outputs hold the last run." in _one_line(result.output)
    assert len(out.read_text().splitlines()) == 3


# -- 17.7: --explain in table mode is readable -------------------------------------------------------------------------
def test_explain_prints_scored_descriptors_and_the_differential_move():
    result = _invoke("classify", DEMO / "images" / "skarnel", "--classes", DEMO / "classes.txt", "--method", "fudd",
                     "--descriptors", DEMO / "descriptors.json", "--pairs", DEMO / "pairs.json", "--model", DEMO_MODEL,
                     "--explain", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "→ skarnel" in text
    # the final label against its runner-up, each descriptor then its score; then the captions that moved it
    assert "skarnel: a large size 0." in text and "(label)" in text and "bexapod: " in text and "(runner-up)" in text
    assert "moved bexapod → skarnel, by the differential captions:" in text and "shape (margin 0." in text
    assert '"a photo of a skarnel, which has a square shape"' in text
    assert '{"' not in text  # no raw JSON
