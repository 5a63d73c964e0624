"""The run layer: options owned by their method (--opt, promoted flags, typed configs, retired flags), each stage
computed once per run, `vlmcls methods`, and methods from other packages through the entry point."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmcls.cli import app
from vlmcls.errors import ConfigError
from vlmcls.methods import METHODS, FuddConfig, MethodOptions

DEMO = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo"
DEMO_MODEL = f"local-dir:{DEMO.parent / 'demo_model'}"
MAIN_JOB = ["classify", str(DEMO / "images"), "--classes", str(DEMO / "classes.txt"), "--model", DEMO_MODEL,
            "--descriptors", str(DEMO / "descriptors.json"), "--pairs", str(DEMO / "pairs.json"), "-q"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_opt_reaches_the_fudd_config_typed(monkeypatch, tmp_path):
    seen = []
    record = METHODS["fudd"]

    def spy(context, config, upstream, gather, report):
        seen.append(config)
        return record.prepare(context, config, upstream, gather, report)

    monkeypatch.setitem(METHODS, "fudd", dataclasses.replace(record, prepare=spy))
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(app, [*MAIN_JOB, "--method", "cbd+fudd", "--opt", "fudd.k=5", "-O", "fudd.rank=base",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(seen) == 1 and isinstance(seen[0], FuddConfig) and (seen[0].k, seen[0].rank) == (5, "base")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(sum(t["prob"] > 0 for t in r["top_k"]) <= 5 for r in rows)  # re-ranked inside 5 classes


@pytest.mark.parametrize("args, message", [
    (["--opt", "fudd.kk=5"], "'fudd' has no option 'kk'. Did you mean 'k'? Valid: k, rank, base, max_pairs"),
    (["--opt", "fud.k=5"], "unknown method 'fud'. Did you mean 'fudd'?"),
    (["--opt", "fudd.k=1"], "fudd.k must be ≥ 2; got '1'."),
    (["--opt", "tip.alpha=lots"], "tip.alpha is 'lots'; it must be a number."),
    (["--fudd-k", "5"], "--fudd-k is now --opt fudd.k=…"),
    (["--self-cache"], "--self-cache is now --method HEAD+tfup (e.g. cbd+tfup)"),
    (["--method-option", "fudd_k=5"], "--method-option is now --opt METHOD.KEY=VALUE"),
    (["--ray-address", "auto"], "--ray-address is now --ray address=…"),
    (["--llm-timeout=3"], "--llm-timeout is now --llm timeout=…"),
    (["--base-url", "x"], "--base-url is now --llm base_url=…"),
    (["--dataset", "spilt=x"], "--dataset 'spilt=x' is not KEY=VALUE with a known KEY. Did you mean 'split'? "
                               "Valid: split, image_column, label_column."),
    (["--method", "fud"], "unknown method 'fud' in 'fud'. Did you mean 'fudd'?"),
])
def test_a_bad_or_retired_option_fails_in_one_line_before_anything_loads(args, message, tmp_path):
    missing = ["classify", str(tmp_path), "--classes", "a,b", "--model", f"local-dir:{tmp_path / 'nope'}"]
    result = CliRunner().invoke(app, [*missing, *args])
    assert result.exit_code == 2, result.output
    assert message in _one_line(result.output) and len(result.output.strip().splitlines()) == 1


def test_a_commands_own_flag_is_not_taken_for_a_retired_one(tmp_path):
    """audit keeps its own --seed (the hold-out seed); classify's old --seed was WaffleCLIP's."""
    audit = CliRunner().invoke(app, ["audit", str(tmp_path), "-c", "a,b", "--seed", "3", "-m", "local-dir:/nope",
                                     "--holdout", "2"])
    assert audit.exit_code == 2 and "--holdout '2.0' must lie strictly between 0 and 1" in _one_line(audit.output)
    classify = CliRunner().invoke(app, ["classify", str(tmp_path), "-c", "a,b", "--seed", "3"])
    assert classify.exit_code == 2 and "--seed is now --opt waffle.seed=…" in classify.output


def test_the_api_takes_options_by_method_and_checks_them_before_decoding(tmp_path):
    from vlmcls import Classifier

    clf = Classifier(DEMO_MODEL)
    with pytest.raises(ConfigError, match=r"'fudd' has no option 'kk'\. Did you mean 'k'\? Valid: k, rank"):
        clf.classify(tmp_path / "not-there", DEMO / "classes.txt", method="cbd+fudd", options={"fudd": {"kk": 5}})
    typed = clf.classify(DEMO / "images", DEMO / "classes.txt", method="cbd+fudd", options={
        "cbd": {"descriptors": DEMO / "descriptors.json"}, "fudd": FuddConfig(k=3, pairs=DEMO / "pairs.json")})
    as_text = clf.classify(DEMO / "images", DEMO / "classes.txt", method="cbd+fudd", options=MethodOptions(
        descriptors=str(DEMO / "descriptors.json"), methods={"fudd": {"k": "3", "pairs": str(DEMO / "pairs.json")}}))
    assert [p.label for p in typed.predictions] == [p.label for p in as_text.predictions]
    assert typed.stats["fudd_k"] == 3


def test_each_stage_runs_once_per_batch_of_a_run(monkeypatch):
    """Preparing FuDD (pair counts) and the self-cache (all features) needs the stages before them; they are not
    run again for the final scores: one evaluation per stage for the in-process run's one batch."""
    from vlmcls import Classifier
    from vlmcls.methods.fudd import FuddRerank
    from vlmcls.methods.heads import LinearHead
    from vlmcls.methods.refiners import TfupStage

    calls: dict[str, int] = {}

    def counted(cls):
        real = cls.apply

        def apply(self, *args, **kwargs):
            calls[cls.__name__] = calls.get(cls.__name__, 0) + 1
            return real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "apply", apply)

    for cls in (LinearHead, FuddRerank, TfupStage):
        counted(cls)
    clf = Classifier(DEMO_MODEL)
    feats = clf.encode_images(DEMO / "images")
    options = MethodOptions(descriptors=str(DEMO / "descriptors.json"), methods={"fudd": {"pairs": DEMO / "pairs.json"}})
    result = clf.predict(feats, [c for c in (DEMO / "classes.txt").read_text().split() if c], "cbd+fudd+tfup", options)
    assert len(result.predictions) == 48
    assert calls == {"LinearHead": 1, "FuddRerank": 1, "TfupStage": 1}


def test_vlmcls_methods_lists_every_record_and_one_methods_options():
    listing = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    for name in METHODS:
        assert name in listing.output
    fudd = CliRunner().invoke(app, ["methods", "fudd"], env={"COLUMNS": "200"})
    assert fudd.exit_code == 0
    lines = {line.split("│")[1].strip(): line for line in fudd.output.splitlines() if line.count("│") >= 4}
    assert "int" in lines["fudd.k"] and "10" in lines["fudd.k"] and "ambiguous set" in lines["fudd.k"]
    assert "Flag: --pairs" in lines["fudd.pairs"] and "base | template" in lines["fudd.rank"]
    typo = CliRunner().invoke(app, ["methods", "fdd"])
    assert typo.exit_code == 2 and "Did you mean 'fudd'?" in typo.output


# -- a method from another package ----------------------------------------------------------------------------

PLUGIN = '''
"""A third-party method: the class name shouted, with an option of its own."""
from dataclasses import dataclass

from vlmcls.methods import HEAD, MethodRecord, option, register
from vlmcls.methods.heads import linear_head


@dataclass
class ShoutConfig:
    exclaim: int = option(1, "How many '!' end each sentence.", minimum=0)


def _prepare(context, config, upstream, gather, report):
    per_class = {c: ["A PHOTO OF A " + c.upper() + "!" * config.exclaim] for c in context.class_names}
    report.info["shout_exclaim"] = config.exclaim
    return linear_head(context, per_class, "mean_embedding", report)


register(MethodRecord(name="shout", kind=HEAD, summary="the class name, shouted", text_source="class names",
                      config=ShoutConfig, prepare=_prepare, cost="one text per class", numpy=True))
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A distribution installed only by being on sys.path: its module and a dist-info with the entry point."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "shout_method.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "shout_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vlmcls.methods]\nshout = shout_method\n")
    return root


def _run(plugin_path: Path, tmp_path: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), *sys.path]),
           "VLMCLS_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "vlmcls", *args]
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_a_plugin_method_runs_through_the_cli_the_api_and_eval(plugin_path, tmp_path):
    listed = _run(plugin_path, tmp_path, "methods")
    assert listed.returncode == 0 and "shout" in listed.stdout and "from shout-method" in listed.stdout
    options = _run(plugin_path, tmp_path, "methods", "shout")
    assert "shout.exclaim" in options.stdout and "How many '!'" in options.stdout

    out = tmp_path / "p.jsonl"
    cli = _run(plugin_path, tmp_path, "classify", str(DEMO / "images"), "-c", str(DEMO / "classes.txt"), "-m",
               DEMO_MODEL, "--method", "shout+tfup", "--opt", "shout.exclaim=3", "-o", str(out), "-q")
    assert cli.returncode == 0, cli.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 48 and all(r["label"] for r in rows)
    bad = _run(plugin_path, tmp_path, "classify", str(DEMO / "images"), "-c", "a,b", "--method", "shout",
               "--opt", "shout.exclaim=-1")
    assert bad.returncode == 2 and "shout.exclaim must be ≥ 0" in bad.stderr

    api = _run(plugin_path, tmp_path, code=textwrap.dedent(f"""
        import json
        from vlmcls import Classifier
        result = Classifier({DEMO_MODEL!r}).classify({str(DEMO / 'images')!r}, {str(DEMO / 'classes.txt')!r},
                                                     method="shout+tfup", options={{"shout": {{"exclaim": 3}}}})
        print(json.dumps([p.label for p in result.predictions]))
    """))
    assert api.returncode == 0, api.stderr
    assert json.loads(api.stdout.strip().splitlines()[-1]) == [r["label"] for r in rows]

    evaluated = _run(plugin_path, tmp_path, "eval", str(DEMO / "images"), "-c", str(DEMO / "classes.txt"), "-m",
                     DEMO_MODEL, "--methods", "shout,templates", "--opt", "shout.exclaim=3", "-o",
                     str(tmp_path / "e.json"), "-q")
    assert evaluated.returncode == 0, evaluated.stderr
    methods = json.loads((tmp_path / "e.json").read_text())["methods"]
    assert "shout" in json.dumps(methods)


@pytest.mark.ray
def test_a_plugin_method_gives_the_single_engine_rows_on_ray(plugin_path, tmp_path):
    pytest.importorskip("ray")
    common = [str(DEMO / "images"), "-c", str(DEMO / "classes.txt"), "-m", DEMO_MODEL, "--method", "shout",
              "--opt", "shout.exclaim=2", "-q"]
    single = _run(plugin_path, tmp_path, "classify", *common, "-o", str(tmp_path / "single.jsonl"))
    assert single.returncode == 0, single.stderr
    on_ray = _run(plugin_path, tmp_path, "classify", *common, "-o", str(tmp_path / "ray.jsonl"), "--engine", "ray",
                  "--ray", "workers=1")
    assert on_ray.returncode == 0, on_ray.stderr
    want = [json.loads(line) for line in (tmp_path / "single.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["path"] for r in got] == [r["path"] for r in want]
    assert [r["label"] for r in got] == [r["label"] for r in want]


def test_one_request_one_protocol_the_local_engine_gives_the_apis_rows():
    from vlmcls import Classifier
    from vlmcls.engines import LocalEngine, RunRequest

    with pytest.raises(ConfigError, match=r"'fudd' has no option 'kk'"):  # checked when the request is made
        RunRequest(DEMO / "images", DEMO / "classes.txt", "cbd+fudd", {"fudd": {"kk": 1}})
    request = RunRequest(DEMO / "images", DEMO / "classes.txt", "cbd+fudd", {
        "cbd": {"descriptors": DEMO / "descriptors.json"}, "fudd": {"pairs": DEMO / "pairs.json"}}, top_k=3)
    clf = Classifier(DEMO_MODEL)
    engine = LocalEngine(clf)
    ran = engine.run(request)
    direct = clf.classify(DEMO / "images", DEMO / "classes.txt", method="cbd+fudd", options=request.options, top_k=3)
    assert ran.table.labels == direct.table.labels and (ran.table.top_index == direct.table.top_index).all()
    feats = engine.encode(request)  # encode once, score many (--watch, eval)
    again = engine.score(request.but(method="cbd"), feats)
    assert sum(a != b for a, b in zip(again.table.labels, ran.table.labels)) == 20  # FuDD moved 20 of 48


def test_modules_that_moved_keep_their_old_import_paths():
    import importlib

    import vlmcls.encode.store
    import vlmcls.engines.ray

    assert importlib.import_module("vlmcls.cache") is vlmcls.encode.store
    assert importlib.import_module("vlmcls.distributed").classify_with_ray is vlmcls.engines.ray.classify_with_ray
    from vlmcls.llm import LLMClient  # a package now, re-exporting its client
    from vlmcls.report import write_report  # likewise, its page

    assert LLMClient.__module__ == "vlmcls.llm.client" and write_report.__module__ == "vlmcls.report.page"


def test_watch_is_a_library_loop_yielding_each_run_an_edit_and_a_bad_edit(tmp_path):
    """`classify --watch` renders these runs; a library user iterates them: encode once, re-score on each edit,
    a half-written file is a run with an error (the watch goes on), the last good result stays the baseline."""
    from vlmcls import Classifier
    from vlmcls.engines import LocalEngine, RunRequest, watched_files

    descriptors = tmp_path / "descriptors.json"
    descriptors.write_text((DEMO / "descriptors.json").read_text())
    request = RunRequest(DEMO / "images", DEMO / "classes.txt", "cbd+fudd",
                         {"cbd": {"descriptors": descriptors}, "fudd": {"pairs": DEMO / "pairs.json"}})
    files = watched_files(request)
    assert files[:3] == [DEMO / "classes.txt", descriptors, DEMO / "pairs.json"]
    assert any(f.name == "descriptors.toml" for f in files[3:])  # the prompt files the run can read
    engine = LocalEngine(Classifier(DEMO_MODEL))
    runs = engine.watch(request, [descriptors], poll=0.01, max_reruns=2)
    first = next(runs)
    assert first.first and first.result.stats["encoded"] == 48 and first.error is None

    descriptors.write_text("{not json")  # saved half-way
    broken = next(runs)
    assert broken.result is None and broken.edited == [descriptors] and "descriptors" in str(broken.error)

    same = json.loads((DEMO / "descriptors.json").read_text())
    same = {name: ["a plain grey blob"] for name in same}  # every class described alike: CbD cannot tell them apart
    descriptors.write_text(json.dumps(same))
    fixed = next(runs)
    assert fixed.error is None and fixed.previous is first.result  # compared with the last good run
    assert fixed.result.stats["encoded"] == 0 and fixed.result.stats["cached"] == 48  # no image encoded again
    assert fixed.result.table.labels != first.result.table.labels
    assert next(runs, None) is None  # max_reruns reached


def test_dry_run_is_a_library_estimate_that_sends_nothing(tmp_path):
    """The engine says what a request would spend on the LLM; nothing reaches the endpoint (a closed port)."""
    from vlmcls import Classifier
    from vlmcls.encode.store import Store
    from vlmcls.engines import LocalEngine, RunRequest
    from vlmcls.llm import LLMClient
    from vlmcls.llm.config import LLMConfig

    request = RunRequest(DEMO / "images", DEMO / "classes.txt", "cbd+fudd",
                         {"cbd": {"descriptors": DEMO / "descriptors.json"}, "fudd": {"k": 3}})
    request.options.llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", max_retries=0),
                                    Store(tmp_path / "cache"))
    engine = LocalEngine(Classifier(DEMO_MODEL))
    stages = engine.estimate(request)
    pairs = stages["differential pairs"]
    assert pairs.to_call == pairs.requests > 0 and pairs.cached == 0
    assert stages["unique pairs in the ambiguous sets"] == pairs.requests  # no max_pairs: every pair is asked
    assert "descriptors" not in stages  # a descriptor file: CbD asks nothing
    assert engine.estimate(request.but(method="cbd")) == {}
