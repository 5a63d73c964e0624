"""Issue 17 benchmark: one `classify --watch` re-score against what a prompt edit cost before it.

    python bench/bench_watch.py [--repeats 3] [--method fudd]

Measured side by side in one run, alternating, on the shipped demo world (48 images, 12 classes, the committed
descriptors and pairs, every text feature already in the store):

- watch: the re-score --watch does after an edit (class file read again, text side from the store, scores on the
  image features kept in memory);
- same process: `Classifier.classify` again (image features looked up in the store by file stat);
- new process: `vlmcls classify …` as a fresh process (import, model load, listing, store lookups), which is what
  every edit cost before --watch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "vlmcls" / "data" / "demo"
MODEL = f"local-dir:{ROOT / 'vlmcls' / 'data' / 'demo_model'}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="fudd", choices=["cbd", "fudd"])
    args = parser.parse_args()
    from _machine import print_machine

    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure

    import os

    os.environ["VLMCLS_CACHE"] = tempfile.mkdtemp(prefix="vlmcls-bench-watch-")
    from vlmcls import Classifier
    from vlmcls.cli.watch import _score
    from vlmcls.methods import MethodOptions

    options = MethodOptions(descriptors=str(DEMO / "descriptors.json"),
                            extra={"pairs_file": str(DEMO / "pairs.json")})
    classes = str(DEMO / "classes.txt")
    clf = Classifier(MODEL)
    feats = clf.encode_images(str(DEMO / "images"))
    first = _score(clf, feats, classes, args.method, options, 5, encoded=feats.encoded)  # fills the text store
    command = [sys.executable, "-m", "vlmcls", "classify", str(DEMO / "images"), "--classes", classes, "--method",
               args.method, "--descriptors", str(DEMO / "descriptors.json"), "--pairs", str(DEMO / "pairs.json"),
               "--model", MODEL, "-q", "-o", str(Path(os.environ["VLMCLS_CACHE"]) / "p.jsonl")]
    times: dict[str, list[float]] = {"watch": [], "same process": [], "new process": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        again = _score(clf, feats, classes, args.method, options, 5, encoded=0)
        times["watch"].append(time.perf_counter() - started)
        assert [p.label for p in again.predictions] == [p.label for p in first.predictions]
        started = time.perf_counter()
        clf.classify(str(DEMO / "images"), classes, method=args.method, options=options)
        times["same process"].append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        times["new process"].append(time.perf_counter() - started)
    watch = statistics.median(times["watch"])
    print(f"demo world, method {args.method}, {len(feats.records)} images, medians of {args.repeats} alternating runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:13s} {median:7.3f} s   ({median / watch:6.1f}× the watch re-score)")


if __name__ == "__main__":
    main()
