"""The open world on the demo world: "none of these" and two objects per picture, measured side by side.

    PYTHONPATH=. python bench/open_world.py [--cache-dir DIR]

In-list images: vlmcls/data/demo/images (48, 12 classes). Others: vlmcls/data/demo/none_of_these (48; attribute
combinations no class has). Two objects: vlmcls/data/demo/two_objects (24) with two_objects.jsonl. Method: cbd with
the shipped descriptors. The LLM negatives come from `vlmcls demo llm` (the product's offline LLM) through the
negatives prompt. No labels are used to set any threshold; they are used only to score.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from vlmcls.report.multilabel import average_precision  # the one AP eval reports

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "vlmcls" / "data" / "demo"
MODEL = f"local-dir:{ROOT / 'vlmcls' / 'data' / 'demo_model'}"


def mean_ap(score_matrix: np.ndarray, truth_matrix: np.ndarray) -> float:
    aps = [average_precision(score_matrix[:, c], truth_matrix[:, c]) for c in range(truth_matrix.shape[1])]
    return float(np.mean([a for a in aps if a is not None]))


def main() -> None:
    from vlmcls.adapters.open_set import auroc, fpr_at_tpr
    from vlmcls.api import Classifier, as_records, load_classes
    from vlmcls.demo.llm import DemoLLMServer
    from vlmcls.llm.client import LLMClient, LLMConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="vlmcls-bench-")
    clf = Classifier(MODEL, cache_dir=cache)
    classes = load_classes(DEMO / "classes.txt")
    from dataclasses import replace

    records = as_records(DEMO / "images") + as_records(DEMO / "none_of_these")  # none_of_these/: no class folders, label None
    records = [replace(r, source_index=i) for i, r in enumerate(records)]
    n_in = sum(r.label is not None for r in records)
    feats = clf.encode_images(records)
    base = {"cbd": {"descriptors": str(DEMO / "descriptors.json")}}
    plain = clf.predict(feats, classes, "cbd", base)
    in_list = [p for p in plain.ok if p.true_label is not None]
    top1_plain = np.mean([p.label == p.true_label for p in in_list])
    print(f"images: {n_in} in-list, {len(records) - n_in} none-of-these; cbd top-1 on in-list without --unknown: "
          f"{100 * top1_plain:.1f} %")
    msp = np.array([max(pr for _, pr in p.top_k) for p in plain.ok])
    is_in = np.array([p.true_label is not None for p in plain.ok])
    print(f"{'score':28s} {'AUROC':>6s} {'FPR95':>6s}  {'estimator':9s} {'target':>6s} {'achieved':>8s} "
          f"{'others kept':>11s} {'top-1 w/ reject':>15s}")
    print(f"{'top-1 probability (today)':28s} {auroc(msp[is_in], msp[~is_in]):6.3f} "
          f"{fpr_at_tpr(msp[is_in], msp[~is_in]):6.3f}")
    with DemoLLMServer(port=0) as server, LLMClient(LLMConfig(model="demo", base_url=server.base_url), clf.store) as llm:
        from vlmcls.methods import MethodOptions

        for source in ("none", "vocabulary", "llm", "vocabulary+llm"):
            for estimator in ("quantile", "mixture"):
                options = MethodOptions(methods={**base, "unknown": {"reject": True, "source": source,
                                                                     "estimator": estimator}}, llm=llm)
                result = clf.predict(feats, classes, "cbd", options)
                rows = result.ok
                score = np.array([p.unknown_score for p in rows])
                kept = np.array([p.label != "unknown" for p in rows])
                achieved = kept[is_in].mean()
                others = kept[~is_in].mean()
                top1 = np.mean([p.label == p.true_label for p in rows if p.true_label is not None])
                name = {"none": "MCM"}.get(source, f"NegLabel {source}")
                print(f"{name:28s} {auroc(score[is_in], score[~is_in]):6.3f} {fpr_at_tpr(score[is_in], score[~is_in]):6.3f}"
                      f"  {estimator:9s} {0.95:6.2f} {achieved:8.3f} {others:11.3f} {100 * top1:14.1f}%")

        # a run that holds only in-list images: how many does the label-free threshold wrongly reject?
        only_in = clf.encode_images(as_records(DEMO / "images"))
        for source in ("none", "vocabulary", "vocabulary+llm"):
            for estimator in ("quantile", "mixture"):
                options = MethodOptions(methods={**base, "unknown": {"reject": True, "source": source,
                                                                     "estimator": estimator}}, llm=llm)
                rows = clf.predict(only_in, classes, "cbd", options).ok
                kept = np.mean([p.label != "unknown" for p in rows])
                print(f"in-list images only, {source:15s} {estimator:9s}: target 0.95, achieved {kept:.3f}")

        # several labels per image
        truth_rows = [json.loads(line) for line in (DEMO / "two_objects.jsonl").read_text().splitlines()]
        paths = [DEMO / t["path"] for t in truth_rows]
        truth = np.array([[c in t["labels"] for c in classes] for t in truth_rows], dtype=float)
        both = clf.encode_images(paths)
        single = clf.predict(both, classes, "cbd", base, k=len(classes))
        probs = np.array([[dict(p.top_k)[c] for c in classes] for p in single.ok])
        print(f"\ntwo objects per image ({len(paths)} images): mAP of softmax probabilities (top-k baseline) "
              f"{mean_ap(probs, truth):.3f}")
        top2 = np.zeros_like(truth)
        top2[np.arange(len(probs))[:, None], np.argsort(-probs, axis=1)[:, :2]] = 1
        print(f"  top-2 labels: both right in {np.mean((top2 * truth).sum(1) == 2):.3f} of images, "
              f"F1 {_f1(top2, truth):.3f}")
        for source in ("none", "vocabulary+llm"):
            options = MethodOptions(methods={**base, "unknown": {"multi_label": True, "source": source}}, llm=llm)
            result = clf.predict(both, classes, "cbd", options)
            chosen = np.array([[c in dict(p.labels) for c in classes] for p in result.ok], dtype=float)
            scored = np.array([[dict(p.labels).get(c, 0.0) for c in classes] for p in result.ok])
            print(f"  --multi-label ({source}): both right in {np.mean((chosen * truth).sum(1) == 2):.3f}, "
                  f"F1 {_f1(chosen, truth):.3f}, labels per image {chosen.sum(1).mean():.2f}, "
                  f"mAP of its label scores {mean_ap(scored, truth):.3f}")


def _f1(chosen: np.ndarray, truth: np.ndarray) -> float:
    tp = (chosen * truth).sum()
    return float(2 * tp / (chosen.sum() + truth.sum()))


if __name__ == "__main__":
    main()
