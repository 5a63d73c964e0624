from pathlib import Path

import pytest
import torch

from vlmcls.errors import ConfigError, ModelLoadError
from vlmcls.encode.models import load_model, resolve_device, resolve_precision

TEXTS = [
    "zorblax",
    "a photo of a zorblax.",
    "zorblax, which has a red colour",
    "quimble, which is a small round object with stripes all over its surface and a thin dark outline",
    "itap of a wextal!",  # '!' is token id 0, the same as padding: must not confuse the trimming
    "a photo of the large " + "very " * 30 + "big quimble.",
    "?",
]


def test_fast_text_encoding_equals_open_clip_encode_text(tiny_open_clip):
    model = load_model(f"local-dir:{tiny_open_clip}", device="cpu")
    assert model._text is not None, "the tiny CLIP has a causal text tower: trimming must be used"
    fast = model.encode_texts(TEXTS, batch_size=3)  # [T, D], length-sorted small batches
    with torch.inference_mode():
        reference = model.model.encode_text(model.tokenizer(TEXTS))  # full 77-token pass
    assert fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)


def test_hf_text_encoding_in_length_sorted_batches_matches_one_batch(tiny_hf_clip):
    model = load_model(f"hf:{tiny_hf_clip}", device="cpu")
    sorted_batches = model.encode_texts(TEXTS, batch_size=2)
    with torch.inference_mode():
        enc = model.tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        out = model.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    reference = out if isinstance(out, torch.Tensor) else out.pooler_output
    torch.testing.assert_close(sorted_batches, reference, atol=1e-5, rtol=0)


def test_backends_encode_images_to_the_projection_width(tiny_open_clip, tiny_hf_clip):
    for model_id in (f"local-dir:{tiny_open_clip}", f"hf:{tiny_hf_clip}"):
        model = load_model(model_id, device="cpu")
        from PIL import Image

        pixels = torch.stack([model.preprocess(Image.new("RGB", (50, 40), c)) for c in ("red", "blue")])
        feats = model.encode_images(pixels)
        assert feats.shape == (2, 32) and feats.dtype == torch.float32
        assert model.score_rule == "softmax" and model.logit_scale == pytest.approx(1 / 0.07, rel=1e-3)


def test_uint8_hand_over_gives_bit_identical_pixels_and_features(tiny_open_clip, tiny_hf_clip, tmp_path):
    """The GPU path ships uint8 pixels and normalises on the device: same pixels, same features, same store."""
    import numpy as np
    from PIL import Image

    from vlmcls.encode.embeddings import Encoder
    from vlmcls.encode.images import list_images

    model = load_model(f"local-dir:{tiny_open_clip}", device="cpu")
    to_u8 = model.uint8_preprocess()
    assert to_u8 is not None
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 90), (77, 31), (64, 64))]
    u8 = torch.stack([to_u8(im) for im in images])
    assert u8.dtype == torch.uint8
    assert torch.equal(model._split[1](u8), torch.stack([model.preprocess(im) for im in images]))
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
    records = list_images(tmp_path)
    plain = Encoder(model, uint8_transfer=False).encode_images(records, batch_size=2)
    handed = Encoder(model, uint8_transfer=True).encode_images(records, batch_size=2, worker_type="process",
                                                               num_workers=2)
    assert torch.equal(plain.feats, handed.feats)
    # transformers' image processors are not torchvision pipelines: they keep the float path
    assert load_model(f"hf:{tiny_hf_clip}", device="cpu").uint8_preprocess() is None


def test_a_preprocess_that_is_not_pil_then_normalise_is_kept_whole():
    from torchvision import transforms as T

    from vlmcls.encode.models import _split_torchvision_preprocess

    flip_after = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize([0.5] * 3, [0.2] * 3), T.RandomHorizontalFlip(1.0)])
    tensor_steps = T.Compose([T.ToTensor(), T.Resize(8, antialias=True), T.Normalize([0.5] * 3, [0.2] * 3)])
    assert _split_torchvision_preprocess(flip_after) is None
    assert _split_torchvision_preprocess(tensor_steps) is None
    assert _split_torchvision_preprocess(T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(),
                                                    T.Normalize([0.5] * 3, [0.2] * 3)])) is not None


def test_weights_fingerprint_follows_file_content(tmp_path):
    from tiny_models import make_open_clip_dir

    a = load_model(f"local-dir:{make_open_clip_dir(tmp_path / 'a', seed=1)}", device="cpu")
    b = load_model(f"local-dir:{make_open_clip_dir(tmp_path / 'b', seed=2)}", device="cpu")
    a2 = load_model(f"local-dir:{make_open_clip_dir(tmp_path / 'a2', seed=1)}", device="cpu")
    assert a.weights_fingerprint != b.weights_fingerprint
    assert a.weights_fingerprint == a2.weights_fingerprint  # same bytes elsewhere: same features, shareable


def test_a_later_load_with_a_store_does_not_reread_unchanged_weights(tmp_path, monkeypatch):
    import vlmcls.encode.store as cache_module
    from tiny_models import make_open_clip_dir
    from vlmcls.encode.store import Store, clear_digest_memo

    folder = make_open_clip_dir(tmp_path / "m", seed=3)
    store = Store(tmp_path / "cache")
    real, hashed = cache_module.file_digest, []
    monkeypatch.setattr(cache_module, "file_digest", lambda p: hashed.append(Path(p).name) or real(p))

    def load():  # as a new process would: nothing memoised in memory
        clear_digest_memo()
        return load_model(f"local-dir:{folder}", device="cpu", store=store)

    first = load()
    assert sorted(hashed) == ["open_clip_config.json", "open_clip_model.safetensors"]
    hashed.clear()
    assert load().weights_fingerprint == first.weights_fingerprint and hashed == []
    make_open_clip_dir(folder, seed=4)  # new weights under the same names
    assert load().weights_fingerprint != first.weights_fingerprint
    assert sorted(hashed) == ["open_clip_config.json", "open_clip_model.safetensors"]


def test_unreachable_weights_name_the_id_and_how_to_use_a_local_copy():
    with pytest.raises(ModelLoadError) as info:
        load_model("hf:nobody-here/no-such-model", device="cpu")
    message = str(info.value)
    assert "hf:nobody-here/no-such-model" in message and "local-dir:" in message and "hf:/path/folder" in message


@pytest.mark.parametrize("device", ["gpu", "cuda:zero", "tpu"])
def test_bad_device_is_a_config_error(device):
    with pytest.raises(ConfigError, match="device"):
        resolve_device(device)


def test_cuda_asked_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device("cuda:0")


def test_precision_is_fp32_on_cpu_and_checked():
    assert resolve_precision("bf16", torch.device("cpu")) == torch.float32
    with pytest.raises(ConfigError, match="unknown precision 'int4'. Valid: fp32, fp16, bf16, int8"):
        resolve_precision("int4", torch.device("cpu"))
