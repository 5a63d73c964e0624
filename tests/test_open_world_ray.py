"""The Ray engine gives the same open-world rows as the single engine: unknown decisions, scores and labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmcls import Classifier
from vlmcls.demo import DEMO_DATA_DIR, DEMO_DESCRIPTORS_FILE, DEMO_MODEL_ID
from vlmcls.demo.world import DEMO_CLASSES
from vlmcls.methods import MethodOptions
from vlmcls.methods.openset import load_vocabulary

pytestmark = pytest.mark.ray


def test_ray_gives_the_same_unknown_decisions_and_labels(ray_local, tmp_path):
    from vlmcls.engines.ray import classify_with_ray

    folder = tmp_path / "images"
    for sub in ("images/zorblax", "images/gleebis", "none_of_these"):  # in-list images and none-of-these in one folder
        src = DEMO_DATA_DIR / sub
        (folder / Path(sub).name).mkdir(parents=True)
        for path in sorted(src.glob("*.png"))[:8]:
            (folder / Path(sub).name / path.name).write_bytes(path.read_bytes())
    words = tmp_path / "words.txt"
    words.write_text("\n".join(load_vocabulary()[::100][:150]))
    options = MethodOptions(methods={"cbd": {"descriptors": str(DEMO_DESCRIPTORS_FILE)},
                                     "unknown": {"reject": True, "multi_label": True, "vocabulary": str(words),
                                                 "recall": 0.8}})  # 16 images: a 5 % cut would keep all
    classes = list(DEMO_CLASSES)
    single = Classifier(DEMO_MODEL_ID, cache_dir=tmp_path / "cache").classify(folder, classes, method="cbd",
                                                                               options=options, top_k=3)
    ray = classify_with_ray(DEMO_MODEL_ID, folder, classes, method="cbd", options=options, top_k=3, batch_size=4,
                            num_workers=1, cache_dir=tmp_path / "cache")
    assert any(p.label == "unknown" for p in single.ok)
    assert len(ray.predictions) == len(single.predictions)
    for a, b in zip(ray.predictions, single.predictions):  # the same rows, to float32 rounding (batches differ)
        a, b = a.to_dict(), b.to_dict()
        assert (a["path"], a["label"], a["true_label"]) == (b["path"], b["label"], b["true_label"])
        assert a["unknown_score"] == pytest.approx(b["unknown_score"], abs=1e-5)
        assert [x["label"] for x in a["labels"]] == [x["label"] for x in b["labels"]]
        assert [x["score"] for x in a["labels"]] == pytest.approx([x["score"] for x in b["labels"]], abs=1e-5)
    assert ray.stats["unknown_threshold"] == single.stats["unknown_threshold"]
