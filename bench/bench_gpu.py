"""Issue 15 GPU benchmark: `classify` on CUDA with JPEGs decoded on the device (nvJPEG) against decoding on CPU
threads, side by side in one run, with the bounds and the label agreement.

    python bench/bench_gpu.py [--images 4096] [--batch-size 256] [--precision fp16] [--repeats 2]
    python bench/bench_gpu.py --device cpu --precision fp32 --images 64 --batch-size 16 --demo-per-class 2  # a check

Random-init (seeded) ViT-B/32 on 500×375 JPEGs (bench_classify's images). ``classify`` with CPU decode threads is
the baseline: run once first, not counted (with a device-decoding run too: nvJPEG handles, cuDNN/cuBLAS choices),
then ``--repeats`` rounds alternate it with the other measurements and it runs once more at the end, bracketing
them (``_timing.alternate``); medians printed, every classify run on an empty store:
- model forward alone on pixels already on the device (the ceiling),
- decoding alone, as classify feeds the model: CPU decode threads (PIL, uint8 hand-over) and the device decoder
  (workers read, hash and check headers; nvJPEG decodes each batch; resize/crop on the device),
- ``classify`` end to end with device decoding on and off (target: >= 2,000 img/s on an H100/H200 in fp16),
- the bound: the slowest of the three stages above,
- agreement of device decoding with the CPU path: minimum ViT-B/32 feature cosine on these JPEGs, and top-1
  agreement on the demo world drawn at 12 MP with the shipped demo model (target >= 99 %).
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import alternate  # noqa: E402
from bench_classify import LABELS, forward_limit, make_jpegs, sync  # noqa: E402

DEMO_MODEL = ROOT / "vlmcls" / "data" / "demo_model"


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def decode_only(records, backend, batch_size: int, on_device: bool) -> float:
    """Images/s of the decode pipeline alone (no model): what classify's encoder would be handed."""
    from vlmcls.encode.device_decode import DeviceJpegDecoder
    from vlmcls.encode.images import default_decode_workers, iter_decoded_batches

    uint8 = backend.uint8_preprocess()
    decoder = DeviceJpegDecoder.for_preprocess(uint8, backend.device) if on_device else None
    if on_device and decoder is None:
        raise SystemExit("this model's preprocessing has no device twin")
    t, n = timed(lambda: sum(len(b.records_ok) for b in iter_decoded_batches(
        records, uint8, batch_size, default_decode_workers("thread"), device_decoder=decoder)), backend.device)
    return n / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--demo-per-class", type=int, default=20)
    args = parser.parse_args()
    from _machine import print_load, print_machine

    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure

    from vlmcls import Classifier
    from vlmcls.api import as_records
    from vlmcls.encode.store import clear_digest_memo
    from vlmcls.encode.models import load_model

    work = Path(tempfile.mkdtemp(prefix="vlmcls-bench-gpu-"))
    paths = make_jpegs(work / "jpegs", args.images)
    torch.manual_seed(0)
    backend = load_model("ViT-B-32", device=args.device, precision=args.precision)
    name = torch.cuda.get_device_name() if backend.device.type == "cuda" else "cpu"
    print(f"{name}; {os.cpu_count()} CPUs; {args.images} JPEGs 500x375; ViT-B/32 {args.precision}; "
          f"batch {args.batch_size}", flush=True)
    records = as_records([str(p) for p in paths])

    runs = iter(range(10**6))

    def classify(on_device: bool) -> tuple[float, object]:
        clear_digest_memo()  # each run reads and hashes every file, as a first run in a new process does
        clf = Classifier(backend, cache_dir=work / f"cache-{next(runs)}", batch_size=args.batch_size)
        clf.encoder.device_decoding = on_device
        t, feats = timed(lambda: clf.encode_images([str(p) for p in paths]), backend.device)
        clf.predict(feats, LABELS)
        return t, feats

    feats = {}

    def classify_rate(on_device: bool):
        def run() -> float:
            t, feats[on_device] = classify(on_device)
            return len(paths) / t
        return run

    rounds = alternate(classify_rate(False),
                       {"forward": lambda: forward_limit(backend, args.batch_size),
                        "decode False": lambda: decode_only(records, backend, args.batch_size, False),
                        "decode True": lambda: decode_only(records, backend, args.batch_size, True),
                        "classify True": classify_rate(True)},
                       args.repeats, name="classify False", warm_measured=True)
    fig = {"classify False": rounds.values(), **{k: rounds.values(k) for k in rounds.runs}}
    med = {k: statistics.median(v) for k, v in fig.items()}
    print(f"({rounds.method()}; CPU-decode classify drift max/min {rounds.drift():.2f})")
    for on_device, label in ((False, "CPU decode threads"), (True, "device decoding")):
        print(f"{label:20s} decode alone {med[f'decode {on_device}']:8.0f} img/s   classify end to end "
              f"{med[f'classify {on_device}']:8.0f} img/s   runs {[f'{v:.0f}' for v in fig[f'classify {on_device}']]}")
    print(f"model forward alone  {med['forward']:8.0f} img/s")
    stages = {"decode (device)": med["decode True"], "forward": med["forward"]}
    bound = min(stages, key=stages.get)
    print(f"device decoding: classify {med['classify True']:.0f} img/s = {med['classify True'] / med['classify False']:.2f}x "
          f"the CPU-decode run (target >= 2,000 img/s); bound: {bound} ({stages[bound]:.0f} img/s)", flush=True)
    a, b = feats[True].feats, feats[False].feats
    print(f"ViT-B/32 feature cosine device vs CPU decoding: min {float((a * b).sum(1).min()):.5f}", flush=True)
    demo_agreement(work, args.demo_per_class, args.device)
    print_load("end")


def demo_agreement(work: Path, per_class: int, device: str) -> None:
    """Top-1 labels with device decoding vs the CPU path on the demo world drawn at 12 MP (bench_photos' images)."""
    from bench_photos import _render_demo_photo

    from vlmcls import Classifier
    from vlmcls.demo.world import DEMO_CLASSES

    jobs = [(work / "demo12mp" / name / f"{i}.jpg", name, i) for name in DEMO_CLASSES for i in range(per_class)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        paths = [str(p) for p in pool.map(_render_demo_photo, jobs)]
    labels, feats = {}, {}
    for on_device in (True, False):
        clf = Classifier(f"local-dir:{DEMO_MODEL}", device=device, cache_dir=work / f"demo-{on_device}")
        clf.encoder.device_decoding = on_device
        feats[on_device] = clf.encode_images(paths)
        labels[on_device] = [p.label for p in clf.predict(feats[on_device], list(DEMO_CLASSES)).predictions]
    agree = sum(x == y for x, y in zip(labels[True], labels[False])) / len(paths)
    cos = (feats[True].feats * feats[False].feats).sum(1).min()
    print(f"demo world at 12 MP, {len(paths)} images, demo model: top-1 agreement device vs CPU decoding "
          f"{agree:.2%} (target >= 99 %); min feature cosine {float(cos):.5f}", flush=True)


if __name__ == "__main__":
    main()
