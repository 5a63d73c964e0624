"""JPEG decoding on the model's device (issue 15): nvJPEG on CUDA; the same code runs on CPU through torchvision's
decoder, which is how it is tested here (CI has no GPU). What goes to the device, what falls back to PIL, and that
the pixels and features agree with the PIL path."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import imagegen
from vlmcls import Classifier
from vlmcls.encode.decoding import decode_image
from vlmcls.encode.device_decode import DeviceJpegDecoder, apply_orientation
from vlmcls.encode.models import _PilToUint8


def _photo(size=(320, 240), seed=0) -> Image.Image:
    """Smooth, asymmetric content (gradients and a block), so a wrong orientation or crop shows."""
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    pixels = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h) + rng.integers(0, 60)], -1)
    pixels[: h // 3, : w // 4] = (250, 20, 20)
    return Image.fromarray(pixels.astype(np.uint8))


def _jpeg(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **save)
    return buffer.getvalue()


def _with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(image, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_turns_pixels_as_pil_exif_transpose_does(orientation):
    image = _photo((7, 5))
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))  # [H, W, 3]
    got = apply_orientation(torch.from_numpy(np.array(_photo((7, 5)))).permute(2, 0, 1), orientation)
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def _pil_path(steps, data: bytes) -> torch.Tensor:
    return _PilToUint8(steps)(decode_image(data)).float()


def _model_steps(tiny_open_clip):
    clf = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", cache_dir=None)
    return clf.model.uint8_preprocess().steps


def test_device_pixels_match_the_pil_path_for_baseline_grey_and_rotated_jpegs(tiny_open_clip):
    steps = _model_steps(tiny_open_clip)
    decoder = DeviceJpegDecoder(steps, "cpu")
    files = {
        "baseline": _jpeg(_photo()),
        "grey": _jpeg(_photo(seed=1).convert("L")),
        "rotated": _with_orientation(_photo((320, 200), seed=2), 6),
        "mirrored": _with_orientation(_photo((300, 240), seed=3), 2),
    }
    orientations = {name: decoder.accepts(data) for name, data in files.items()}
    assert orientations == {"baseline": 1, "grey": 1, "rotated": 6, "mirrored": 2}
    decoded = decoder.decode([(data, orientations[name]) for name, data in files.items()])
    for (name, data), pixels in zip(files.items(), decoded):
        expected = _pil_path(steps, data)
        assert pixels.dtype == torch.uint8 and pixels.shape == expected.shape, name
        assert (pixels.float() - expected).abs().mean() < 3, name  # resize kernels differ a little, nothing more
    upright = decoder.decode([(files["rotated"], 1)])[0]  # the orientation ignored: clearly another picture
    assert (upright.float() - _pil_path(steps, files["rotated"])).abs().mean() > 20


def test_files_the_device_decoder_cannot_take_are_left_to_pil(tiny_open_clip, tmp_path):
    decoder = DeviceJpegDecoder(_model_steps(tiny_open_clip), "cpu", max_pixels=100_000)
    cmyk = imagegen.write_cmyk_jpeg(tmp_path / "cmyk.jpg").read_bytes()
    png = io.BytesIO()
    _photo().save(png, "PNG")
    assert decoder.accepts(_jpeg(_photo(), progressive=True)) is None
    assert decoder.accepts(cmyk) is None
    assert decoder.accepts(png.getvalue()) is None
    assert decoder.accepts(b"\xff\xd8\xff\xe0 not really") is None  # damaged header: the PIL path's error row
    assert decoder.accepts(_jpeg(_photo((400, 300)))) is None  # above max_pixels: the PIL path refuses it
    assert decoder.accepts(_jpeg(_photo((300, 300)))) == 1


def test_classify_with_device_decoding_agrees_with_pil_and_keeps_every_error_row(tiny_open_clip, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"photo{i}.jpg").write_bytes(_jpeg(_photo(seed=i)))
    (folder / "rotated.jpg").write_bytes(_with_orientation(_photo((320, 200), seed=7), 8))
    (folder / "grey.jpg").write_bytes(_jpeg(_photo(seed=8).convert("L")))
    (folder / "progressive.jpg").write_bytes(_jpeg(_photo(seed=9), progressive=True))
    imagegen.write_cmyk_jpeg(folder / "cmyk.jpg")
    _photo(seed=10).save(folder / "lossless.png")
    whole = _jpeg(_photo(seed=11))
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])  # header fine: the device decoder gets it
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)

    on_device: list[int] = []
    original = DeviceJpegDecoder.decode

    def counting(self, items):
        on_device.append(len(items))
        return original(self, items)

    monkeypatch.setattr(DeviceJpegDecoder, "decode", counting)
    classes = ["red", "green", "blue"]
    pil = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", cache_dir=tmp_path / "pil", batch_size=4)
    pil_feats = pil.encode_images(folder)
    assert on_device == []  # on CPU, device decoding is off unless asked for
    dev = Classifier(f"local-dir:{tiny_open_clip}", device="cpu", cache_dir=tmp_path / "dev", batch_size=4)
    dev.encoder.device_decoding = True
    dev_feats = dev.encode_images(folder)
    assert sum(on_device) == 9  # 6 photos, rotated, grey, truncated; not progressive, CMYK, PNG or garbage

    assert [r.id for r in dev_feats.records] == [r.id for r in pil_feats.records]
    assert {r.id: reason for r, reason in dev_feats.errors} == {r.id: reason for r, reason in pil_feats.errors}
    assert {Path(r.id).name for r, _ in dev_feats.errors} == {"truncated.jpg", "garbage.jpg"}
    cosines = {Path(r.id).name: float(torch.dot(a, b)) for r, a, b in zip(pil_feats.records, pil_feats.feats, dev_feats.feats)}
    assert min(cosines.values()) > 0.99
    for same in ("progressive.jpg", "cmyk.jpg", "lossless.png"):  # the PIL path itself
        assert cosines[same] == pytest.approx(1.0, abs=1e-6)
    assert [p.label for p in dev.classify(folder, classes).predictions] == \
           [p.label for p in pil.classify(folder, classes).predictions]
