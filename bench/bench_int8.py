"""Issue 16 benchmark: `classify --precision int8` against the fp32 raw open_clip loop, side by side in one run.

    python bench/bench_int8.py [--images 256] [--small 32] [--batch-size 32] [--repeats 3] [--demo-per-class 20]

1. Speed (random-init ViT-B/32, seeded, the same weights in every run; 500x375 JPEGs): the fp32 raw open_clip
   loop (decode, preprocess, stack, encode_image) on all images, and vlmcls classify at int8 on a ``--small`` and
   a full run, each from an empty embedding store. The int8 steady rate is the marginal rate between the two runs
   (start-up, text encoding and the one-off build of the int8 tower excluded). Target: int8 steady rate >= 2x the
   raw fp32 loop. The baseline is warmed (one full pass, not counted: a fresh process runs its first half-minute
   at about half speed) and brackets the int8 runs: fp32, int8 small, int8 full, fp32, …, fp32; medians are used,
   and the fp32 runs' spread shows drift. The same fp32 loop also runs warmed in a process of its own before and
   after (``--no-isolated`` skips it): if the in-process baseline is slower, something in the process (the int8
   runtime's threads) slows it. The CPU model and flags and the load average are printed with the figures.
2. Agreement: the minimum cosine between int8 and fp32 image features on those JPEGs (random weights), and on
   the demo world (the shipped demo model, a trained model): top-1 agreement of int8 with fp32 (target >= 99 %)
   and the minimum feature cosine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_load, print_machine  # noqa: E402
from _timing import bracketed, spread  # noqa: E402
from bench_classify import LABELS, make_jpegs, raw_open_clip_loop  # noqa: E402

DEMO_MODEL = f"local-dir:{ROOT / 'vlmcls' / 'data' / 'demo_model'}"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def seeded_backend(precision: str, store=None):
    """ViT-B/32 with the same seeded random weights whatever the precision."""
    from vlmcls.encode.models import load_model

    torch.manual_seed(0)
    return load_model("ViT-B-32", device="cpu", precision=precision, store=store)


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return float((a * b).sum(-1).min())


def isolated_fp32(folder: Path, batch_size: int, passes: int) -> list[float]:
    """Seconds of the fp32 raw loop over ``folder``'s JPEGs in a process of its own, after a warm-up pass."""
    out = subprocess.run([sys.executable, __file__, "--fp32-only", str(folder), "--batch-size", str(batch_size),
                          "--repeats", str(passes)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fp32_only(args) -> None:
    """The --fp32-only child: warm pass, then ``--repeats`` timed passes; prints their seconds as JSON."""
    paths = sorted(Path(args.fp32_only).glob("*.jpg"))
    fp32 = seeded_backend("fp32")
    def loop():
        return raw_open_clip_loop(fp32.model, fp32.preprocess, paths, args.batch_size, "cpu", torch.float32)

    loop()
    print(json.dumps([timed(loop)[0] for _ in range(args.repeats)]))


def speed(args, work: Path) -> None:
    from vlmcls import Classifier
    from vlmcls.encode.store import Store, clear_digest_memo

    paths = make_jpegs(work / "all", args.images)
    small = work / "small"
    small.mkdir()
    for p in paths[: args.small]:
        os.link(p, small / p.name)
    fp32 = seeded_backend("fp32")
    int8 = seeded_backend("int8", Store(work / "int8-home"))  # the int8 tower is built and kept here, once
    assert fp32.weights_fingerprint == int8.weights_fingerprint
    t_build, _ = timed(lambda: int8.encode_images(torch.zeros(1, 3, 224, 224)))
    print(f"int8 tower built once in {t_build:.1f} s (export + quantisation; reused from the cache folder after)",
          flush=True)

    isolated_before = isolated_fp32(work / "all", args.batch_size, 2) if args.isolated else []
    runs = iter(range(10**6))
    raw_feats = []

    def raw() -> float:
        t, feats = timed(lambda: raw_open_clip_loop(fp32.model, fp32.preprocess, paths, args.batch_size, "cpu",
                                                    torch.float32))
        raw_feats[:] = [feats]
        return t

    def int8_classify(folder: Path) -> float:
        clear_digest_memo()  # a first run hashes every file, as a new process would
        clf = Classifier(int8, cache_dir=work / f"cache-{next(runs)}", batch_size=args.batch_size)
        int8_classify.last = clf
        return timed(lambda: clf.classify(folder, LABELS, method="templates", templates="photo"))[0]

    t_raws, measured = bracketed(raw, {"small": lambda: int8_classify(small), "full": lambda: int8_classify(work / "all")},
                                 args.repeats, warmup=True)
    t_smalls, t_fulls = measured["small"], measured["full"]
    isolated_after = isolated_fp32(work / "all", args.batch_size, 2) if args.isolated else []
    t_raw, t_small, t_full = (statistics.median(v) for v in (t_raws, t_smalls, t_fulls))
    raw_rate = len(paths) / t_raw
    steady = (len(paths) - args.small) / (t_full - t_small)
    print(f"fp32 raw open_clip loop   {raw_rate:7.2f} img/s   warmed, bracketing the int8 runs: {spread(t_raws)}; "
          f"runs {['%.1f' % t for t in t_raws]}")
    if args.isolated:
        isolated = isolated_before + isolated_after
        print(f"fp32 raw loop, own process {len(paths) / statistics.median(isolated):7.2f} img/s   warmed, before and "
              f"after: {spread(isolated)}; in-process / own-process rate "
              f"{statistics.median(isolated) / t_raw:.2f}")
    print(f"int8 classify {args.small:4d} images {args.small / t_small:7.2f} img/s   {spread(t_smalls)}")
    print(f"int8 classify {len(paths):4d} images {len(paths) / t_full:7.2f} img/s   {spread(t_fulls)}")
    print(f"int8 steady (marginal)    {steady:7.2f} img/s   ratio to the raw fp32 loop {steady / raw_rate:.2f}x "
          f"(target >= 2)   whole {len(paths)}-image run {t_raw / t_full:.2f}x")
    int8_feats = int8_classify.last.encode_images(work / "all").feats  # from the store: what the run computed
    order = sorted(range(len(paths)), key=lambda i: str(paths[i]))
    print(f"min feature cosine int8 vs fp32, ViT-B/32 random weights, {len(paths)} JPEGs: "
          f"{min_cosine(int8_feats, raw_feats[0][order]):.5f}", flush=True)


def demo_agreement(args, work: Path) -> None:
    from vlmcls import Classifier
    from vlmcls.demo.render import render_dataset
    from vlmcls.demo.world import DEMO_CLASSES

    folder = work / "demo"
    render_dataset(folder, DEMO_CLASSES, args.demo_per_class, seed=123)
    results, feats = {}, {}
    for precision in ("fp32", "int8"):
        clf = Classifier(DEMO_MODEL, device="cpu", precision=precision, cache_dir=work / "demo-cache", batch_size=64)
        results[precision] = clf.classify(folder, list(DEMO_CLASSES))
        feats[precision] = clf.encode_images(folder).feats
    same = sum(a.label == b.label for a, b in zip(results["fp32"].predictions, results["int8"].predictions))
    n = len(results["fp32"].predictions)
    correct = {p: sum(r.label == r.true_label for r in results[p].predictions) for p in results}
    print(f"demo world ({n} images, {len(DEMO_CLASSES)} classes, demo model): top-1 agreement int8 vs fp32 "
          f"{100 * same / n:.1f} % (target >= 99); accuracy fp32 {100 * correct['fp32'] / n:.1f} %, "
          f"int8 {100 * correct['int8'] / n:.1f} %; min feature cosine {min_cosine(feats['int8'], feats['fp32']):.5f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--small", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-per-class", type=int, default=20)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--no-isolated", dest="isolated", action="store_false",
                        help="skip the fp32 loop in a process of its own")
    parser.add_argument("--fp32-only", help=argparse.SUPPRESS)  # the child process of the isolated baseline
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.fp32_only:
        fp32_only(args)
        return
    work = Path(tempfile.mkdtemp(prefix="vlmcls-bench-int8-"))
    print_machine()
    print(f"torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs; batch {args.batch_size}", flush=True)
    if not args.skip_demo:
        demo_agreement(args, work)
    if not args.skip_speed:
        speed(args, work)
    print_load("end")


if __name__ == "__main__":
    main()
