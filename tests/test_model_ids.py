import pytest

from vlmcls.errors import ConfigError
from vlmcls.encode.model_ids import parse_model_id


@pytest.mark.parametrize(
    "model_id, backend, source, name, pretrained",
    [
        ("ViT-B-32", "open_clip", "builtin", "ViT-B-32", None),
        ("ViT-B-32:openai", "open_clip", "builtin", "ViT-B-32", "openai"),
        ("  ViT-B-32:laion2b_s34b_b79k ", "open_clip", "builtin", "ViT-B-32", "laion2b_s34b_b79k"),
        ("ViT-B/32:openai", "open_clip", "builtin", "ViT-B-32", "openai"),
        ("ViT-L-14-quickgelu:dfn2b", "open_clip", "builtin", "ViT-L-14-quickgelu", "dfn2b"),
        ("RN50:openai", "open_clip", "builtin", "RN50", "openai"),
        ("hf-hub:timm/ViT-B-16-SigLIP", "open_clip", "hf-hub", "timm/ViT-B-16-SigLIP", None),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip", "hf-hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None),
        ("hf:openai/clip-vit-base-patch32", "hf", "hub", "openai/clip-vit-base-patch32", None),
        ("transformers:google/siglip-base-patch16-224", "hf", "hub", "google/siglip-base-patch16-224", None),
        ("openai/clip-vit-large-patch14", "hf", "hub", "openai/clip-vit-large-patch14", None),
        ("google/siglip-so400m-patch14-384", "hf", "hub", "google/siglip-so400m-patch14-384", None),
    ],
)
def test_parse_valid_ids(model_id, backend, source, name, pretrained):
    spec = parse_model_id(model_id)
    assert (spec.backend, spec.source, spec.name, spec.pretrained) == (backend, source, name, pretrained)


@pytest.mark.parametrize(
    "model_id, fragment",
    [
        ("", "empty model id"),
        ("ViT-B-32:", "names no pretrained tag"),
        ("ViT-B-23:openai", "Did you mean"),
        ("hf-hub:", "expected 'hf-hub:org/repo'"),
        ("hf-hub:just-a-name", "expected 'hf-hub:org/repo'"),
        ("hf:", "names nothing"),
        ("hf:a/b/c", "expected 'hf:org/repo'"),
        ("local-dir:", "names no folder"),
        ("local-dir:/no/such/folder", "no open_clip_config.json"),
        ("ViT-B-32:/no/such/ckpt.pt", "does not exist"),
        ("/no/such/folder", "does not exist"),
        ("resnet", "unknown model id 'resnet'"),
    ],
)
def test_parse_invalid_ids_say_what_is_wrong(model_id, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        parse_model_id(model_id)
    assert fragment in str(info.value)


def test_local_folders_are_detected_by_their_files(tiny_open_clip, tiny_hf_clip):
    assert parse_model_id(f"local-dir:{tiny_open_clip}").backend == "open_clip"
    assert parse_model_id(str(tiny_open_clip)).source == "local-dir"
    hf = parse_model_id(str(tiny_hf_clip))
    assert (hf.backend, hf.source) == ("hf", "folder")
    assert parse_model_id(f"hf:{tiny_hf_clip}").canonical == f"hf:{tiny_hf_clip}"
    with pytest.raises(ConfigError, match="local-dir"):
        parse_model_id(f"hf:{tiny_open_clip}")


def test_checkpoint_path_is_accepted(tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"x")
    spec = parse_model_id(f"ViT-B-32:{ckpt}")
    assert spec.pretrained == str(ckpt) and spec.canonical == f"ViT-B-32:{ckpt}"
