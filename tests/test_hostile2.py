"""Hostile inputs, round two (issue 27): deep, odd and oversized files and LLM answers never crash a run or stick
in the cache; bounds on what an answer or a file can make us encode."""

from __future__ import annotations

import codecs
import json
import random
import time

import pytest
from typer.testing import CliRunner

import imagegen
from llm_server import FakeLLMServer, close_tracked_clients, llm_server, track  # noqa: F401  (fixtures)
from test_descriptors import _default_prompts, store  # noqa: F401  (fixtures: shipped prompts, a fresh store)
from test_descriptors import make_client as descriptor_client
from test_llm_methods import CLASSES, photos  # noqa: F401  (the classify world of the LLM method tests)
from vlmcls.adapters.metric_files import read_hierarchy_file
from vlmcls.encode.store import Store
from vlmcls.sources.classes import load_classes
from vlmcls.cli import app
from vlmcls.demo import world
from vlmcls.llm.descriptors import (
    DescriptorSet,
    generate_descriptors,
    generate_pair_descriptions,
    parse_descriptor_list,
    parse_differential,
)
from vlmcls.errors import ConfigError, LLMResponseError, PromptError
from vlmcls.llm.client import LLMClient, LLMConfig
from vlmcls.methods.cupl import load_cupl_file
from vlmcls.methods.fudd import load_pair_file
from vlmcls.llm.prompts import load_prompt, packaged_prompts_dir, parse_prompt
from vlmcls.templates import load_templates

runner = CliRunner()
DEEP = "[" * 100_000 + "]" * 100_000
PAIR = {"classes": ["zorblax", "quintor"],
        "prompt_pairs": [{"attr_type": "colour", "prompt_pair": ["a red zorblax", "a green quintor"]}]}


def make_client(server: FakeLLMServer, store: Store, **overrides) -> LLMClient:
    """test_descriptors' client, with more time per answer (some answers here are large on purpose)."""
    return descriptor_client(server, store, **{"timeout_s": 5.0, **overrides})


# -- item 3: an LLM answer nested 10^5 deep is a bad answer, not a crash, and is not replayed ------------------
def test_parsers_refuse_a_deep_answer_with_a_response_error():
    for parse in (parse_descriptor_list, lambda text: parse_differential(text, "a", "b")):
        with pytest.raises(LLMResponseError, match="levels deep"):
            parse(DEEP)
        with pytest.raises(LLMResponseError, match="levels deep"):
            parse('Here you go:\n```json\n{"descriptors": ' + DEEP + "}\n```")


def test_a_deep_descriptor_answer_falls_back_and_is_not_cached(llm_server, store):
    llm_server.fault_for("zorblax", ["deep", "deep"])
    descriptors, rows, _ = generate_descriptors(["zorblax", "quintor"], make_client(llm_server, store),
                                                load_prompt("descriptors"))
    assert descriptors["zorblax"] == ["zorblax"]
    assert [(r.item, r.severity) for r in rows] == [("zorblax", "warning")]
    assert "levels deep" in rows[0].message
    # the server recovers: the next run asks again (both answers were dropped) and gets descriptors
    again, rows, _ = generate_descriptors(["zorblax", "quintor"], make_client(llm_server, store),
                                          load_prompt("descriptors"))
    assert rows == [] and again["zorblax"] == world.generic_descriptors("zorblax")
    assert len(llm_server.requests_about("zorblax")) == 3


def test_a_deep_pair_answer_leaves_the_pair_out_and_is_not_cached(llm_server, store):
    llm_server.fault_for("zorblax", ["deep", "deep"])
    client = make_client(llm_server, store)
    result, rows, _ = generate_pair_descriptions([("zorblax", "quintor")], client, load_prompt("differential"))
    assert result == {} and len(rows) == 1 and "levels deep" in rows[0].message
    result, rows, _ = generate_pair_descriptions([("zorblax", "quintor")], make_client(llm_server, store),
                                                 load_prompt("differential"))
    assert rows == [] and list(result) == ["quintor_zorblax"]


def test_an_answer_over_the_byte_limit_is_never_cached(llm_server, store, monkeypatch):
    monkeypatch.setenv("VLMCLS_MAX_ANSWER_KB", "64")
    llm_server.fault_for("zorblax", ["many:20000", "many:20000"])  # ~400 KB of bullets
    descriptors, rows, _ = generate_descriptors(["zorblax", "quintor"], make_client(llm_server, store),
                                                load_prompt("descriptors"))
    assert descriptors["zorblax"] == ["zorblax"] and len(rows) == 1
    assert "over the limit of 65,536" in rows[0].message and "VLMCLS_MAX_ANSWER_KB" in rows[0].message
    again, rows, _ = generate_descriptors(["zorblax", "quintor"], make_client(llm_server, store),
                                          load_prompt("descriptors"))
    assert rows == [] and len(llm_server.requests_about("zorblax")) == 3


# -- item 4: input files that crashed with exit 4 ---------------------------------------------------------------
def _write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_a_deep_descriptor_file_is_a_config_error_naming_the_file(tmp_path):
    path = _write(tmp_path / "d.json", '{"zorblax": ' + DEEP + "}")
    with pytest.raises(ConfigError, match=r"descriptor file '.*d\.json' nests deeper than 64 levels \(line 1\)"):
        DescriptorSet.from_json(path)


def test_a_deep_prompt_toml_is_a_prompt_error(tmp_path):
    path = _write(tmp_path / "p.toml", "name = 'x'\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(PromptError, match=r"nests deeper than 64 levels \(line 2\)"):
        load_prompt("x", prompt_file=path)
    deep_table = "name = 'x'\nx = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n"
    with pytest.raises(PromptError, match="nests deeper"):
        parse_prompt(deep_table)


def test_a_pair_entry_without_attr_type_is_read_and_bad_shapes_name_the_place(tmp_path):
    entry = {"classes": ["zorblax", "quintor"], "prompt_pairs": [{"prompt_pair": ["a red one", "a green one"]}]}
    data = load_pair_file(_write(tmp_path / "p.json", json.dumps({"quintor_zorblax": entry})))
    assert data["quintor_zorblax"]["prompt_pairs"][0]["attr_type"] == "attribute"
    bad = {"k": {"classes": ["a", "b"], "prompt_pairs": [{"attr_type": "x", "prompt_pair": ["t"]}]}}
    with pytest.raises(ConfigError, match=r"entry 'k' is not a FuDD pair: prompt_pairs\[0\] has no 'prompt_pair' of two strings"):
        load_pair_file(_write(tmp_path / "bad.json", json.dumps(bad)))
    with pytest.raises(ConfigError, match=r"prompt_pairs\[0\]\['attr_type'\] is '\[1\]'"):
        load_pair_file(_write(tmp_path / "bad2.json", json.dumps(
            {"k": {"classes": ["a", "b"], "prompt_pairs": [{"attr_type": [1], "prompt_pair": ["t", "u"]}]}})))


def test_a_non_utf8_pair_file_is_a_config_error_with_the_offset(tmp_path):
    path = _write(tmp_path / "p.json", json.dumps({"k": PAIR}).replace("red", "r\xe9d").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"pair file '.*' is not UTF-8 text \(byte 0xe9 at offset \d+ \(line 1\)"):
        load_pair_file(path)


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_text_files_with_a_bom_or_in_utf16_are_read(tmp_path, codec):
    descriptors = {"zorblax": ["red fur", "süß"], "quintor": ["green"]}
    text = json.dumps(descriptors, ensure_ascii=False)
    assert DescriptorSet.from_json(_write(tmp_path / "d.json", text.encode(codec))).to_dict() == descriptors
    assert load_pair_file(_write(tmp_path / "p.json", json.dumps({"k": PAIR}).encode(codec)))["k"]["classes"] == \
        ["zorblax", "quintor"]
    assert load_classes(str(_write(tmp_path / "c.txt", "zorblax\nquintor\n".encode(codec)))) == ["zorblax", "quintor"]
    assert load_templates(str(_write(tmp_path / "t.txt", "a photo of a {}.\n".encode(codec)))) == ["a photo of a {}."]
    prompt = (packaged_prompts_dir() / "descriptors.toml").read_text(encoding="utf-8")
    assert load_prompt("x", prompt_file=_write(tmp_path / "p.toml", prompt.encode(codec))).messages


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMCLS_MAX_FILE_MB", "1")
    path = _write(tmp_path / "p.json", json.dumps({f"k{i}": PAIR for i in range(12_000)}))
    assert path.stat().st_size > 2**20
    with pytest.raises(ConfigError, match=r"pair file '.*' is \d+\.\d MB, over the limit of 1\.0 MB; .*VLMCLS_MAX_FILE_MB"):
        load_pair_file(path)


def test_the_cli_exits_2_on_a_deep_descriptor_file_and_a_bad_pair_file(tmp_path):
    photos = tmp_path / "photos"
    imagegen.make_class_tree(photos, {"zorblax": [(220, 20, 20)]})
    deep = _write(tmp_path / "d.json", '{"zorblax": ' + DEEP + "}")
    args = ["classify", str(photos), "--classes", "zorblax,quintor", "--model", "local-dir:vlmcls/data/demo_model",
            "-o", str(tmp_path / "out.jsonl")]
    result = runner.invoke(app, [*args, "--method", "cbd", "--descriptors", str(deep)])
    assert result.exit_code == 2, result.output
    assert "nests deeper than 64 levels" in result.output
    pairs = _write(tmp_path / "p.json", b"\xff\xfe\x00\x00garbage")  # a UTF-32 mark, then not UTF-32
    result = runner.invoke(app, [*args, "--method", "templates+fudd", "--pairs", str(pairs)])
    assert result.exit_code == 2, result.output
    assert "is not UTF-32 text" in result.output


# -- the fuzz test: every loader, random and adversarial JSON/TOML ---------------------------------------------
_ODD = ["\ufeff", "\u202e", "\u2028", "\u0085", "\x00", "\x1b[31m", "\ud800", "💥", "\\", '"', "'", "#", "\r",
        "[", "]", "{", "}", "=", ",", ":", "\n", "a", "0", "-1e999", "NaN", "true", "null"]


def _random_json_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 6 else 4)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 1.5, 10**30, float("1e308")])
    if kind in (1, 2, 3):
        return "".join(rng.choice(_ODD) for _ in range(rng.randrange(6)))
    if kind in (4, 5):
        return [_random_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {"".join(rng.choice(_ODD) for _ in range(rng.randrange(4))): _random_json_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _fuzz_documents(rng: random.Random):
    """Documents as bytes: valid JSON of random shapes, then mangled, deep, truncated and re-encoded."""
    value = _random_json_value(rng)
    text = json.dumps(value, ensure_ascii=rng.random() < 0.3)
    choice = rng.randrange(9)
    if choice == 1:  # cut short
        text = text[: rng.randrange(len(text) + 1)]
    elif choice == 2:  # a random character swapped in
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(_ODD) + text[at:]
    elif choice == 3:  # deep nesting inside a valid-looking object
        depth = rng.choice([65, 1000, 20_000])
        opener = rng.choice(["[", '{"a":'])
        text = '{"x": ' + opener * depth + "1" + ("]" if opener == "[" else "}") * depth + "}"
    elif choice == 4:  # TOML-ish
        text = rng.choice(["name = 'x'\n", "[[messages]]\nrole = 'user'\ncontent = '{class_name}'\n", "a = "]) + text
    elif choice == 5:  # unbalanced brackets
        text = rng.choice(["[", "{", "]", "}"]) * rng.randrange(1, 3000)
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        raw = rng.choice([codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF32_BE, b"\xff", b"\x00"]) + raw
    if rng.random() < 0.1:
        raw = text.encode(rng.choice(["utf-16-le", "utf-16-be", "utf-32"]), "surrogatepass")
    return raw


def _loaders(tmp_path):
    """Each user-file loader, called on a path."""
    return {
        "descriptors": DescriptorSet.from_json,
        "cupl": load_cupl_file,
        "pairs": load_pair_file,
        "prompt": lambda p: load_prompt("x", prompt_file=p),
        "classes": lambda p: load_classes(str(p)),
        "templates": lambda p: load_templates(str(p)),
        "hierarchy": read_hierarchy_file,
    }


FUZZ_RUNS = 300


def test_fuzz_every_loader_raises_only_config_errors(tmp_path):
    """Every loader, FUZZ_RUNS random or adversarial documents each: a result or a ConfigError, nothing else.
    (Found on the old code: RecursionError in json and tomllib, UnicodeDecodeError in the pair reader, TypeError
    on a list-valued prompt role, KeyError on a pair without attr_type.)"""
    rng = random.Random(27)
    outcomes: dict[str, dict[str, int]] = {}
    started = time.monotonic()
    for name, load in _loaders(tmp_path).items():
        counts = outcomes.setdefault(name, {"ok": 0, "refused": 0})
        for n in range(FUZZ_RUNS):
            path = tmp_path / f"{name}-{n % 5}.{'toml' if name == 'prompt' else 'json'}"
            path.write_bytes(_fuzz_documents(rng))
            try:
                load(path)
            except ConfigError as exc:
                assert str(path) in str(exc), (name, str(exc))  # names the file
                counts["refused"] += 1
            else:
                counts["ok"] += 1
    for name, counts in outcomes.items():
        assert counts["refused"] > 0, name
    assert time.monotonic() - started < 120


def test_fuzz_llm_answer_parsers_return_or_raise_a_response_error():
    rng = random.Random(2027)
    for _ in range(2000):
        text = _fuzz_documents(rng).decode("utf-8", "replace")
        for parse in (parse_descriptor_list, lambda t: parse_differential(t, "a", "b")):
            try:
                value = parse(text)
            except LLMResponseError:
                continue
            assert isinstance(value, list)


@pytest.mark.parametrize("messages", ["[[messages]]\nrole = ['user']\ncontent = 'x {class_name}'\n",
                                      "[[messages]]\nrole = {a = 1}\ncontent = 'x'\n",
                                      "messages = [1, 2]\n", "messages = 'user'\n"])
def test_prompt_files_of_the_wrong_shape_are_prompt_errors(messages):
    with pytest.raises(PromptError, match="prompt file"):
        parse_prompt("name = 'x'\n" + messages, source="p.toml")


# -- item 2: bounds on what an answer or a file can make us encode ----------------------------------------------


def _classify(tiny, photos, tmp_path, server, *extra):
    out = tmp_path / "out.jsonl"
    args = ["classify", str(photos), "--classes", CLASSES, "--model", f"local-dir:{tiny}", "-o", str(out),
            *(["--llm", f"base_url={server.base_url}", "--llm", "model=fake-model"] if server else []),
            *map(str, extra)]
    started = time.monotonic()
    result = runner.invoke(app, args, catch_exceptions=False)
    warnings_file = tmp_path / "out.warnings.jsonl"
    warnings = [json.loads(x) for x in warnings_file.read_text().splitlines()] if warnings_file.exists() else []
    return result, warnings, time.monotonic() - started


def test_an_answer_with_thousands_of_descriptors_keeps_the_first_200_with_one_row(tiny_open_clip, photos, tmp_path,
                                                                                  llm_server):
    llm_server.fault_for("zorblax", ["many:5000"])
    result, warnings, _ = _classify(tiny_open_clip, photos, tmp_path, llm_server, "--method", "cbd")
    assert result.exit_code == 1, result.output  # finished, with a warning row
    assert [(w["item"], w["stage"]) for w in warnings] == [("1 class", "descriptors")]
    assert "dropped 4,800 texts past the limit of 200 per class ('zorblax')" in warnings[0]["message"]
    assert "VLMCLS_MAX_DESCRIPTORS" in warnings[0]["message"]


def test_long_captions_and_many_caption_pairs_are_cut_with_one_row_each(tiny_open_clip, photos, tmp_path, llm_server,
                                                                        monkeypatch):
    monkeypatch.setenv("VLMCLS_MAX_CAPTIONS", "5")
    for name in ("zorblax", "quintor", "flimber", "vostrel"):  # the descriptor answers are ordinary
        llm_server.fault_for(name, ["ok"])
    llm_server.script(["long:60000", "many:40", "long:60000"])  # then the pair questions
    result, warnings, seconds = _classify(tiny_open_clip, photos, tmp_path, llm_server, "--method", "cbd+fudd",
                                          "--opt", "fudd.k=3")
    assert result.exit_code == 1, result.output
    messages = {w["message"].split(" past")[0] + " per " + w["message"].split(" per ")[1].split(" ")[0]
                for w in warnings}
    assert "dropped 35 caption pairs per pair" in messages
    assert any(m.startswith("dropped ") and "characters" in m for m in messages)
    assert seconds < 60  # uncut, the tokenizer spent ~40 s on each 60,000-letter word


def test_a_descriptor_file_with_a_200000_letter_word_is_cut_before_tokenizing(tiny_open_clip, photos, tmp_path):
    descriptors = _write(tmp_path / "d.json", json.dumps({"zorblax": ["x" * 200_000, "red fur"],
                                                          "quintor": ["green"], "flimber": ["blue"], "vostrel": []}))
    result, warnings, seconds = _classify(tiny_open_clip, photos, tmp_path, None, "--method", "cbd",
                                          "--descriptors", descriptors)
    assert result.exit_code == 1, result.output
    assert [w["item"] for w in warnings] == ["1 class"]
    assert "dropped 199,019 characters past the limit of 1,000 per text ('zorblax')" in warnings[0]["message"]
    assert seconds < 30


# -- item 1: CSV formula injection, raw control characters, bidi overrides ---------------------------------------
def test_csv_cells_that_start_a_formula_are_neutralised_and_controls_made_visible(tmp_path):
    import csv

    from vlmcls.output import write_rows

    rows = [{"path": '=HYPERLINK("http://evil.example","x").png', "label": "+cmd", "error": "\x1b[31mred\x07",
             "true_label": "-1"},
            {"path": "@SUM(A1)", "label": "\tx", "error": "\rx", "true_label": "plain"}]
    out = write_rows(rows, tmp_path / "out.csv")
    raw = out.read_bytes()
    assert b"\x1b" not in raw and b"\x07" not in raw
    cells = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert cells[0]["path"] == "'" + rows[0]["path"] and cells[0]["label"] == "'+cmd"
    assert cells[0]["error"] == "\\x1b[31mred\\x07" and cells[0]["true_label"] == "'-1"
    assert [cells[1][k] for k in ("path", "label", "error", "true_label")] == ["'@SUM(A1)", "'\tx", "'\rx", "plain"]
    # JSONL keeps the raw text
    write_rows(rows, tmp_path / "out.jsonl")
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["path"] == rows[0]["path"]


def test_the_cli_csv_neutralises_a_formula_class_name(tiny_open_clip, photos, tmp_path):
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["classify", str(photos), "--classes", "=1+1,@bird", "--model",
                                 f"local-dir:{tiny_open_clip}", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    labels = {line.split(",")[1] for line in out.read_text().splitlines()[1:]}
    assert labels <= {"'=1+1", "'@bird"} and labels


def test_html_never_carries_raw_control_characters():
    from vlmcls.report.html import esc, render_value

    assert esc("a\x1b[2Jb\x00c\x9b") == "a\\x1b[2Jb\\x00c\\x9b"
    assert "\x1b" not in render_value({"why": ["\x1b]0;title\x07"]})


def test_the_terminal_strips_bidi_overrides():
    from vlmcls.cli._render import safe

    assert safe("photo\u202egpj.exe") == "photogpj.exe"
    assert safe("a\u2066b\u2069c\u202ad") == "abcd"


# -- item 5: a full disk, a file-size limit, a read-only filesystem at write time --------------------------------
def test_a_file_size_limit_is_an_output_error_and_the_old_file_is_kept(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    script = ("import resource, sys\nfrom vlmcls.output import write_rows\nfrom vlmcls.errors import OutputError\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
              "try:\n    write_rows(({'path': f'p{i}.png', 'label': 'x'} for i in range(100000)), sys.argv[1])\n"
              "except OutputError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cannot write '{out}': the file-size limit was reached (ulimit -f)")
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


@pytest.mark.parametrize("code, said", [(28, "the disk is full"), (30, "the filesystem is read-only"),
                                        (27, "the file-size limit was reached")])
def test_the_cli_exits_3_with_one_line_when_the_disk_fills_while_writing(tiny_open_clip, photos, tmp_path,
                                                                          monkeypatch, code, said):
    import builtins
    import os

    import vlmcls.output

    out = tmp_path / "out.csv"
    out.write_text("old\n")

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        if "w" in mode:
            def write(_text):
                raise OSError(code, os.strerror(code))
            handle.write = write
        return handle

    monkeypatch.setattr(vlmcls.output, "open", full_disk_open, raising=False)
    result = runner.invoke(app, ["classify", str(photos), "--classes", CLASSES, "--model",
                                 f"local-dir:{tiny_open_clip}", "-o", str(out)])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [f"error: cannot write '{out}': {said}" + lines[0].split(said)[1]] and "bug" not in result.output
    assert out.read_text() == "old\n" and not list(tmp_path.glob(".out.csv.*"))


# -- item 6: SIGTERM like Ctrl-C; describe takes one class; class files split on line breaks only ----------------
def test_sigterm_says_what_is_cached_and_exits_143(tiny_open_clip, photos, tmp_path, monkeypatch):
    import os
    import signal

    from vlmcls import models

    real = models.OpenClipBackend.encode_images
    calls = {"n": 0}

    def encode_images(self, pixels):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would; the handler raises in this thread
        return real(self, pixels)

    monkeypatch.setattr(models.OpenClipBackend, "encode_images", encode_images)
    args = ["classify", str(photos), "--classes", CLASSES, "--model", f"local-dir:{tiny_open_clip}", "--batch-size",
            "1", "--decode", "workers=0", "-o", str(tmp_path / "p.jsonl")]
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's if a test in this process started Ray
    result = runner.invoke(app, args)
    assert result.exit_code == 143, result.output
    assert "interrupted: 1 of 3 images cached; the same command resumes." in " ".join(result.output.split())
    assert signal.getsignal(signal.SIGTERM) is before  # put back after the command


def test_describe_takes_one_class(llm_server, tmp_path):
    out = tmp_path / "d.json"
    result = runner.invoke(app, ["describe", "-c", "zorblax", "-o", str(out),
                                 "--llm", f"base_url={llm_server.base_url}", "--llm", "model=fake-llm"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"zorblax": world.generic_descriptors("zorblax")}


def test_class_files_split_on_line_breaks_only_and_hash_lines_are_explained(tmp_path, caplog):
    path = _write(tmp_path / "c.txt", "big\u2028cat\nsmall\u0085dog\r\n# a comment\n#fff\n\\#hashtag\rlast\n")
    with caplog.at_level("WARNING"):
        names = load_classes(str(path))
    assert names == ["big\u2028cat", "small\u0085dog", "#hashtag", "last"]
    assert "line 4: '#fff' is a comment and is skipped; write '\\#fff'" in caplog.text
    assert "# a comment" not in caplog.text  # an ordinary comment is not warned about


# -- Build item 4: directory symlinks stay home ------------------------------------------------------------------
def test_folder_links_are_followed_inside_the_root_only_and_each_folder_once(tmp_path, caplog, monkeypatch):
    import os

    from vlmcls.sources.listing import list_images

    monkeypatch.delenv("VLMCLS_FOLLOW_LINKS", raising=False)
    root = tmp_path / "photos"
    imagegen.make_class_tree(root, {"zorblax": [(220, 20, 20)], "flimber": [(30, 200, 40)]})
    elsewhere = tmp_path / "elsewhere"
    imagegen.make_class_tree(elsewhere, {"secret": [(1, 2, 3)]})
    os.symlink(elsewhere, root / "escape")  # leads out of the root
    os.symlink("/", root / "flimber" / "slash")
    os.symlink("..", root / "zorblax" / "loop")  # a loop back to the root
    with caplog.at_level("WARNING"):
        records = list_images(root)
    paths = [str(r.path) for r in records]
    assert len(paths) == len(set(paths)) == 2
    assert not any("secret" in p for p in paths)
    assert "skipped 2 linked folders that lead out of" in caplog.text and "VLMCLS_FOLLOW_LINKS" in caplog.text
    os.unlink(root / "flimber" / "slash")
    followed = list_images(root, follow_links=True)
    assert sum("secret" in str(r.path) for r in followed) == 1 and len(followed) == 3
    monkeypatch.setenv("VLMCLS_FOLLOW_LINKS", "1")
    assert len(list_images(root)) == 3
