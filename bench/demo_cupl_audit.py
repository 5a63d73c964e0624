"""CuPL beside name / templates / CbD on the demo world, and the descriptor audit (issue 18), in one run.

    python bench/demo_cupl_audit.py [--per-class 30] [--seed 1234] [--repeats 5]

Uses the shipped demo CLIP, the committed descriptor file, and the local OpenAI-compatible test server
(``tests/llm_server.py``, real HTTP) as the LLM for CuPL's sentences and CbD's descriptors. The audit part pads every
class's descriptors with three fillers that name no attribute, audits on one half of the images and reports on the
other, and times the closed-form leave-one-out against re-scoring once per left-out descriptor (both warmed, then
``--repeats`` alternated rounds with the re-scoring, the baseline, bracketing the closed form; medians; the ratio is
what to read, the box may be shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate, timed  # noqa: E402

from vlmcls import Classifier  # noqa: E402
from vlmcls.report.audit import audit_descriptors, audit_features  # noqa: E402
from vlmcls.demo.render import render_dataset  # noqa: E402
from vlmcls.demo.world import DEMO_CLASSES  # noqa: E402
from vlmcls.llm.descriptors import DescriptorSet  # noqa: E402
from vlmcls.llm.client import LLMClient, LLMConfig  # noqa: E402
from vlmcls.methods import MethodOptions  # noqa: E402

DEMO = ROOT / "vlmcls" / "data"
MODEL = f"local-dir:{DEMO / 'demo_model'}"
DESCRIPTORS = DEMO / "demo" / "descriptors.json"
CLASSES = list(DEMO_CLASSES)
FILLERS = ["often seen in pictures", "a common sight", "something people like to photograph"]


def accuracy(result) -> float:
    return sum(p.label == p.true_label for p in result.ok) / len(result.ok)


def method_table(clf, feats, server, cache: Path) -> None:
    print("| method | text per class | LLM calls | top-1 % |")
    print("|---|---|---|---|")
    with LLMClient(LLMConfig(model="fake-llm", base_url=server.base_url), clf.store) as client:
        rows = [
            ("name", "name", MethodOptions(), "the bare class name"),
            ("templates", "templates", MethodOptions(), "7 CLIP templates, mean embedding"),
            ("waffle", "waffle", MethodOptions(), "30 random descriptors, mean similarity"),
            ("cbd (committed file)", "cbd", MethodOptions(descriptors=str(DESCRIPTORS)), "descriptors, mean similarity"),
            ("cbd (LLM)", "cbd", MethodOptions(llm=client), "descriptors from the server"),
            ("cupl (LLM)", "cupl", MethodOptions(llm=client), "5 questions × 10 samples, mean embedding"),
        ]
        for label, method, options, text in rows:
            result = clf.predict(feats, CLASSES, method, options)
            print(f"| {label} | {text} | {result.stats['llm_calls']} | {100 * accuracy(result):.1f} |")


def audit_part(clf, images: Path, work: Path, repeats: int) -> None:
    committed = json.loads(DESCRIPTORS.read_text())
    padded = DescriptorSet({c: committed[c] + FILLERS for c in CLASSES})
    audit = audit_descriptors(clf, images, CLASSES, padded, holdout=0.5, seed=0)
    rows = [v for vs in audit.entries.values() for v in vs]
    fillers = Counter(v.verdict for v in rows if v.descriptor in FILLERS)
    attributes = Counter(v.verdict for v in rows if v.descriptor not in FILLERS)
    print(f"\naudit on {audit.audited_images} images, reported on the other {audit.report_images} (holdout 0.5)")
    print(f"  filler descriptors ({sum(fillers.values())}): {dict(fillers)}")
    print(f"  attribute descriptors ({sum(attributes.values())}): {dict(attributes)}")
    for v in rows:
        if v.descriptor not in FILLERS and v.verdict != "helps":
            print(f"    {v.class_name}: '{v.descriptor}' {v.verdict} (Δ expected {100 * v.delta_expected:+.3f} points)")
    print(f"  held-out top-1: {100 * audit.accuracy_before:.2f} % with every descriptor → "
          f"{100 * audit.accuracy_after:.2f} % with the pruned file")

    # Timing: closed form vs re-scoring with each descriptor left out, on the same stored features.
    feats = clf.encode_images(images)
    labels = torch.tensor([CLASSES.index(r.label) for r in feats.records])
    encode = clf.encoder.encode_texts

    def closed_form():
        return audit_features(feats.feats, labels, CLASSES, padded, encode, logit_scale=clf.model.logit_scale)

    def one_pass_per_descriptor():
        for c in CLASSES:
            for d in padded[c]:
                without = DescriptorSet({**padded.to_dict(), c: [x for x in padded[c] if x != d]})
                clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=without))

    rounds = alternate(lambda: timed(one_pass_per_descriptor), {"closed form": lambda: timed(closed_form)}, repeats,
                       name="one pass per descriptor", warm_measured=True, verbose=False)  # the warm-ups fill the store
    closed, brute = rounds.median("closed form"), rounds.median()
    print(f"\nleave-one-out over {sum(len(padded[c]) for c in CLASSES)} descriptors × {len(labels)} images: closed "
          f"form {1000 * closed:.1f} ms, one pass per descriptor {1000 * brute:.1f} ms, ratio {brute / closed:.1f}×")
    rounds.print_summary(unit="ms", scale=1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    work = Path(tempfile.mkdtemp(prefix="vlmcls-cupl-audit-"))
    render_dataset(work / "test", CLASSES, args.per_class, args.seed)
    clf = Classifier(MODEL, cache_dir=work / "cache", batch_size=64)
    feats = clf.encode_images(work / "test")
    print(f"{len(feats.records)} held-out images, {len(CLASSES)} classes (chance {100 / len(CLASSES):.1f} %)\n")
    from llm_server import FakeLLMServer

    server = FakeLLMServer().start()
    try:
        method_table(clf, feats, server, work)
    finally:
        server.stop()
    audit_part(clf, work / "test", work, args.repeats)
    print_load("end")


if __name__ == "__main__":
    main()
