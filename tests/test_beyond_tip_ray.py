"""GDA, TransCLIP and TDA on Ray give the single engine's rows (issue 29): global passes over the feature store and
TDA's ordered stream, scored batch by batch by position."""

from __future__ import annotations

import pytest
import torch

import imagegen as ig
from test_ray import CLASSES, assert_same_rows, assert_same_tree
from vlmcls.api import Classifier
from vlmcls.report.evaluate import options_for_spec
from vlmcls.methods import MethodOptions


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond_tip_ray")
    for i in range(14):
        ig.write_noise_jpeg(root / "images" / ("a", "b", "c")[i % 3] / f"{i:02d}.jpg", size=(40 + i, 32), seed=i)
    ig.write_solid(root / "images" / "a" / "red.png", ig.RED)
    ig.write_empty(root / "images" / "a" / "empty.jpg")
    for c, colour in zip(CLASSES, (ig.RED, ig.BLUE, (20, 200, 20), (200, 200, 20))):
        ig.write_solid(root / "support" / c / "0.png", colour)
        ig.write_noise_jpeg(root / "support" / c / "1.jpg", size=(36, 30), seed=len(c))
        ig.write_noise_jpeg(root / "support" / c / "2.jpg", size=(30, 36), seed=7 * len(c))
    return root


@pytest.mark.ray
@pytest.mark.parametrize("spec", ["templates+gda+tda+transclip", "name+transclip", "templates+tda"])
def test_gda_transclip_and_tda_give_the_single_engine_rows_on_ray(ray_local, tiny_open_clip, folders, spec):
    from vlmcls.engines.ray import classify_with_ray

    model_id = f"local-dir:{tiny_open_clip}"
    options = options_for_spec(spec, MethodOptions(explain=True, methods={"gda": {"support": folders / "support"}}))
    single = Classifier(model_id, device="cpu", use_cache=False).classify(folders / "images", CLASSES, method=spec,
                                                                          options=options, top_k=3)
    result = classify_with_ray(model_id, folders / "images", CLASSES, method=spec, options=options, top_k=3,
                               batch_size=4, num_workers=1, feature_store=folders / "store")
    assert_same_rows(result.rows(), single.rows())
    assert_same_tree([r.get("explanation") for r in result.rows()], [r.get("explanation") for r in single.rows()])
    assert torch.allclose(result.probs, single.probs, atol=1e-5)
    for key in ("gda_alpha", "tda_positive_items", "tda_negative_items", "transclip_moved"):
        assert result.stats.get(key) == single.stats.get(key), key
