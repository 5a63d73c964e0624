"""The Ray engine over hf-dataset:DIR (one task per Parquet row group, or per rows of save_to_disk's Arrow files)
gives the single engine's rows, and the folder's labels."""

from __future__ import annotations

import pytest
import torch

import shardgen
from test_ray import assert_same_rows
from vlmcls.api import Classifier
from vlmcls.engines.ray import classify_with_ray
from vlmcls.methods import MethodOptions

FOLDER = shardgen.DEMO / "images"


@pytest.mark.ray
def test_ray_over_a_local_hf_dataset_equals_the_single_engine_and_the_folder(ray_local, tmp_path):
    shardgen.write_hf_parquet(tmp_path / "parquet", files=2, row_group=8)
    shardgen.demo_as_hf_dataset().save_to_disk(str(tmp_path / "saved"))
    classes = shardgen.demo_classes()
    options = MethodOptions(descriptors=str(shardgen.DEMO / "descriptors.json"))
    clf = Classifier(shardgen.DEMO_MODEL, device="cpu", use_cache=False)
    folder = clf.classify(FOLDER, classes, method="cbd", options=options, top_k=3)
    for source in (f"hf-dataset:{tmp_path / 'parquet'}", f"hf-dataset:{tmp_path / 'saved'}"):
        single = clf.classify(source, classes, method="cbd", options=options, top_k=3)
        result = classify_with_ray(shardgen.DEMO_MODEL, source, classes, method="cbd", options=options, top_k=3,
                                   batch_size=8, num_workers=1, feature_store=str(tmp_path / "store"))
        assert len(result.predictions) == 48 and not result.errors
        assert_same_rows(result.rows(), single.rows())
        assert torch.allclose(result.probs, single.probs, atol=1e-5)
        # the folder's images, labels and truth, row by row
        assert [r["label"] for r in result.rows()] == [r["label"] for r in folder.rows()]
        assert [r["true_label"] for r in result.rows()] == [r["true_label"] for r in folder.rows()]
        assert torch.allclose(result.probs, folder.probs, atol=1e-5)


@pytest.mark.ray
def test_ray_over_a_webdataset_hf_dataset_reads_its_shards_like_wds(ray_local, tmp_path):
    samples = shardgen.demo_as_jpeg_folder(tmp_path / "folder")
    wds = shardgen.write_clip_benchmark(tmp_path / "wds", samples, shards=4)
    source = f"hf-dataset:{wds}"
    classes = shardgen.demo_classes()
    single = Classifier(shardgen.DEMO_MODEL, device="cpu", use_cache=False).classify(source, classes, top_k=3)
    result = classify_with_ray(shardgen.DEMO_MODEL, source, classes, top_k=3, batch_size=8, num_workers=1,
                               feature_store=str(tmp_path / "store"))
    assert len(result.predictions) == 48 and not result.errors
    assert_same_rows(result.rows(), single.rows())
    assert [r["true_label"] for r in result.rows()] == [label for label, _ in samples]
