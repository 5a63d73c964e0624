"""--precision int8: the image tower quantised with ONNX Runtime, built once per weights and kept in the cache."""

import sys

import pytest
import torch

import imagegen
from vlmcls import Classifier
from vlmcls.errors import ConfigError, MissingExtraError
from vlmcls.encode.models import resolve_precision

pytest.importorskip("onnxruntime", reason="int8 needs the 'int8' extra: pip install 'vlmcls[int8]'")


def _colour_folder(root, n=12, first=0):
    """n small images of distinct colours (enough spread for the tiny model to rank them differently)."""
    colours = [((37 * i) % 256, (91 * i + 40) % 256, (151 * i + 80) % 256) for i in range(first, first + n)]
    imagegen.make_class_tree(root, {"any": colours})
    return root


def _feats(clf, folder):
    feats = clf.encode_images(folder)
    return {r.id: f for r, f in zip(feats.records, feats.feats)}, feats.encoded


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_int8_features_and_top1_agree_with_fp32(kind, tiny_open_clip, tiny_hf_clip, tmp_path):
    model_id = f"local-dir:{tiny_open_clip}" if kind == "open_clip" else f"hf:{tiny_hf_clip}"
    folder = _colour_folder(tmp_path / "imgs")
    fp32 = Classifier(model_id, device="cpu", cache_dir=tmp_path / "cache")
    int8 = Classifier(model_id, device="cpu", precision="int8", cache_dir=tmp_path / "cache")
    ref, _ = _feats(fp32, folder)
    got, encoded = _feats(int8, folder)
    assert encoded == len(ref)  # int8 features are keyed apart from the fp32 ones already in the store
    cosines = torch.stack([torch.dot(ref[k], got[k]) for k in ref])
    assert cosines.min() > 0.99 and cosines.min() < 1 - 1e-7  # close, and really computed by another engine
    classes = ["red", "green", "blue", "yellow", "purple"]
    assert [p.label for p in int8.classify(folder, classes).predictions] == \
           [p.label for p in fp32.classify(folder, classes).predictions]


def test_int8_tower_is_built_once_and_reused_by_a_later_run(tiny_open_clip, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", precision="int8", cache_dir=cache)
    feats_first, _ = _feats(first, _colour_folder(tmp_path / "a", 4))
    [artefact] = list((cache / "int8").glob("*.onnx"))
    built_at = artefact.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("the int8 tower was exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    second = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", precision="int8", cache_dir=cache)
    feats_second, encoded = _feats(second, _colour_folder(tmp_path / "b", 6, first=4))  # new images: must encode
    assert encoded == 6 and len(feats_second) == 6
    assert artefact.stat().st_mtime_ns == built_at and len(list((cache / "int8").glob("*"))) == 1


def test_int8_without_a_cache_still_runs(tiny_open_clip, tmp_path):
    clf = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", precision="int8", use_cache=False)
    result = clf.classify(_colour_folder(tmp_path / "imgs", 3), ["red", "blue"])
    assert len(result.ok) == 3


def test_int8_on_an_accelerator_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="int8.*CPU only.*--device cpu"):
        resolve_precision("int8", torch.device("cuda"))


def test_int8_without_onnxruntime_names_the_extra(tiny_open_clip, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    clf = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", precision="int8", cache_dir=tmp_path / "cache")
    with pytest.raises(MissingExtraError, match=r"pip install 'vlmcls\[int8\]'"):
        clf.encode_images(_colour_folder(tmp_path / "imgs", 2))


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_export_stand_ins_compute_what_the_tower_computes_and_are_put_back(kind, tiny_open_clip, tiny_hf_clip):
    """Attention and patch embedding are exported as plain matmuls (so ONNX Runtime fuses and quantises them):
    the same outputs as the model's own modules, and the model is left as it was."""
    from vlmcls.encode.models import load_model
    from vlmcls.encode.quantize import _plain_attention

    model_id = f"local-dir:{tiny_open_clip}" if kind == "open_clip" else f"hf:{tiny_hf_clip}"
    backend = load_model(model_id, device="cpu")
    tower = backend._image_tower().eval()
    from PIL import Image

    shape = tuple(backend.preprocess(Image.new("RGB", (40, 30))).shape)  # [3, H, W]
    pixels = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    before = [type(m) for m in tower.modules()]
    with torch.no_grad():
        expected = tower(pixels)
        with _plain_attention(tower, shape):
            swapped = [type(m).__name__ for m in tower.modules()]
            got = tower(pixels)
    assert "_PatchMatMul" in swapped and ("_PlainAttention" in swapped or kind == "hf")  # HF has no nn.MHA
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert [type(m) for m in tower.modules()] == before


def test_the_int8_graph_fuses_attention_and_quantises_every_matmul(tiny_open_clip, tmp_path):
    onnx = pytest.importorskip("onnx")
    clf = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", precision="int8", cache_dir=tmp_path / "cache")
    clf.encode_images(_colour_folder(tmp_path / "imgs", 2))
    [artefact] = list((tmp_path / "cache" / "int8").glob("*.onnx"))
    ops = [node.op_type for node in onnx.load(str(artefact)).graph.node]
    blocks = len(clf.model._load().model.visual.transformer.resblocks)
    assert ops.count("QAttention") == blocks  # one fused int8 attention per block
    assert "Conv" not in ops and "MatMul" not in ops  # no fp32 matmul or convolution left
