"""The descriptor audit on the demo world: closed-form leave-one-out, verdicts, pruning, holdout, CLI and HTML."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_server import llm_server  # noqa: F401  (fixture)
from vlmcls import Classifier
from vlmcls.report.audit import audit_descriptors
from vlmcls.cli import app
from vlmcls.demo.render import render_dataset
from vlmcls.demo.world import DEMO_CLASSES
from vlmcls.llm.descriptors import DescriptorSet
from vlmcls.errors import ConfigError
from vlmcls.methods import MethodOptions

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / "vlmcls" / "data"
MODEL = f"local-dir:{DATA / 'demo_model'}"
CLASSES = list(DEMO_CLASSES)
# Descriptors that name no attribute: what an LLM adds when it has nothing visual to say.
FILLERS = ["often seen in pictures", "a common sight", "something people like to photograph"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    render_dataset(root / "images", CLASSES, 8, seed=5151)  # never a training seed
    committed = json.loads((DATA / "demo" / "descriptors.json").read_text())
    padded = root / "descriptors.json"
    padded.write_text(json.dumps({c: committed[c] + FILLERS for c in CLASSES}))
    clf = Classifier(MODEL, cache_dir=root / "cache", batch_size=64)
    return clf, root, padded


def _accuracy(result):
    return sum(p.label == p.true_label for p in result.ok) / len(result.ok)


def test_leaving_one_out_in_closed_form_matches_scoring_without_it(world):
    clf, root, padded = world
    classes = ["zorblax", "quintor", "flimber", "yantrok"]
    dset = DescriptorSet({c: json.loads(padded.read_text())[c] for c in classes})
    audit = audit_descriptors(clf, _records(root, classes), classes, dset)
    feats = clf.encode_images(_records(root, classes))
    full = clf.predict(feats, classes, "cbd", MethodOptions(descriptors=dset))
    truth = [p.true_label for p in full.ok]
    for c in classes:
        for row in audit.entries[c]:
            without = DescriptorSet({**dset.to_dict(), c: [d for d in dset[c] if d != row.descriptor]})
            rerun = clf.predict(feats, classes, "cbd", MethodOptions(descriptors=without))
            assert row.delta_top1 == pytest.approx(_accuracy(rerun) - _accuracy(full), abs=1e-9), (c, row.descriptor)
            own = [n for n, t in enumerate(truth) if t == c]
            recall = lambda r: sum(r.ok[n].label == c for n in own) / len(own)  # noqa: E731
            assert row.delta_recall == pytest.approx(recall(rerun) - recall(full), abs=1e-9)
            expected = lambda r: float(sum(r.probs[n, classes.index(t)] for n, t in enumerate(truth))) / len(truth)  # noqa: E731
            assert row.delta_expected == pytest.approx(expected(rerun) - expected(full), abs=1e-5)


def _records(root, classes):
    from vlmcls.api import as_records

    return [r for r in as_records(root / "images") if r.label in classes]


def test_fillers_come_out_neutral_or_hurting_and_attributes_helping(world):
    clf, root, padded = world
    audit = audit_descriptors(clf, root / "images", CLASSES, padded)
    rows = [v for vs in audit.entries.values() for v in vs]
    fillers = [v for v in rows if v.descriptor in FILLERS]
    attributes = [v for v in rows if v.descriptor not in FILLERS]
    assert len(fillers) == 3 * len(CLASSES)
    assert all(v.verdict in ("neutral", "hurts") for v in fillers)
    assert sum(v.verdict == "hurts" for v in fillers) > 0.8 * len(fillers)
    assert not any(v.verdict == "hurts" for v in attributes)
    assert sum(v.verdict == "helps" for v in attributes) > 0.75 * len(attributes)
    for vs in audit.entries.values():  # worst first inside every class
        order = [("hurts", "neutral", "helps").index(v.verdict) for v in vs]
        assert order == sorted(order)
    assert audit.optimistic and audit.report_images == audit.audited_images == 96


def test_pruning_on_one_half_holds_up_on_the_other(world, tmp_path):
    clf, root, padded = world
    audit = audit_descriptors(clf, root / "images", CLASSES, padded, holdout=0.5, seed=3)
    assert not audit.optimistic and audit.audited_images == audit.report_images == 48
    assert audit.accuracy_after >= audit.accuracy_before
    assert set(audit.pruned) == set(CLASSES)
    dropped = {d for c in CLASSES for d in json.loads(padded.read_text())[c] if d not in audit.pruned[c]}
    assert dropped and dropped <= set(FILLERS)  # only descriptors without an attribute were pruned
    # The pruned file, read back as --descriptors reads it, scores the held-out half as the audit said.
    pruned_file = audit.pruned.to_json(tmp_path / "pruned.json")
    held_out = set(audit.report_ids)
    feats = clf.encode_images([r for r in _records(root, CLASSES) if r.id in held_out])
    assert len(feats.records) == 48
    original = _accuracy(clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=str(padded))))
    pruned = _accuracy(clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=str(pruned_file))))
    assert original == pytest.approx(audit.accuracy_before) and pruned == pytest.approx(audit.accuracy_after)
    assert pruned >= original


def test_bad_inputs_fail_before_any_work(world, tmp_path):
    clf, root, padded = world
    with pytest.raises(ConfigError, match="holdout '1.5'"):
        audit_descriptors(clf, root / "images", CLASSES, padded, holdout=1.5)
    with pytest.raises(ConfigError, match="labels not among"):
        audit_descriptors(clf, root / "images", CLASSES[:3], padded)
    args = ["audit", str(root / "images"), "-c", ",".join(CLASSES), "--descriptors", str(padded), "-m", MODEL]
    assert runner.invoke(app, [*args, "--prune-neutral"]).exit_code == 2
    assert runner.invoke(app, [*args, "--output", str(tmp_path / "a.csv")]).exit_code == 2
    assert runner.invoke(app, [*args[:5], str(tmp_path / "missing.json")]).exit_code == 2


def _plain(text):
    return " ".join(re.sub(r"[│┃┌┐└┘─━┬┴├┤┼┏┓┗┛┡┩╇╋┳┻]", " ", text).split())


def test_the_command_writes_the_audit_the_pruned_file_and_the_report(world, tmp_path):
    clf, root, padded = world
    sneaky = tmp_path / "sneaky.json"  # LLM text is never markup in the report
    sneaky.write_text(json.dumps({**json.loads(padded.read_text()), "gleebis": ["<script>alert(1)</script>", "a blue colour"]}))
    out, pruned, report = tmp_path / "audit.json", tmp_path / "pruned.json", tmp_path / "audit.html"
    args = ["audit", str(root / "images"), "-c", ",".join(CLASSES), "--descriptors", str(sneaky), "-m", MODEL,
            "--cache", str(root / "cache"), "-o", str(out), "--write-pruned", str(pruned), "--report", str(report)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    audit = json.loads(out.read_text())
    assert list(audit) == CLASSES
    for rows in audit.values():
        assert all(set(row) == {"descriptor", "delta_expected", "neutral_within", "delta_recall", "delta_top1",
                                "separation", "verdict"} for row in rows)
    text = _plain(result.output)
    assert "optimistic" in text and "--holdout 0.5" in text
    assert re.search(r"pruning, on the 96 audited images top-1 % \d+\.\d\d with all descriptors → \d+\.\d\d", text)
    kept = DescriptorSet.from_json(pruned)
    hurts = {(c, row["descriptor"]) for c, rows in audit.items() for row in rows if row["verdict"] == "hurts"}
    assert hurts and not any((c, d) in hurts for c in kept for d in kept[c])
    page = report.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Descriptor audit" in page and "optimistic" in page

    held = runner.invoke(app, [*args[:10], "--holdout", "0.5"])
    assert held.exit_code == 0, held.output
    assert "optimistic" not in _plain(held.output) and "on the 48 held-out images" in _plain(held.output)


def test_without_a_file_the_llm_writes_the_descriptors_once(world, tmp_path, llm_server):
    clf, root, _ = world
    args = ["audit", str(root / "images"), "-c", ",".join(CLASSES), "-m", MODEL, "--cache", str(tmp_path / "c"),
            "-o", str(tmp_path / "a.json"), "--llm", f"base_url={llm_server.base_url}", "--llm", "model=fake-model",
            "-q"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len(llm_server.chat_requests) == len(CLASSES)
    audit = json.loads((tmp_path / "a.json").read_text())
    assert audit["zorblax"] and {row["descriptor"] for row in audit["zorblax"]} == {"a round shape", "a red colour", "a large size"}
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and len(llm_server.chat_requests) == len(CLASSES)  # cached


def test_separation_and_verdicts_on_features_built_by_hand():
    import torch

    from vlmcls.report.audit import audit_features

    # Images of "a" point along x, images of "b" along y; "z" is an axis no image has.
    image_feats = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.1, 0.0], [1.0, 0.2, 0.0], [1.0, 0.3, 0.0], [0.1, 1.0, 0.0], [0.2, 1.0, 0.0], [0.3, 1.0, 0.0]]),
        dim=1).repeat(10, 1)  # 60 images, so the verdicts clear two standard errors
    labels = torch.tensor([0, 0, 0, 1, 1, 1]).repeat(10)
    vectors = {"a, which is along x": [1.0, 0.0, 0.0], "a, which is along z": [0.0, 0.0, 1.0],
               "b, which is along y": [0.0, 1.0, 0.0], "a": [0.6, 0.6, 0.5], "b": [0.6, 0.6, 0.5],
               "c d": [0.0, 0.0, 1.0]}  # class "c_d" has no descriptors: scored by its wordified name
    encode = lambda texts: torch.nn.functional.normalize(torch.tensor([vectors[t] for t in texts]), dim=1)  # noqa: E731
    dset = DescriptorSet({"a": ["along x", "along z"], "b": ["along y"]})
    audit = audit_features(image_feats, labels, ["a", "b", "c_d"], dset, encode, logit_scale=5.0)  # soft enough to move
    rows = {v.descriptor: v for v in audit.entries["a"]}
    assert rows["along x"].separation == 1.0 and rows["along x"].verdict == "helps"
    assert rows["along z"].separation == 0.5 and rows["along z"].verdict == "hurts"  # ties count half
    assert [v.descriptor for v in audit.entries["a"]] == ["along z", "along x"]  # worst first
    assert audit.entries["b"][0].separation == 1.0 and audit.entries["b"][0].rival == "a"
    row = audit.to_dict()["a"][0]  # counted deltas of 0, and the number that decides "hurts" beside them
    assert row["delta_expected"] > row["neutral_within"] > 0
    assert {k: v for k, v in row.items() if k not in ("delta_expected", "neutral_within")} == {
        "descriptor": "along z", "delta_recall": 0.0, "delta_top1": 0.0, "separation": 0.5, "verdict": "hurts"}
    assert audit.pruned.to_dict() == {"a": ["along x"], "b": ["along y"]}
    assert audit.entries["c_d"] == [] and [w["item"] for w in audit.warnings] == ["c_d"]
