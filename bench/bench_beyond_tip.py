"""Beyond Tip-Adapter (issue 29): top-1 and ECE of every refiner on the demo world, and each refiner's extra time.

    python bench/bench_beyond_tip.py [--per-class 20] [--seed 1234] [--speed-images 2000] [--skip-speed]

Table: held-out demo images (12 invented classes), first stages name / templates / CbD / CbD+FuDD (the committed
pair file, no LLM) × refiners none / tip / tfup / transclip / gda / tda, with 1, 4 and 16 support shots per class
for tip and gda (drawn from another seed than the test images). ECE: 15 equal-width bins.

Speed: a random-init ViT-B/32-shaped SigLIP (transformers, 768-d, patch 32, 224 px; nothing downloaded), N random
images and 100 classes; the forward pass is the image tower's encode of the N images, and each refiner's extra time
is ``predict(name+X) − predict(name)`` on the stored features (gda's 4 shots per class are encoded once before
timing: the support folder is cached like the images): every spec run once first, not counted, then ``--repeats``
alternated rounds with the ``name`` head (the baseline) before and after every refiner run; medians. The forward
pass is one encode of the N images from an empty store (a first run, cold by design).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate, timed  # noqa: E402

from vlmcls import Classifier  # noqa: E402
from vlmcls.adapters.metrics import expected_calibration_error  # noqa: E402
from vlmcls.demo.render import render_dataset  # noqa: E402
from vlmcls.demo.world import DEMO_CLASSES  # noqa: E402
from vlmcls.report.evaluate import options_for_spec  # noqa: E402
from vlmcls.methods import MethodOptions  # noqa: E402

DEMO = ROOT / "vlmcls" / "data"
MODEL = f"local-dir:{DEMO / 'demo_model'}"
CLASSES = list(DEMO_CLASSES)
HEADS = [("name", "name"), ("templates", "templates"), ("CbD", "cbd"), ("CbD+FuDD", "cbd+fudd")]
SHOTS = (1, 4, 16)


def scored(result, truth: list[int]) -> tuple[float, float]:
    probs = np.asarray(result.probs, dtype=np.float64)
    return float((probs.argmax(1) == np.asarray(truth)).mean()), expected_calibration_error(probs, truth)


def demo_table(work: Path, per_class: int, seed: int) -> None:
    clf = Classifier(MODEL, device="cpu", cache_dir=work / "cache")
    render_dataset(work / "test", CLASSES, per_class, seed)
    render_dataset(work / "pool", CLASSES, max(SHOTS), seed + 7919)
    supports = {}
    for shots in SHOTS:  # the first `shots` images of each class of one pool
        folder = work / f"support{shots}"
        for c in CLASSES:
            (folder / c).mkdir(parents=True, exist_ok=True)
            for i in range(shots):
                (folder / c / f"{i}.png").write_bytes((work / "pool" / c / f"{i}.png").read_bytes())
        supports[shots] = folder
    feats = clf.encode_images(work / "test")
    truth = [CLASSES.index(r.label) for r in feats.records]
    base = {"cbd": {"descriptors": str(DEMO / "demo" / "descriptors.json")},
            "fudd": {"pairs": str(DEMO / "demo" / "pairs.json"), "k": 10}}
    columns = ["none", *[f"tip {s}" for s in SHOTS], "tfup", "transclip", *[f"gda {s}" for s in SHOTS], "tda"]
    print(f"\n{len(truth)} held-out demo images, {len(CLASSES)} classes; top-1 % / ECE %\n")
    print("| first stage | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, head in HEADS:
        cells = []
        for column in columns:
            name, _, shots = column.partition(" ")
            methods = dict(base)
            if name in ("tip", "gda"):
                methods[name] = {"support": str(supports[int(shots)])}
            spec = head if name == "none" else f"{head}+{name}"
            options = options_for_spec(spec, MethodOptions(methods=methods))
            acc, ece = scored(clf.predict(feats, CLASSES, spec, options), truth)
            cells.append(f"{100 * acc:.1f} / {100 * ece:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def make_siglip_b32(folder: Path) -> Path:
    """A random-init SigLIP with ViT-B/32's image tower (and a 2-layer text tower: texts are not timed)."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, CLIPTokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import write_clip_bpe_tokenizer_files

    torch.manual_seed(0)
    config = SiglipConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 2, "num_attention_heads": 12,
                     "vocab_size": 49408, "max_position_embeddings": 64},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
    )
    SiglipModel(config).eval().save_pretrained(folder)
    vocab, merges = write_clip_bpe_tokenizer_files(folder / "_bpe")
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 224, "width": 224}),
                    tokenizer=CLIPTokenizer(str(vocab), str(merges))).save_pretrained(folder)
    return folder


def speed(work: Path, count: int, repeats: int) -> None:
    from PIL import Image

    model = make_siglip_b32(work / "siglip_b32")
    rng = np.random.default_rng(0)
    classes = [f"class {i}" for i in range(100)]
    for i in range(count):
        folder = work / "speed" / classes[i % 100].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    for i in range(400):
        folder = work / "speed_support" / f"class {i % 100}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    clf = Classifier(f"hf:{model}", device="cpu", cache_dir=work / "speed_cache")
    started = time.perf_counter()
    feats = clf.encode_images(work / "speed")
    forward = time.perf_counter() - started
    clf.encode_images(work / "speed_support")  # cached for gda
    support = str(work / "speed_support")
    options = {"gda": {"support": support}, "tip": {"support": support}}
    refiners = ("tip", "tfup", "transclip", "gda", "tda")

    def run(spec: str):
        opts = options_for_spec(spec, MethodOptions(methods=options))
        return lambda: timed(lambda: clf.predict(feats, classes, spec, opts))

    rounds = alternate(run("name"), {r: run(f"name+{r}") for r in refiners}, repeats, name="name",
                       warm_measured=True, verbose=False)
    head = rounds.median()
    print(f"\nSigLIP ViT-B/32-shaped (random), {len(feats.records)} images, 100 classes: forward pass "
          f"{forward:.1f} s, name head {head:.3f} s\n")
    print("| refiner | extra s | extra / forward pass |")
    print("|---|---|---|")
    for refiner in refiners:
        extra = rounds.median(refiner) - head
        print(f"| {refiner} | {extra:.3f} | {extra / forward:.4f} |", flush=True)
    rounds.print_summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--speed-images", type=int, default=2000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds of the speed part")
    args = parser.parse_args()
    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_table:
            demo_table(work, args.per_class, args.seed)
        if not args.skip_speed:
            speed(work, args.speed_images, args.repeats)
    print_load("end")


if __name__ == "__main__":
    main()
