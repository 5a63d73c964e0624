"""Which images to label: accuracy after 10/20/50 corrections chosen by the review page's label-next rule, by
least-sure-first and at random, on the demo world (the shipped demo model, cbd with the shipped descriptors).

Run: ``python bench/bench_active_labels.py`` (``--per-class``, ``--seeds``). A simulated reviewer labels the
chosen images with their true class; Tip-Adapter then re-scores every image with those labels as its support set
(α, β by leave-one-out, as "improve with my labels" and ``classify --labels`` do; :func:`vlmcls.review.active.
tip_with_labels`), and accuracy is measured on all images and on those not labelled. Each ordering is computed once
from the zero-shot run (what the page's "label next" view shows before the first improve). Random is the mean
over ``--seeds`` permutations. Features are encoded once into a temporary store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmcls.review.active import label_next_order, least_sure_order, random_order, tip_with_labels  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "vlmcls" / "data"
BUDGETS = (10, 20, 50)


def demo_run(folder: Path, per_class: int, seed: int):
    """(image feats [N, D], zero-shot logits [N, C], probs [N, C], true class indices [N], class names)."""
    from vlmcls.api import Classifier, load_classes
    from vlmcls.demo.render import render_dataset
    from vlmcls.demo.world import DEMO_CLASSES
    from vlmcls.methods import MethodOptions

    render_dataset(folder / "images", list(DEMO_CLASSES), per_class, seed)
    classes = load_classes(str(DATA / "demo" / "classes.txt"))
    clf = Classifier(f"local-dir:{DATA / 'demo_model'}", cache_dir=folder / "cache")
    feats = clf.encode_images(folder / "images")
    options = MethodOptions(methods={"cbd": {"descriptors": str(DATA / "demo" / "descriptors.json")}})
    result = clf.predict(feats, classes, "cbd", options, k=len(classes))
    truth = np.array([classes.index(r.label) for r in feats.records])
    return (feats.feats.numpy(), result.logits.numpy(), result.probs.numpy(), truth, classes)


def accuracy(logits: np.ndarray, truth: np.ndarray, rest: np.ndarray) -> tuple[float, float]:
    right = logits.argmax(1) == truth
    return float(right.mean()), float(right[rest].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=20, help="demo images per class (12 classes)")
    parser.add_argument("--seeds", type=int, default=5, help="random orderings averaged")
    parser.add_argument("--image-seed", type=int, default=2026, help="seed of the demo images drawn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        feats, logits, probs, truth, classes = demo_run(Path(tmp), args.per_class, args.image_seed)
    n = len(truth)
    zero = float((logits.argmax(1) == truth).mean())
    print(f"demo world: {n} images, {len(classes)} classes, cbd zero-shot accuracy {100 * zero:.1f} %")
    orders = {"label-next": label_next_order(feats, probs, count=max(BUDGETS)),
              "least-sure": least_sure_order(probs)}
    randoms = [random_order(n, seed) for seed in range(args.seeds)]
    print(f"{'ordering':<12}" + "".join(f"{f'{k} labels: all / rest':>26}" for k in BUDGETS))
    for name, order in [*orders.items(), ("random", None)]:
        cells = []
        for k in BUDGETS:
            scores = []
            for chosen in ([order[:k]] if order is not None else [r[:k] for r in randoms]):
                labelled = {int(i): classes[truth[i]] for i in chosen}
                rest = np.setdiff1d(np.arange(n), chosen)
                scores.append(accuracy(tip_with_labels(feats, logits, labelled, classes), truth, rest))
            every, rest_ = np.mean(scores, axis=0)
            cells.append(f"{100 * every:12.1f} % / {100 * rest_:5.1f} %")
        print(f"{name:<12}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
