"""Issue 15 benchmark: classify on 12-megapixel phone photos vs the model alone and the raw open_clip loop.

    python bench/bench_photos.py [--images 96] [--small 16] [--raw-images 32] [--repeats 3] [--work DIR]

Photo-like 4032×3024 JPEGs (q 90, 3-4 MB each: smooth gradients, large shapes, sensor grain) are generated at bench
time (kept in ``--work`` for a later run). One random-init, seeded ViT-B/32 serves every measurement, loaded once,
outside every timed region. The model's forward-only rate is the baseline: warmed, then ``--repeats`` rounds
alternate it with the compared runs, and it runs once more at the end, so every run has a baseline before and after
it (``_timing.alternate``); medians are printed:

- the model's forward-only rate (random pixels, no decoding),
- ``classify``'s steady rate: the marginal rate between a ``--small``-image and an ``--images``-image run (each on
  an empty store), so start-up costs cancel; with reduced-size decoding (the default) and with full decoding,
- the raw open_clip loop (PIL open + convert + the model's transform + encode_image, full decode).

Then the quality of reduced-size decoding: feature cosines against full decoding per margin (ViT-B/32, the photos),
and label agreement on the demo world rendered at 12 MP with the shipped demo model.

Then HEIC (``--heic N``, 0 skips): the photos re-encoded as iPhone-like HEICs (a grid of 512-px tiles plus a
320×240 thumbnail, x265 preset ultrafast so that making them takes minutes, not an hour): decode time of the
thumbnail (``--decode heic_thumbnails=true``) vs every pixel (the default), ``classify``'s steady rate on them with each (forward-only rate measured around it), the
ViT-B/32 cosine thumbnail vs full, and label agreement on the 12 MP demo world as HEICs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import alternate  # noqa: E402
from bench_classify import LABELS, forward_limit, raw_open_clip_loop  # noqa: E402

PHONE_SIZE = (4032, 3024)
DEMO_MODEL = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo_model"


_GRAIN_TILE: list[np.ndarray] = []


def _grain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Sensor-like noise (sigma 8): one 509×509 random tile per process, shifted per image (drawing 36 M normal
    values per photo took most of the generation time)."""
    if not _GRAIN_TILE:
        _GRAIN_TILE.append(np.random.default_rng(12345).normal(0, 8, (509, 509, 3)).astype(np.int16))
    tile = np.roll(_GRAIN_TILE[0], tuple(rng.integers(0, 509, 2)), axis=(0, 1))
    reps = (-(-shape[0] // 509), -(-shape[1] // 509), 1)
    return np.tile(tile, reps)[: shape[0], : shape[1]]


def _make_phone_jpeg(args: tuple[Path, int]) -> Path:
    """One 12 MP photo-like JPEG: a lit gradient, a dozen large soft-edged shapes, fine texture and sensor grain."""
    path, seed = args
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    width, height = PHONE_SIZE
    small = np.zeros((height // 8, width // 8, 3), np.float32)  # composed at 1/8, then upscaled: smooth like optics
    yy, xx = np.mgrid[0 : small.shape[0], 0 : small.shape[1]].astype(np.float32)
    small += rng.uniform(40, 200, 3) + xx[..., None] * rng.uniform(-0.2, 0.2, 3) + yy[..., None] * rng.uniform(-0.2, 0.2, 3)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, small.shape[1]), rng.uniform(0, small.shape[0]), rng.uniform(15, 120)
        small[(xx - cx) ** 2 + ((yy - cy) * rng.uniform(0.5, 2)) ** 2 < r * r] = rng.uniform(0, 255, 3)
    big = np.asarray(Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize(PHONE_SIZE, Image.BICUBIC),
                     dtype=np.int16)
    big += _grain(rng, big.shape)  # what makes a phone JPEG 3-4 MB
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def make_phone_jpegs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_make_phone_jpeg, [(folder / f"IMG_{i:04d}.jpg", i) for i in range(n)]))


def _render_demo_photo(args: tuple[Path, str, int]) -> Path:
    """One demo-world image (64 px) drawn at 12 MP: upscaled smoothly to 3024×3024, widened to 4032 with the mirrored
    background (so the model's centre crop sees the whole square picture), grain added, saved as a q 90 JPEG."""
    from vlmcls.demo.render import image_rng, render_image
    from vlmcls.demo.world import class_attributes

    path, class_name, index = args
    if path.exists():
        return path
    small = render_image(class_attributes(class_name), image_rng(7, class_name, index))
    side = PHONE_SIZE[1]
    square = np.asarray(small.resize((side, side), Image.BICUBIC), dtype=np.int16)
    pad = (PHONE_SIZE[0] - side) // 2
    big = np.pad(square, ((0, 0), (pad, PHONE_SIZE[0] - side - pad), (0, 0)), mode="reflect")
    big += _grain(np.random.default_rng(index), big.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def _make_heic(args: tuple[Path, Path]) -> Path:
    """An iPhone-like HEIC of a JPEG's pixels: 512-px grid tiles and a 320×240 thumbnail."""
    import pillow_heif

    source, path = args
    if path.exists():
        return path
    pillow_heif.register_heif_opener()
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").save(path, format="HEIF", quality=75, tile_size=512, thumbnails=[320],
                                  enc_params={"preset": "ultrafast"})
    return path


def make_heics(sources: list[Path], folder: Path) -> list[Path]:
    jobs = [(p, folder / p.relative_to(p.parents[1]).with_suffix(".heic")) for p in sources]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_make_heic, jobs))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--small", type=int, default=16, help="the smaller run of the marginal rate")
    parser.add_argument("--raw-images", type=int, default=32, help="images for the raw loop (it is slow)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-per-class", type=int, default=8, help="12 MP demo-world images per class")
    parser.add_argument("--work", type=Path, default=None, help="keep the generated photos here")
    parser.add_argument("--no-full", action="store_true", help="skip classify with full decoding in the rounds")
    parser.add_argument("--heic", type=int, default=32, help="HEIC photos for the HEIC section (0: skip it)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads for every run (on a busy shared box 2 threads spin-wait: use 1)")
    args = parser.parse_args()
    from _machine import print_load, print_machine

    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from vlmcls import Classifier
    from vlmcls.encode.models import load_model

    work = args.work or Path(tempfile.mkdtemp(prefix="vlmcls-photos-"))
    start = time.perf_counter()
    paths = make_phone_jpegs(work / "phone", args.images)
    mb = statistics.mean(p.stat().st_size for p in paths) / 1e6
    print(f"{len(paths)} JPEGs {PHONE_SIZE[0]}x{PHONE_SIZE[1]} q90, mean {mb:.1f} MB (made in "
          f"{time.perf_counter() - start:.0f} s); batch {args.batch_size}; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs", flush=True)
    torch.manual_seed(0)
    backend = load_model("ViT-B-32", device="cpu")
    caches = iter(range(10**6))

    def classify(n: int, reduced: bool) -> float:
        clf = Classifier(backend, cache_dir=work / f"cache-{os.getpid()}-{next(caches)}", batch_size=args.batch_size)
        clf.encoder.reduced_decoding = reduced
        t, result = timed(lambda: clf.classify([str(p) for p in paths[:n]], LABELS, method="templates",
                                               templates="photo"))
        assert result.stats["encoded"] == n, result.stats
        return t

    raw = paths[: args.raw_images]
    raw_open_clip_loop(backend.model, backend.preprocess, raw[:2], 2, backend.device, backend.dtype)  # warm-up
    classify(2, True)  # warm-up: text features cached per store, so each run below still encodes its texts
    measured = {}
    for mode, reduced in (("reduced", True), ("full", False))[: 1 if args.no_full else 2]:
        measured[f"{mode} small"] = lambda reduced=reduced: classify(args.small, reduced)
        measured[f"{mode} big"] = lambda reduced=reduced: classify(args.images, reduced)
    measured["raw"] = lambda: len(raw) / timed(lambda: raw_open_clip_loop(
        backend.model, backend.preprocess, raw, args.batch_size, backend.device, backend.dtype))[0]
    rounds = alternate(lambda: forward_limit(backend, args.batch_size, seconds=4.0), measured, args.repeats,
                       name="forward img/s")
    runs: dict[str, list[float]] = {"forward": rounds.values(), "raw": rounds.values("raw")}
    for mode in ("reduced", "full")[: 1 if args.no_full else 2]:
        runs[mode] = [(args.images - args.small) / (big - small)
                      for small, big in zip(rounds.values(f"{mode} small"), rounds.values(f"{mode} big"))]
    rate = {k: statistics.median(v) for k, v in runs.items() if v}
    print(f"\n{rounds.method()}; forward-only drift max/min {rounds.drift():.2f} (this box is shared: compare "
          "ratios, not rates)")
    print(f"model forward only          {rate['forward']:7.2f} img/s  runs {['%.2f' % v for v in runs['forward']]}")
    print(f"classify, reduced decoding  {rate['reduced']:7.2f} img/s steady  "
          f"= {rate['reduced'] / rate['forward']:.2f}x the model (target >= 0.8), "
          f"{rate['reduced'] / rate['raw']:.2f}x the raw loop (target >= 3)  runs {['%.2f' % v for v in runs['reduced']]}")
    if "full" in runs:
        print(f"classify, full decoding     {rate['full']:7.2f} img/s steady  = {rate['full'] / rate['forward']:.2f}x the model")
    print(f"raw open_clip loop          {rate['raw']:7.2f} img/s ({len(raw)} images, full decode)", flush=True)

    margins_section(backend, paths[: min(16, len(paths))])
    demo_paths = demo_agreement(work, args.demo_per_class)
    if args.heic:
        heic_section(backend, work, paths[: args.heic], demo_paths, args.batch_size, args.repeats)
    print_load("end")


def margins_section(backend, paths) -> None:
    """Feature cosine to full decoding and decode time, per margin (min short side = margin × 224)."""
    from vlmcls.encode.embeddings import l2_normalize
    from vlmcls.encode.images import load_image

    def feats(min_side):
        pixels = torch.stack([backend.preprocess(load_image(p, min_side=min_side)) for p in paths])
        return l2_normalize(backend.encode_images(pixels))

    full = feats(None)
    print(f"\nreduced-size decoding vs full, ViT-B/32 on {len(paths)} photos:")
    for margin in (1.0, 1.5, 2.0, 3.0):
        side = int(224 * margin)
        t, _ = timed(lambda: [load_image(p, min_side=side) for p in paths])
        cos = (feats(side) * full).sum(dim=1)
        print(f"  margin {margin:3.1f} (short side >= {side:4d}, decoded at {min(load_image(paths[0], min_side=side).size)}"
              f" px): min cosine {cos.min():.5f}, mean {cos.mean():.5f}; decode {1000 * t / len(paths):5.1f} ms/img")
    t, _ = timed(lambda: [load_image(p) for p in paths])
    print(f"  full decode: {1000 * t / len(paths):5.1f} ms/img", flush=True)


def demo_agreement(work: Path, per_class: int) -> None:
    """Labels of reduced-size vs full decoding on the demo world drawn at 12 MP, with the shipped demo model."""
    from vlmcls import Classifier
    from vlmcls.demo.world import DEMO_CLASSES

    jobs = [(work / "demo12mp" / name / f"{i}.jpg", name, i) for name in DEMO_CLASSES for i in range(per_class)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        paths = list(pool.map(_render_demo_photo, jobs))
    out = {}
    for reduced in (True, False):
        clf = Classifier(f"local-dir:{DEMO_MODEL}", device="cpu", cache_dir=work / f"demo-cache-{os.getpid()}-{reduced}")
        clf.encoder.reduced_decoding = reduced
        t, feats = timed(lambda: clf.encode_images([str(p) for p in paths]))
        result = clf.predict(feats, list(DEMO_CLASSES))
        out[reduced] = (feats.feats, [p.label for p in result.predictions], t)
    agree = sum(a == b for a, b in zip(out[True][1], out[False][1])) / len(paths)
    correct = {r: sum(label == p.parent.name for label, p in zip(out[r][1], paths)) / len(paths) for r in out}
    cos = (out[True][0] * out[False][0]).sum(dim=1)
    print(f"\ndemo world at 12 MP, {len(paths)} images, demo model: label agreement reduced vs full {agree:.2%} "
          f"(target >= 99 %); min feature cosine {cos.min():.5f} (target >= 0.99); accuracy reduced "
          f"{correct[True]:.2%}, full {correct[False]:.2%}; encode time reduced {out[True][2]:.1f} s, "
          f"full {out[False][2]:.1f} s", flush=True)
    return paths


def heic_section(backend, work: Path, jpegs: list[Path], demo_jpegs: list[Path], batch_size: int,
                 repeats: int) -> None:
    """HEIC photos: the embedded thumbnail (reduced decoding, the default) against every pixel."""
    from vlmcls import Classifier
    from vlmcls.encode.decoding import decode_image
    from vlmcls.demo.world import DEMO_CLASSES
    from vlmcls.encode.embeddings import l2_normalize

    start = time.perf_counter()
    heics = make_heics(jpegs, work / "heic")
    mb = statistics.mean(p.stat().st_size for p in heics) / 1e6
    print(f"\nHEIC: {len(heics)} photos 4032x3024 (512-px tiles, 320x240 thumbnail), mean {mb:.1f} MB (made in "
          f"{time.perf_counter() - start:.0f} s)", flush=True)
    some = [p.read_bytes() for p in heics[:8]]
    for label, side in (("thumbnail", 224), ("every pixel", None)):
        t, images = timed(lambda: [decode_image(d, min_side=side, heif_thumbnails=True) for d in some])
        print(f"  decode ({label}): {1000 * t / len(some):6.1f} ms/img (wall; libheif decodes tiles on its own "
              f"threads), decoded at {images[0].size[0]}x{images[0].size[1]}", flush=True)

    def feats(side):
        pixels = torch.stack([backend.preprocess(decode_image(d, min_side=side, heif_thumbnails=True)) for d in some])
        return l2_normalize(backend.encode_images(pixels))

    cos = (feats(224) * feats(None)).sum(dim=1)
    print(f"  ViT-B/32 feature cosine thumbnail vs every pixel, {len(some)} photos: min {cos.min():.5f}, "
          f"mean {cos.mean():.5f}", flush=True)
    caches = iter(range(10**6))
    small = max(2, len(heics) // 4)

    def classify(n: int, thumbnails: bool) -> float:
        clf = Classifier(backend, cache_dir=work / f"heic-cache-{os.getpid()}-{next(caches)}", batch_size=batch_size,
                         heic_thumbnails=thumbnails)
        t, result = timed(lambda: clf.classify([str(p) for p in heics[:n]], LABELS, method="templates",
                                               templates="photo"))
        assert result.stats["encoded"] == n, result.stats
        return t

    classify(2, True)
    modes = (("--decode heic_thumbnails=true", True), ("every pixel, the default", False))
    measured = {}
    for label, thumbnails in modes:
        measured[f"{label} small"] = lambda t=thumbnails: classify(small, t)
        measured[f"{label} big"] = lambda t=thumbnails: classify(len(heics), t)
    rounds = alternate(lambda: forward_limit(backend, batch_size, seconds=4.0), measured, repeats,
                       name="forward img/s")
    forward = rounds.median()
    steady = {}
    for label, _ in modes:
        steady[label] = statistics.median((len(heics) - small) / (b - s) for s, b in
                                          zip(rounds.values(f"{label} small"), rounds.values(f"{label} big")))
        print(f"  classify steady ({label}, marginal {small} -> {len(heics)}): {steady[label]:6.2f} img/s = "
              f"{steady[label] / forward:.2f}x the model's forward pass ({forward:.2f} img/s)", flush=True)
    print(f"  thumbnails / every pixel: {steady[modes[0][0]] / steady[modes[1][0]]:.1f}x; {rounds.method()}; "
          f"forward drift max/min {rounds.drift():.2f}", flush=True)
    demo_heics = make_heics(demo_jpegs, work / "demo12mp-heic")
    out = {}
    for reduced in (True, False):
        clf = Classifier(f"local-dir:{DEMO_MODEL}", device="cpu",
                         cache_dir=work / f"demo-heic-cache-{os.getpid()}-{reduced}", heic_thumbnails=reduced)
        t, got = timed(lambda: clf.encode_images([str(p) for p in demo_heics]))
        out[reduced] = (got.feats, [p.label for p in clf.predict(got, list(DEMO_CLASSES)).predictions], t)
    agree = sum(a == b for a, b in zip(out[True][1], out[False][1])) / len(demo_heics)
    cos = (out[True][0] * out[False][0]).sum(dim=1)
    print(f"  demo world at 12 MP as HEIC, {len(demo_heics)} images, demo model: label agreement thumbnail vs every "
          f"pixel {agree:.2%}; min feature cosine {cos.min():.5f}; encode time thumbnail {out[True][2]:.1f} s, "
          f"every pixel {out[False][2]:.1f} s", flush=True)


if __name__ == "__main__":
    main()
