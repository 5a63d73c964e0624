"""The demo world's accuracy tables (issues 3–6), measured in one run on held-out images.

    python bench/demo_world_tables.py [--per-class 30] [--seed 1234]

Uses the shipped demo CLIP (``vlmcls/data/demo_model``), the committed descriptor file, and the local
OpenAI-compatible test server (``tests/llm_server.py``, real HTTP) as the LLM for FuDD's differential questions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vlmcls import Classifier  # noqa: E402
from vlmcls.demo.render import render_dataset  # noqa: E402
from vlmcls.demo.world import DEMO_CLASSES, ONE_ATTRIBUTE_PAIRS, write_attribute_distances  # noqa: E402
from vlmcls.llm.client import LLMClient, LLMConfig  # noqa: E402
from vlmcls.methods import MethodOptions  # noqa: E402
from vlmcls.methods import RefinerOptions  # noqa: E402

DEMO = ROOT / "vlmcls" / "data"
MODEL = f"local-dir:{DEMO / 'demo_model'}"
DESCRIPTORS = DEMO / "demo" / "descriptors.json"
CLASSES = list(DEMO_CLASSES)
PAIR_CLASSES = {c for a, b, _ in ONE_ATTRIBUTE_PAIRS for c in (a, b)}
PARTNER = {a: b for a, b, _ in ONE_ATTRIBUTE_PAIRS} | {b: a for a, b, _ in ONE_ATTRIBUTE_PAIRS}


def scores(result, truth: list[str]) -> dict[str, float]:
    preds = [p.label for p in result.ok]
    n = len(preds)
    acc = sum(p == t for p, t in zip(preds, truth)) / n
    on_pairs = [(p, t) for p, t in zip(preds, truth) if t in PAIR_CLASSES]
    pair_acc = sum(p == t for p, t in on_pairs) / len(on_pairs)
    confused = sum(p == PARTNER[t] for p, t in on_pairs) / len(on_pairs)
    return {"acc": acc, "pair_acc": pair_acc, "partner_confusion": confused}


def row(name: str, s: dict[str, float], extra: str = "") -> None:
    print(f"| {name:<34} | {100 * s['acc']:6.1f} | {100 * s['pair_acc']:6.1f} | {100 * s['partner_confusion']:6.1f} | {extra}")


def self_cache_table(clf, work: Path, args) -> None:
    """Both KL weights of the self cache, on first stages of different strength and test sets of different size."""
    from vlmcls.adapters import build_unsupervised_cache, unsupervised_cache_logits

    print("\n| images/class | first stage | cache s/class | cache pseudo-labels right % | alone | + self cache (reference weight) "
          "| + self cache (2·exp(−KL)) |")
    print("|---|---|---|---|---|---|---|")
    from llm_server import FakeLLMServer

    server = FakeLLMServer().start()
    llm = LLMClient(LLMConfig(model="demo-llm", base_url=server.base_url), clf.store)
    fudd = MethodOptions(descriptors=str(DESCRIPTORS), llm=llm, extra={"fudd_k": 10})
    for per_class in [int(x) for x in args.self_cache_per_class.split(",")]:
        render_dataset(work / f"self_{per_class}", CLASSES, per_class, args.seed + per_class)
        feats = clf.encode_images(work / f"self_{per_class}")
        truth = torch.tensor([CLASSES.index(r.label) for r in feats.records])
        for first, opts in (("templates (small)", MethodOptions()), ("cbd", MethodOptions(descriptors=str(DESCRIPTORS))),
                            ("fudd (k=10)", fudd)):
            logits = clf.predict(feats, CLASSES, first.split()[0], opts).logits.double()
            image_feats = feats.feats.double()
            cache = build_unsupervised_cache(image_feats, logits, CLASSES, clf.model.logit_scale)
            right = (truth[cache.sources] == cache.values.argmax(1)).double().mean()
            cells = [f"{100 * (logits.argmax(1) == truth).double().mean():.1f}"]
            for kl_weight in ("reference", "exp"):
                out = unsupervised_cache_logits(image_feats, logits, cache, clf.model.logit_scale, kl_weight=kl_weight)
                cells.append(f"{100 * (out.logits.argmax(1) == truth).double().mean():.1f}")
            print(f"| {per_class} | {first} | {cache.per_class} | {100 * right:.1f} | " + " | ".join(cells) + " |")
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--quick", action="store_true", help="only the method table")
    parser.add_argument("--self-cache-per-class", default="20,60", help="test-set sizes for the self-cache table")
    parser.add_argument("--only-self-cache", action="store_true", help="only the self-cache table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlmcls-demo-"))
    render_dataset(work / "test", CLASSES, args.per_class, args.seed)
    clf = Classifier(args.model, cache_dir=work / "cache", batch_size=64)
    if args.only_self_cache:
        self_cache_table(clf, work, args)
        return
    feats = clf.encode_images(work / "test")
    truth = [r.label for r in feats.records]
    print(f"{len(truth)} held-out images, {len(CLASSES)} classes (chance {100 / len(CLASSES):.1f} %), "
          f"{len(ONE_ATTRIBUTE_PAIRS)} one-attribute pairs\n")

    first_table: dict[str, dict] = {}
    print("| method                             |  top-1 | pairs  | partner | notes")
    print("|---|---|---|---|---|")
    for name, opts in [
        ("name", MethodOptions()),
        ("templates (small)", MethodOptions()),
        ("templates (photo)", MethodOptions(templates="photo")),
        ("waffle (15 pairs, seed 0)", MethodOptions()),
        ("cbd (committed descriptors)", MethodOptions(descriptors=str(DESCRIPTORS))),
    ]:
        method = name.split()[0]
        first_table[name] = scores(clf.predict(feats, CLASSES, method, opts), truth)
        row(name, first_table[name])

    from llm_server import FakeLLMServer

    server = FakeLLMServer().start()
    try:
        llm = LLMClient(LLMConfig(model="demo-llm", base_url=server.base_url), clf.store)
        for rank in ("base", "template"):
            opts = MethodOptions(descriptors=str(DESCRIPTORS), llm=llm, extra={"fudd_k": 10, "fudd_rank": rank})
            before = len(server.chat_requests)
            result = clf.predict(feats, CLASSES, "fudd", opts)
            calls = len(server.chat_requests) - before
            again = clf.predict(feats, CLASSES, "fudd", opts)
            recalls = len(server.chat_requests) - before - calls
            assert [p.label for p in again.ok] == [p.label for p in result.ok]
            st = result.stats
            row(f"fudd (k=10, rank={rank})", scores(result, truth),
                f"{st['unique_pairs']} unique pairs, {calls} LLM calls, re-run {recalls} calls, {st['images_moved']} images moved")
        opts = MethodOptions(templates="photo", llm=llm, extra={"fudd_k": 10, "fudd_base": "templates", "fudd_rank": "template"})
        row("fudd (reference: template first stage)", scores(clf.predict(feats, CLASSES, "fudd", opts), truth))
        for max_pairs in (40, 20, 10):  # pairs left unanswered: each contributes its classes' template sentences
            opts = MethodOptions(descriptors=str(DESCRIPTORS), llm=llm, extra={"fudd_k": 10, "max_pairs": max_pairs})
            row(f"fudd (k=10, {max_pairs} of 66 pairs asked)", scores(clf.predict(feats, CLASSES, "fudd", opts), truth))
    finally:
        server.stop()

    if args.quick:
        return
    # Tip-Adapter: k labelled shots per class (drawn with another seed), vs zero-shot
    print("\n| shots k | templates | templates + Tip (α=β=1) | + Tip tuned (LOO on support) | cbd | cbd + Tip (α=β=1) |")
    print("|---|---|---|---|---|---|")
    zs_t = first_table["templates (small)"]["acc"]  # zero-shot, as scored in the first table
    zs_c = first_table["cbd (committed descriptors)"]["acc"]
    render_dataset(work / "support_pool", CLASSES, 16, args.seed + 7919)
    for k in (1, 2, 4, 8, 16):
        support = work / f"support_{k}"
        for c in CLASSES:
            (support / c).mkdir(parents=True, exist_ok=True)
            for i in range(k):
                (support / c / f"{i}.png").write_bytes((work / "support_pool" / c / f"{i}.png").read_bytes())
        cells = []
        for method, tune, desc in (("templates", False, None), ("templates", True, None), ("cbd", False, str(DESCRIPTORS))):
            if tune and k == 1:
                cells.append("n/a (LOO needs 2 shots)")
                continue
            opts = MethodOptions(descriptors=desc, refiners=RefinerOptions(support=support, tune=tune))
            res = clf.predict(feats, CLASSES, method, opts)
            note = f" (α={res.stats['tip_alpha']}, β={res.stats['tip_beta']})" if tune else ""
            cells.append(f"{100 * scores(res, truth)['acc']:.1f}{note}")
        print(f"| {k} | {100 * zs_t:.1f} | {cells[0]} | {cells[1]} | {100 * zs_c:.1f} | {cells[2]} |")

    # Self cache (TFUP-style, no labels)
    res = clf.predict(feats, CLASSES, "cbd", MethodOptions(descriptors=str(DESCRIPTORS), refiners=RefinerOptions(self_cache=True)))
    print(f"\ncbd + self cache (TFUP-style, no labels): {100 * scores(res, truth)['acc']:.1f} % (cbd alone {100 * zs_c:.1f} %)")
    self_cache_table(clf, work, args)

    # Fréchet mean: prompt only some classes, predict over all twelve
    held_out = ["quintor", "vostrel", "trelloq", "skarnel"]  # one of each one-attribute pair, never prompted
    observed = [c for c in CLASSES if c not in held_out]
    dist_file = write_attribute_distances(work / "hamming.csv")
    idx = [i for i, t in enumerate(truth) if t in held_out]
    sub = type(feats)([feats.records[i] for i in idx], feats.feats[idx], [], 0)
    sub_truth = [truth[i] for i in idx]
    print(f"\nFréchet mean: prompted {len(observed)} classes, label space all {len(CLASSES)}; "
          f"{len(idx)} images of the {len(held_out)} never-prompted classes")
    half = clf.model.logit_scale / 2
    for label, ref in [
        ("Hamming distance file, model scale", RefinerOptions(distances=dist_file, label_space=CLASSES)),
        (f"Hamming distance file, scale {half:.0f}", RefinerOptions(distances=dist_file, label_space=CLASSES, frechet_scale=half)),
        ("self-derived (descriptors), scale {:.0f}".format(half), RefinerOptions(self_metric=True, label_space=CLASSES, frechet_scale=half)),
    ]:
        res = clf.predict(sub, observed, "cbd", MethodOptions(descriptors=str(DESCRIPTORS), refiners=ref))
        preds = [p.label for p in res.ok]
        hit = sum(p == t for p, t in zip(preds, sub_truth)) / len(preds)
        from vlmcls.adapters import expected_squared_distance

        metric = res.label_metric
        esd = expected_squared_distance(preds, sub_truth, metric)
        zs = [p.top_k[0][0] for p in res.ok]
        esd_zs = expected_squared_distance(zs, sub_truth, metric)
        print(f"  {label:<38} held-out accuracy {100 * hit:5.1f} % (chance {100 / len(CLASSES):.1f} %, zero-shot 0.0 %: "
              f"they were never prompted); E[d²] {esd:.3f} vs zero-shot {esd_zs:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
