"""The reference code's rules through a real tiny CLIP: CbD's wordify in every text built from a class name, and
FuDD pair files as released (integer class ids) or by name, with unmatched pairs reported."""

import json

import imagegen
import pytest
import torch

from vlmcls import Classifier
from vlmcls.llm.descriptors import DescriptorSet
from vlmcls.encode.embeddings import l2_normalize
from vlmcls.errors import ConfigError
from vlmcls.methods import MethodOptions

CLASSES = ["Laysan_Albatross", "Sooty_Albatross", "Least_Auklet"]
SPACED = ["Laysan Albatross", "Sooty Albatross", "Least Auklet"]


@pytest.fixture
def run(tiny_open_clip, tmp_path):
    """The classifier, the features of three photos, and the texts the model was asked to encode."""
    root = tmp_path / "birds"
    imagegen.make_class_tree(root, {"Laysan_Albatross": [(220, 20, 20), (200, 40, 30)], "Least_Auklet": [(30, 200, 40)]})
    clf = Classifier(f"local-dir:{tiny_open_clip}", cache_dir=tmp_path / "cache")
    feats = clf.encode_images(root)
    encoded: list[str] = []
    encode = clf.encoder.text_array  # what encode_texts calls too, so both array types are seen
    clf.encoder.text_array = lambda texts, *args: (encoded.extend(texts), encode(texts, *args))[1]
    return clf, feats, encoded


def _unit(clf, texts):
    return l2_normalize(clf.encoder.encode_texts(texts).double())


@pytest.mark.parametrize("method", ["name", "templates", "cbd", "waffle"])
def test_texts_use_spaces_and_outputs_keep_the_class_names(run, method):
    clf, feats, encoded = run
    descriptors = DescriptorSet({"Laysan_Albatross": ["a long hooked bill"], "Sooty_Albatross": ["dark plumage"],
                                 "Least_Auklet": []})
    result = clf.predict(feats, CLASSES, method, MethodOptions(descriptors=descriptors))
    assert encoded and not any("_" in t for t in encoded)
    assert all(p.label in CLASSES for p in result.ok) and result.class_names == CLASSES


def test_cbd_scores_are_the_reference_formula_on_wordified_sentences(run):
    clf, feats, _ = run
    descriptors = {"Laysan_Albatross": ["a long hooked bill", "webbed feet"], "Sooty_Albatross": ["dark plumage"],
                   "Least_Auklet": []}
    result = clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=DescriptorSet(descriptors)))
    sentences = [["Laysan Albatross, which is a long hooked bill", "Laysan Albatross, which has webbed feet"],
                 ["Sooty Albatross, which has dark plumage"], ["Least Auklet"]]
    f = l2_normalize(feats.feats.double())
    expected = torch.stack([(f @ _unit(clf, s).T).mean(1) for s in sentences], dim=1) * clf.model.logit_scale
    torch.testing.assert_close(result.logits.double(), expected, atol=1e-4, rtol=1e-5)


def _pairs_file(tmp_path, pairs):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(pairs))
    return str(path)


RELEASED = {  # FuDD's released form: classes by index into the class list; (1, 2) never described
    "0_1": {"classes": [0, 1], "prompt_pairs": [{"attr_type": "bill", "prompt_pair": ["a pale bill.", "a dark bill."]}]},
    "0_2": {"classes": [2, 0], "prompt_pairs": [{"attr_type": "size", "prompt_pair": ["a tiny bird.", "a big bird."]}]},
}


def test_a_released_pair_file_with_integer_ids_reranks_by_the_reference_rule(run, tmp_path):
    clf, feats, encoded = run
    options = MethodOptions(templates="photo", methods={"fudd": {"k": 3, "base": "templates", "pairs": _pairs_file(tmp_path, RELEASED)}})
    result = clf.predict(feats, CLASSES, "fudd", options)
    assert result.stats["pairs_answered"] == 2 and result.stats["pairs_unmatched"] == 0 and not result.warnings
    reps = [["A pale bill.", "A big bird."], ["A dark bill.", "A photo of a sooty albatross."],
            ["A tiny bird.", "A photo of a least auklet."]]  # capitalize() lowercases the rest, as the reference
    assert "A photo of a sooty albatross." in encoded and "a photo of a Sooty_Albatross." not in encoded
    class_vectors = torch.stack([l2_normalize(_unit(clf, r).mean(0)) for r in reps])  # [C, D]
    expected = clf.model.logit_scale * l2_normalize(feats.feats.double()) @ class_vectors.T
    torch.testing.assert_close(result.logits.double(), expected, atol=1e-4, rtol=1e-5)
    by_name = {"x": {**RELEASED["0_1"], "classes": CLASSES[:2]},
               "y": {**RELEASED["0_2"], "classes": [CLASSES[2], CLASSES[0]]}}
    again = clf.predict(feats, CLASSES, "fudd", MethodOptions(
        templates="photo", methods={"fudd": {"k": 3, "base": "templates", "pairs": _pairs_file(tmp_path, by_name)}}))
    torch.testing.assert_close(again.logits, result.logits)


def test_pairs_that_match_no_class_are_reported(run, tmp_path):
    clf, feats, _ = run
    pairs = {**RELEASED, "3_4": {"classes": [3, 4], "prompt_pairs": []}, "emu_kiwi": {"classes": ["emu", "kiwi"]}}
    options = MethodOptions(templates="photo", methods={"fudd": {"k": 3, "base": "templates", "pairs": _pairs_file(tmp_path, pairs)}})
    result = clf.predict(feats, CLASSES, "fudd", options)
    assert result.stats["pairs_unmatched"] == 2 and result.stats["pairs_answered"] == 2
    [row] = [w for w in result.warnings if w["stage"] == "differential"]
    assert "2 of 4 pairs" in row["message"] and "'3_4'" in row["message"] and "'emu_kiwi'" in row["message"]


@pytest.mark.parametrize("pairs", [{"0_9": {"classes": [0, 9], "prompt_pairs": []}},
                                   {"a_b": {"classes": ["Laysan Albatross", "Least Auklet"], "prompt_pairs": []}}, {}])
def test_a_pair_file_that_matches_nothing_is_an_error(run, tmp_path, pairs):
    clf, feats, _ = run
    options = MethodOptions(methods={"fudd": {"k": 3, "base": "templates", "pairs": _pairs_file(tmp_path, pairs)}})
    with pytest.raises(ConfigError, match="names two of this run's classes.*integer indices 0..2"):
        clf.predict(feats, CLASSES, "fudd", options)


def test_a_malformed_pair_entry_is_named(run, tmp_path):
    clf, feats, _ = run
    pairs = {**RELEASED, "bad": {"classes": [0, 1], "prompt_pairs": [{"attr_type": "x", "prompt_pair": ["only one"]}]}}
    options = MethodOptions(methods={"fudd": {"k": 3, "base": "templates", "pairs": _pairs_file(tmp_path, pairs)}})
    with pytest.raises(ConfigError, match="entry 'bad' is not a FuDD pair"):
        clf.predict(feats, CLASSES, "fudd", options)


def test_after_cbd_a_class_with_no_answered_pair_is_its_unit_template(run, tmp_path):
    clf, feats, _ = run
    only = {"0_1": RELEASED["0_1"]}  # Least_Auklet has no answered pair in the set
    descriptors = DescriptorSet({"Laysan_Albatross": ["a long hooked bill"], "Sooty_Albatross": ["dark plumage"],
                                 "Least_Auklet": ["a stubby bill", "a small body"]})
    options = MethodOptions(descriptors=descriptors, methods={"fudd": {"k": 3, "base": "cbd", "pairs": _pairs_file(tmp_path, only)}})
    result = clf.predict(feats, CLASSES, "fudd", options)
    reps = [["A pale bill.", "A photo of a laysan albatross."], ["A dark bill.", "A photo of a sooty albatross."],
            ["A photo of a least auklet."]]  # not CbD's mean of similarities, whose norm is below 1
    class_vectors = torch.stack([l2_normalize(_unit(clf, r).mean(0)) for r in reps])  # [C, D]
    expected = clf.model.logit_scale * l2_normalize(feats.feats.double()) @ class_vectors.T
    torch.testing.assert_close(result.logits.double(), expected, atol=1e-4, rtol=1e-5)


def test_the_self_cache_uses_the_reference_weight_unless_exp_is_asked(run):
    from vlmcls.adapters import build_unsupervised_cache, unsupervised_cache_logits

    clf, feats, _ = run
    zero_shot = clf.predict(feats, CLASSES, "templates").logits.double()
    image_feats = feats.feats.double()
    cache = build_unsupervised_cache(image_feats, zero_shot, CLASSES, clf.model.logit_scale)
    logits = {}
    for weight in ("reference", "exp"):
        result = clf.predict(feats, CLASSES, "templates+tfup", MethodOptions(methods={"tfup": {"kl_weight": weight}}))
        expected = unsupervised_cache_logits(image_feats, zero_shot, cache, clf.model.logit_scale, kl_weight=weight).logits
        torch.testing.assert_close(result.logits.double(), expected, atol=1e-4, rtol=1e-5)
        logits[weight] = result.logits
    assert not torch.allclose(logits["reference"], logits["exp"])
    assert clf.predict(feats, CLASSES, "templates+tfup", MethodOptions()).logits.equal(logits["reference"])
