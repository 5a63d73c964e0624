"""The demo world's claims, measured on fresh held-out images with the shipped small CLIP.

Descriptors beat class names and random descriptors; one-attribute pairs stay confused under CbD until
differential follow-ups (asked over real HTTP to the local LLM server) resolve them; a Tip-Adapter cache helps;
the Fréchet mean predicts classes that were never prompted.
"""

import os
from pathlib import Path

import pytest

from llm_server import FakeLLMServer
from vlmcls import Classifier
from vlmcls.demo.render import render_dataset
from vlmcls.demo.world import DEMO_CLASSES, ONE_ATTRIBUTE_PAIRS, write_attribute_distances
from vlmcls.llm.client import LLMClient, LLMConfig
from vlmcls.methods import MethodOptions

DATA = Path(__file__).resolve().parents[1] / "vlmcls" / "data"
MODEL_DIR = Path(os.environ.get("VLMCLS_DEMO_MODEL", DATA / "demo_model"))
DESCRIPTORS = str(DATA / "demo" / "descriptors.json")
CLASSES = list(DEMO_CLASSES)
PARTNER = {a: b for a, b, _ in ONE_ATTRIBUTE_PAIRS} | {b: a for a, b, _ in ONE_ATTRIBUTE_PAIRS}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    render_dataset(root / "test", CLASSES, 8, seed=4242)  # never a training seed
    clf = Classifier(f"local-dir:{MODEL_DIR}", cache_dir=root / "cache", batch_size=64)
    feats = clf.encode_images(root / "test")
    return clf, feats, [r.label for r in feats.records], root


def accuracy(result, truth):
    return sum(p.label == t for p, t in zip(result.ok, truth)) / len(truth)


def partner_confusion(result, truth):
    on_pairs = [(p.label, t) for p, t in zip(result.ok, truth) if t in PARTNER]
    return sum(label == PARTNER[t] for label, t in on_pairs) / len(on_pairs)


def test_descriptors_beat_names_and_random_descriptors(world):
    clf, feats, truth = world[:3]
    name = accuracy(clf.predict(feats, CLASSES, "name"), truth)
    waffle = accuracy(clf.predict(feats, CLASSES, "waffle"), truth)
    cbd_result = clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=DESCRIPTORS))
    cbd = accuracy(cbd_result, truth)
    chance = 1 / len(CLASSES)
    assert name < chance + 0.2 and waffle < chance + 0.2  # invented names tell the model (almost) nothing
    assert cbd > max(name, waffle) + 0.3
    assert partner_confusion(cbd_result, truth) > 0.25  # generic descriptors leave the pairs confused


def test_differential_follow_ups_resolve_the_pairs_over_real_http(world):
    clf, feats, truth = world[:3]
    cbd = clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=DESCRIPTORS))
    server = FakeLLMServer().start()
    try:
        llm = LLMClient(LLMConfig(model="demo-llm", base_url=server.base_url, timeout_s=10), clf.store)
        options = MethodOptions(descriptors=DESCRIPTORS, llm=llm, methods={"fudd": {"k": 4}})
        fudd = clf.predict(feats, CLASSES, "fudd", options)
        asked = len(server.chat_requests)
        assert asked == fudd.stats["unique_pairs"] == fudd.stats["pairs_answered"] > 0  # one call per unique pair
        again = clf.predict(feats, CLASSES, "fudd", options)
        assert len(server.chat_requests) == asked  # the re-run asks nothing
        assert [p.label for p in again.ok] == [p.label for p in fudd.ok]
    finally:
        server.stop()
    assert accuracy(fudd, truth) > accuracy(cbd, truth) + 0.2
    assert partner_confusion(fudd, truth) < partner_confusion(cbd, truth) / 2


def test_tip_adapter_cache_helps_and_tuning_sees_only_the_support_set(world):
    clf, feats, truth, root = world
    render_dataset(root / "support", CLASSES, 4, seed=777)
    zero_shot = accuracy(clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=DESCRIPTORS)), truth)
    tip = clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=DESCRIPTORS, methods={"tip": {"support": root / "support"}}))
    assert accuracy(tip, truth) > zero_shot + 0.15
    tuned = clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=DESCRIPTORS, methods={"tip": {"support": root / "support", "tune": True}}))
    assert "tip_loo_accuracy" in tuned.stats and accuracy(tuned, truth) > zero_shot


def test_frechet_mean_predicts_never_prompted_classes(world):
    clf, feats, truth, root = world
    held_out = ["quintor", "vostrel", "trelloq", "skarnel"]
    observed = [c for c in CLASSES if c not in held_out]
    distances = write_attribute_distances(root / "hamming.csv")
    idx = [i for i, t in enumerate(truth) if t in held_out]
    sub = type(feats)([feats.records[i] for i in idx], feats.feats[idx], [], 0)
    # P must be spread over the neighbours for their Fréchet mean to move off the nearest one: the demo model's own
    # scale (~28) makes P nearly one-hot, so half of it is used (the reference's P is softmax(100·cos) for CLIP).
    frechet = {"distances": distances, "label_space": CLASSES, "scale": clf.model.logit_scale / 2}
    result = clf.predict(sub, observed, "cbd", MethodOptions(descriptors=DESCRIPTORS, methods={"frechet": frechet}))
    hits = sum(p.label == truth[i] for p, i in zip(result.ok, idx)) / len(idx)
    assert hits > 2 / len(CLASSES)  # zero-shot over the prompted classes can never name them
    from vlmcls.adapters import expected_squared_distance

    zero_shot = [p.top_k[0][0] for p in result.ok]
    sub_truth = [truth[i] for i in idx]
    assert expected_squared_distance([p.label for p in result.ok], sub_truth, result.label_metric) < \
        expected_squared_distance(zero_shot, sub_truth, result.label_metric)
