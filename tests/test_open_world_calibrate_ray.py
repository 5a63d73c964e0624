"""The Ray engine gives the same calibrated probabilities as the single engine (tip.calibrate's temperature)."""

from __future__ import annotations

import pytest

from vlmcls import Classifier
from vlmcls.demo import DEMO_DATA_DIR, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_ID
from vlmcls.demo.world import DEMO_CLASSES
from vlmcls.methods import MethodOptions

pytestmark = pytest.mark.ray


def test_ray_gives_the_same_calibrated_probabilities(ray_local, tmp_path):
    from vlmcls.demo.render import render_dataset
    from vlmcls.engines.ray import classify_with_ray

    support = tmp_path / "support"
    render_dataset(support, DEMO_CLASSES, 2, seed=7)
    options = MethodOptions(methods={"cbd": {"descriptors": str(DEMO_DESCRIPTORS_FILE)},
                                     "tip": {"support": str(support), "calibrate": True}})
    classes, folder = list(DEMO_CLASSES), DEMO_DATA_DIR / "two_objects"
    single = Classifier(DEMO_MODEL_ID, cache_dir=tmp_path / "cache").classify(folder, classes, method="cbd+tip",
                                                                               options=options, top_k=3)
    ray = classify_with_ray(DEMO_MODEL_ID, folder, classes, method="cbd+tip", options=options, top_k=3,
                            batch_size=8, num_workers=1, cache_dir=tmp_path / "cache")
    assert single.stats["calibration_temperature"] == ray.stats["calibration_temperature"] != 1.0
    for a, b in zip(ray.predictions, single.predictions):
        assert [c for c, _ in a.top_k] == [c for c, _ in b.top_k]
        assert [p for _, p in a.top_k] == pytest.approx([p for _, p in b.top_k], abs=1e-5)
