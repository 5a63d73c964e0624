"""Run-layer benchmark: each stage computed once per run, against the previous pipeline that ran the stages so far
again for every stage needing a global pass (FuDD's pair counts, the self-cache) and once more for the scores.

    python bench/bench_stages.py [--repeat 200] [--rounds 7]

The demo world (shipped model, descriptors, pairs) scores ``cbd+fudd+tip`` (support: the demo images) and
``cbd+fudd+tfup``; its 48 image features are tiled ``--repeat`` times so the scoring is long enough to time. Both
ways run in this process, alternated, on the same features and prepared text side (every text feature comes from the
store after the warm-up), medians of ``--rounds``. Prints head evaluations per run and the time ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vlmcls import Classifier
from vlmcls.methods import MethodOptions, build_pipeline, parse_spec
from vlmcls.methods.heads import LinearHead
from vlmcls.methods.pipeline import StagesSoFar, gather_in_process

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate, timed  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "demo"


def _old_gather(image_feats):
    """The previous single-engine gather: the whole pipeline so far applied again at every global pass."""
    def gather(upstream, collect):
        import torch

        positions = torch.arange(image_feats.shape[0])
        return [collect(positions, image_feats, upstream.apply(image_feats))]
    return gather


def run_old(spec, context, feats):
    pipeline, _ = build_pipeline(spec, context, _old_gather(feats))
    return pipeline.apply(feats, False)


def run_new(spec, context, feats):
    run = StagesSoFar(feats, False)
    pipeline, _ = build_pipeline(spec, context, gather_in_process(feats, run))
    return run.apply(pipeline)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    clf = Classifier(f"local-dir:{DEMO.parent / 'demo_model'}", device="cpu")
    classes = [c for c in (DEMO / "classes.txt").read_text().split() if c]
    base = clf.encode_images(DEMO / "images").as_numpy().feats  # [48, D]
    feats = np.ascontiguousarray(np.tile(base, (args.repeat, 1)))  # [48·repeat, D]
    import torch

    feats_t = torch.from_numpy(feats)
    options = MethodOptions(descriptors=str(DEMO / "descriptors.json"),
                            methods={"fudd": {"pairs": DEMO / "pairs.json"}, "tip": {"support": DEMO / "images"}})
    context = clf.run_context(classes, options)
    print(f"{feats.shape[0]} image features (demo world x {args.repeat}), {len(classes)} classes")
    for spec_text in ("cbd+fudd+tip", "cbd+fudd+tfup"):
        spec = parse_spec(spec_text)
        counts = {}
        real = LinearHead.apply

        def counting(self, *a, **k):
            counts["n"] = counts.get("n", 0) + 1
            return real(self, *a, **k)
        for name, fn in (("before", run_old), ("after", run_new)):
            counts.clear()
            LinearHead.apply = counting
            try:
                scores = fn(spec, context, feats_t)
            finally:
                LinearHead.apply = real
            print(f"  {spec_text} {name}: head evaluations per run = {counts.get('n', 0)}")
        labels_old = run_old(spec, context, feats_t).logits.argmax(1)
        labels_new = run_new(spec, context, feats_t).logits.argmax(1)
        assert torch.equal(labels_old, labels_new), "the two ways must give the same labels"
        rounds = alternate(lambda: timed(lambda: run_old(spec, context, feats_t)),
                           {"after": lambda: timed(lambda: run_new(spec, context, feats_t))}, args.rounds,
                           name="before", warm_measured=True, verbose=False)
        rounds.print_summary(unit="ms", scale=1000)
        before, after = rounds.median(), rounds.median("after")
        print(f"  {spec_text}: before {before * 1000:.1f} ms, after {after * 1000:.1f} ms -> {before / after:.2f}x; "
              f"same labels on all {feats.shape[0]} images")
    print_load("end")


if __name__ == "__main__":
    main()
