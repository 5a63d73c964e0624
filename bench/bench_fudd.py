"""Issue 5 benchmark: FuDD re-ranking of N images × 45 pairs against the time to encode those N images.

    python bench/bench_fudd.py [--images 256] [--classes 100] [--k 10]

Both are measured in one run on this machine: the image encoder is a random-init ViT-B/32 (open_clip) on
preprocessed tensors; the re-ranking uses every pair of each image's top-k set, 3 attributes per pair. Warmed and
alternated for ``--rounds`` rounds, the encoding (the baseline) bracketing the pair-table build and the re-rank;
medians (``_timing.alternate``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate, timed  # noqa: E402

from vlmcls.methods.fudd import ambiguous_sets, build_pair_table, count_pairs, rerank
from vlmcls.encode.embeddings import l2_normalize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    torch.manual_seed(0)
    n, C, k, D = args.images, args.classes, args.k, args.dim
    names = [f"class{c}" for c in range(C)]
    image_feats = l2_normalize(torch.randn(n, D))
    class_weights = l2_normalize(torch.randn(C, D))
    sets = ambiguous_sets(image_feats @ class_weights.T, k)  # [N, k]
    pairs = count_pairs(sets)
    pair_json = {}
    for (a, b), _ in pairs:
        prompt_pairs = []
        for attr in range(3):
            ta, tb = f"{names[a]} attr{attr} vs {names[b]}", f"{names[b]} attr{attr} vs {names[a]}"
            prompt_pairs.append({"attr_type": f"attr{attr}", "prompt_pair": [ta, tb]})
        pair_json[f"{names[a]}_{names[b]}"] = {"classes": [names[a], names[b]], "prompt_pairs": prompt_pairs}

    table = build_pair_table(pair_json, names)
    texts = table.texts
    text_feats = l2_normalize(torch.randn(len(texts), D))
    result = rerank(image_feats, sets, table, text_feats, 100.0)
    assert bool(result.covered.all())

    from vlmcls.encode.models import load_model

    model = load_model("ViT-B-32", device="cpu")
    pixels = torch.randn(32, 3, 224, 224)
    encoded = min(n, 64)

    def encode() -> float:  # seconds per image of the image tower, on ``encoded`` images
        def run():
            done = 0
            while done < encoded:
                model.encode_images(pixels)
                done += pixels.shape[0]
        return timed(run) / (-(-encoded // 32) * 32)

    rounds = alternate(encode, {"table": lambda: timed(lambda: build_pair_table(pair_json, names)),
                                "rerank": lambda: timed(lambda: rerank(image_feats, sets, table, text_feats, 100.0))},
                       args.rounds, name="encode per image", warm_measured=True, verbose=False)
    t_table, t_rerank = rounds.median("table"), rounds.median("rerank")
    t_encode = rounds.median() * n
    done = -(-encoded // 32) * 32
    print(f"{n} images, {C} classes, k={k} ({k * (k - 1) // 2} pairs per image), {len(pairs)} unique pairs, "
          f"{len(texts)} differential sentences")
    print(f"pair table build      {t_table * 1e3:8.1f} ms")
    print(f"re-rank (vectorised)  {t_rerank * 1e3:8.1f} ms   ({n / t_rerank:,.0f} images/s)")
    print(f"encode {n} images     {t_encode * 1e3:8.1f} ms   (ViT-B/32, measured on {done} images)")
    print(f"re-rank / encode      {(t_rerank + t_table) / t_encode:8.4f}   (target: a small fraction)")
    rounds.print_summary(unit="ms", scale=1000)
    print_load("end")


if __name__ == "__main__":
    main()
