"""The Ray engine over wds: shards (one task per shard) gives the single engine's rows."""

from __future__ import annotations

import pytest
import torch

import shardgen
from test_ray import assert_same_rows
from vlmcls.api import Classifier
from vlmcls.engines.ray import classify_with_ray

CLASSES = [line.strip() for line in (shardgen.DEMO / "classes.txt").read_text().splitlines() if line.strip()]


@pytest.mark.ray
def test_ray_over_four_shards_and_a_missing_one_equals_the_single_engine(ray_local, tmp_path):
    samples = shardgen.demo_as_jpeg_folder(tmp_path / "folder")
    shardgen.write_clip_benchmark(tmp_path / "wds", samples, shards=4)
    source = f"wds:{tmp_path}/wds/test/{{0..4}}.tar"  # 4.tar is missing: one error row
    single = Classifier(shardgen.DEMO_MODEL, device="cpu", use_cache=False).classify(source, CLASSES, top_k=3)
    result = classify_with_ray(shardgen.DEMO_MODEL, source, CLASSES, top_k=3, batch_size=8, num_workers=1)
    assert len(result.predictions) == 49 and len(result.errors) == 1
    assert result.errors[0].error.startswith("shard not found")
    assert_same_rows(result.rows(), single.rows())
    assert torch.allclose(result.probs, single.probs, atol=1e-5)
    assert [r["true_label"] for r in result.rows()[:48]] == [label for label, _ in samples]
