"""The CLI driven end to end on real files with tiny real models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import imagegen
from vlmcls.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_classify_folder_to_jsonl_reports_bad_files_and_exits_1(tiny_open_clip, photo_folder, tmp_path):
    out = tmp_path / "pred.jsonl"
    result = _invoke("classify", photo_folder, "--classes", "cat,dog,bird", "--model", f"local-dir:{tiny_open_clip}",
                     "--output", out, "--top-k", "2", "--batch-size", "2")
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9  # every input has a row, good or bad
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["empty.jpg"]["error"] == "empty file" and by_name["empty.jpg"]["label"] is None
    assert "truncated" in by_name["truncated.jpg"]["error"]
    assert by_name["notes.png"]["error"] == "not an image"
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 6
    for row in good:
        assert row["label"] in {"cat", "dog", "bird"} and row["label"] == row["top_k"][0]["label"]
        assert len(row["top_k"]) == 2 and row["top_k"][0]["prob"] >= row["top_k"][1]["prob"]
    assert {r["true_label"] for r in good if "true_label" in r} == {"cat", "dog"}


def test_classify_to_csv_with_class_file_and_templates_file(tiny_open_clip, photo_folder, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\ncat\n\ndog\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na drawing of a {}.\n")
    out = tmp_path / "pred.csv"
    result = _invoke("classify", photo_folder / "cat", "--classes", classes, "--model", f"local-dir:{tiny_open_clip}",
                     "--templates", templates, "--output", out)
    assert result.exit_code == 1  # the truncated JPEG in cat/
    header, *lines = out.read_text().splitlines()
    assert header.split(",")[:4] == ["path", "label", "prob", "top_k"]
    assert len(lines) == 4


def test_all_good_images_exit_0_and_print_a_table(tiny_open_clip, tmp_path):
    root = tmp_path / "ok"
    imagegen.make_class_tree(root, {"a": [(1, 2, 3)], "b": [(200, 200, 200)]})
    result = _invoke("classify", root, "--classes", "x,y", "--model", f"local-dir:{tiny_open_clip}")
    assert result.exit_code == 0
    assert "predictions" in result.output and "summary" in result.output


def test_rerun_reads_the_embedding_store_and_resumes(tiny_open_clip, photo_folder, tmp_path):
    from vlmcls import Classifier

    clf = Classifier(f"local-dir:{tiny_open_clip}", batch_size=2)
    cat_only = clf.classify(photo_folder / "cat", ["cat", "dog"])
    assert cat_only.stats["encoded"] == 3
    # A fresh process-like Classifier over the whole folder: the cat images come from the store.
    again = Classifier(f"local-dir:{tiny_open_clip}", batch_size=2).classify(photo_folder, ["x", "y", "z"])
    assert again.stats["encoded"] == 3 and again.stats["cached"] == 3
    third = Classifier(f"local-dir:{tiny_open_clip}").classify(photo_folder, ["cat", "dog"])
    assert third.stats["encoded"] == 0
    first = {p.id: p.top_k for p in cat_only.predictions if p.error is None}
    assert all(first[p.id] == p.top_k for p in third.predictions if p.id in first)


def test_cache_info_and_clear(tiny_open_clip, photo_folder):
    _invoke("classify", photo_folder / "dog", "--classes", "a,b", "--model", f"local-dir:{tiny_open_clip}", "-q")
    info = _invoke("cache", "info")
    assert info.exit_code == 0 and "image" in info.output and "text" in info.output
    cleared = _invoke("cache", "clear", "--kind", "image", "--yes")
    assert "removed 2 entries" in cleared.output
    assert "image" not in _invoke("cache", "info").output.split("entries")[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "cat,cat"], "duplicate class names"),
        (["--classes", "missing.txt"], "does not exist"),
        (["--classes", "a,b", "--output", "x.xlsx"], "use one of .csv, .jsonl, .json"),
        (["--classes", "a,b", "--templates", "nope"], "neither a named set"),
        (["--classes", "a,b", "--device", "tpu"], "unknown device"),
        (["--classes", "a,b", "--model", "ViT-B-23:openai"], "Did you mean"),
        (["--classes", "a,b", "--ray", "address=auto"], "needs --engine ray"),
        (["--classes", "a,b", "--engine", "spark"], "unknown engine 'spark'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(tiny_open_clip, photo_folder, args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if "--model" not in args:
        args = [*args, "--model", f"local-dir:{tiny_open_clip}"]
    result = runner.invoke(app, ["classify", str(photo_folder), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_python_cli_py_is_the_same_program(tiny_open_clip, photo_folder, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "p.jsonl"
    proc = subprocess.run(
        [sys.executable, str(repo / "cli.py"), "classify", str(photo_folder / "dog"), "--classes", "a,b",
         "--model", f"local-dir:{tiny_open_clip}", "--output", str(out), "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # dog/empty.jpg
    assert len(out.read_text().splitlines()) == 3


def test_a_folder_of_only_bad_files_gives_only_error_rows(tiny_open_clip, tmp_path):
    root = tmp_path / "bad"
    imagegen.write_empty(root / "a.jpg")
    imagegen.write_random_bytes(root / "b.png")
    out = tmp_path / "o.jsonl"
    result = _invoke("classify", root, "--classes", "x,y", "--model", f"local-dir:{tiny_open_clip}", "-o", out)
    assert result.exit_code == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == [None, None] and all(r["error"] for r in rows)


def test_classify_report_is_one_offline_file_with_the_error_rows(tiny_open_clip, photo_folder, tmp_path):
    report = tmp_path / "r.html"
    result = _invoke("classify", photo_folder, "--classes", "cat,<b>dog</b>", "--model", f"local-dir:{tiny_open_clip}",
                     "--report", report, "-q")
    assert result.exit_code == 1
    html = report.read_text()
    assert "empty.jpg" in html and "empty file" in html  # the error rows are shown
    assert "&lt;b&gt;dog&lt;/b&gt;" in html and "<b>dog</b>" not in html  # class names escaped
    assert "http://" not in html and "https://" not in html and "data:image/" in html  # thumbnails inline


def test_large_folders_hash_on_threads_and_keep_order_and_error_rows(tiny_open_clip, tmp_path):
    """>= 64 inputs take the threaded hashing path: rows stay in input order, unreadable inputs stay error rows."""
    from vlmcls import Classifier

    paths = [imagegen.write_solid(tmp_path / f"img_{i:03d}.png", (i * 3 % 256, 40, 200 - i)) for i in range(70)]
    missing = tmp_path / "gone.png"
    a_dir = tmp_path / "a_folder.png"
    a_dir.mkdir()
    inputs = [*paths[:30], missing, *paths[30:], a_dir]
    clf = Classifier(f"local-dir:{tiny_open_clip}", batch_size=16, num_workers=4)
    threaded = clf.classify(inputs, ["red", "blue"])
    assert [p.id for p in threaded.predictions] == [str(p) for p in inputs]
    errors = {p.id: p.error for p in threaded.predictions if p.error}
    assert errors == {str(missing): f"not found: {missing}", str(a_dir): "is a folder, not an image file"}
    sequential = Classifier(f"local-dir:{tiny_open_clip}", batch_size=16, num_workers=0,
                            cache_dir=tmp_path / "other-cache").classify(inputs, ["red", "blue"])
    assert [(p.id, p.label, p.error) for p in sequential.predictions] == [(p.id, p.label, p.error) for p in threaded.predictions]
    processes = Classifier(f"local-dir:{tiny_open_clip}", batch_size=16, num_workers=2, worker_type="process",
                           cache_dir=tmp_path / "third-cache").classify(inputs, ["red", "blue"])
    assert processes.stats["encoded"] == 70
    assert [(p.id, p.error) for p in processes.predictions] == [(p.id, p.error) for p in threaded.predictions]
    for a, b in zip(processes.predictions, threaded.predictions):
        assert a.error or abs(a.top_k[0][1] - b.top_k[0][1]) < 1e-5


def test_default_decode_workers_are_8_threads_or_one_process_per_core(monkeypatch):
    from vlmcls import images

    monkeypatch.setattr(images.os, "cpu_count", lambda: 16)
    assert images.default_decode_workers("thread") == 8
    assert images.default_decode_workers("process") == 16
    monkeypatch.setattr(images.os, "cpu_count", lambda: 2)
    assert images.default_decode_workers("thread") == images.default_decode_workers("process") == 2


def test_help_cache_and_prompt_commands_start_without_loading_torch(tmp_path):
    """`vlmcls --help`, `cache info` and `prompts list` answer in well under a second: torch is not imported."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from vlmcls.cli import app\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['classify', '--help'], ['cache', 'info'], ['prompts', 'list']):\n"
        "    res = r.invoke(app, args)\n"
        "    assert res.exit_code == 0, (args, res.output)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import vlmcls\n"
        "assert vlmcls.Classifier.__name__ == 'Classifier' and 'torch' not in sys.modules  # torch comes with a model\n"
    )
    env = {**os.environ, "VLMCLS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr


def test_a_new_process_does_not_reread_unchanged_files_but_notices_an_edit(tiny_open_clip, tmp_path, monkeypatch):
    import vlmcls.sources.records as sources_module  # where an image file's bytes are read
    from vlmcls import Classifier
    from vlmcls.encode.store import clear_digest_memo

    folder = tmp_path / "photos"
    for i in range(5):
        imagegen.write_solid(folder / f"{i}.png", (40 * i, 10, 200))
    hashed = []
    real_read = sources_module.read_file_bytes
    monkeypatch.setattr(sources_module, "read_file_bytes",
                        lambda p, *a: hashed.append(Path(p).name) or real_read(p, *a))

    def run():  # a new process: empty in-memory memo, same store
        clear_digest_memo()
        return Classifier(f"local-dir:{tiny_open_clip}", batch_size=2).classify(folder, ["red", "blue"])

    first = run()
    assert sorted(hashed) == [f"{i}.png" for i in range(5)] and first.stats["encoded"] == 5
    hashed.clear()
    again = run()
    assert hashed == [] and again.stats["encoded"] == 0  # digests came from the store, features too
    imagegen.write_solid(folder / "3.png", (0, 255, 0))  # same name, new content
    edited = run()
    assert hashed == ["3.png"] and edited.stats["encoded"] == 1


def test_dataset_flags_reach_the_image_source_in_classify_and_eval(tiny_open_clip, tmp_path):
    imagegen.make_hf_dataset([(200, 0, 0), (0, 0, 200), (210, 10, 10)], [0, 1, 0], ["cat", "dog"]).save_to_disk(
        str(tmp_path / "pets"))
    model = f"local-dir:{tiny_open_clip}"
    out = tmp_path / "p.jsonl"
    ok = _invoke("classify", tmp_path / "pets", "--classes", "cat,dog", "--model", model,
                 "--dataset", "image_column=image", "--dataset", "label_column=label", "--output", out, "-q")
    assert ok.exit_code == 0, ok.output
    assert [json.loads(line)["true_label"] for line in out.read_text().splitlines()] == ["cat", "dog", "cat"]
    for command in ("classify", "eval"):
        bad = _invoke(command, tmp_path / "pets", "--classes", "cat,dog", "--model", model,
                      "--dataset", "image_column=photo")
        assert bad.exit_code == 2 and "no column 'photo'" in " ".join(bad.output.split()), (command, bad.output)
