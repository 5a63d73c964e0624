"""Issue 17 benchmark: one `classify --watch` re-score against what a prompt edit cost before it.

    python bench/bench_watch.py [--repeats 3] [--method fudd]

Measured side by side in one run on the shipped demo world (48 images, 12 classes, the committed descriptors and
pairs, every text feature already in the store): each kind warmed once, then alternated for ``--repeats`` rounds with
the new process (the baseline: what an edit cost before) bracketing the others, medians (``_timing.alternate``):

- watch: the re-score --watch does after an edit (class file read again, text side from the store, scores on the
  image features kept in memory);
- same process: `Classifier.classify` again (image features looked up in the store by file stat);
- new process: `vlmcls classify …` as a fresh process (import, model load, listing, store lookups), which is what
  every edit cost before --watch.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_load, print_machine  # noqa: E402
from _timing import alternate, timed, timed_out  # noqa: E402

DEMO = ROOT / "vlmcls" / "data" / "demo"
MODEL = f"local-dir:{ROOT / 'vlmcls' / 'data' / 'demo_model'}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="fudd", choices=["cbd", "fudd"])
    args = parser.parse_args()
    print_machine()  # the CPU model and flags, and how busy the machine is, with every figure

    import os

    os.environ["VLMCLS_CACHE"] = tempfile.mkdtemp(prefix="vlmcls-bench-watch-")
    from vlmcls import Classifier
    from vlmcls.engines.watch import _score  # the re-score a watch does after each edit
    from vlmcls.engines import LocalEngine, RunRequest
    from vlmcls.methods import MethodOptions

    options = MethodOptions(descriptors=str(DEMO / "descriptors.json"), methods={"fudd": {"pairs": DEMO / "pairs.json"}}
                            if args.method == "fudd" else {})
    classes = str(DEMO / "classes.txt")
    clf = Classifier(MODEL)
    engine = LocalEngine(clf)
    request = RunRequest(str(DEMO / "images"), classes, method=args.method, options=options, top_k=5)
    feats = engine.encode(request)
    first = _score(engine, request, feats, encoded=feats.encoded)  # fills the text store
    command = [sys.executable, "-m", "vlmcls", "classify", str(DEMO / "images"), "--classes", classes, "--method",
               args.method, "--descriptors", str(DEMO / "descriptors.json"), "--pairs", str(DEMO / "pairs.json"),
               "--model", MODEL, "-q", "-o", str(Path(os.environ["VLMCLS_CACHE"]) / "p.jsonl")]

    def watch() -> float:
        t, again = timed_out(lambda: _score(engine, request, feats, encoded=0))
        assert [p.label for p in again.predictions] == [p.label for p in first.predictions]
        return t

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rounds = alternate(lambda: timed(lambda: subprocess.run(command, check=True, env=env)),
                       {"watch": watch,
                        "same process": lambda: timed(lambda: clf.classify(str(DEMO / "images"), classes,
                                                                            method=args.method, options=options))},
                       args.repeats, name="new process", warm_measured=True)
    watch_s = rounds.median("watch")
    print(f"demo world, method {args.method}, {len(feats.records)} images, {rounds.method()}")
    for name in ("watch", "same process", "new process"):
        median = rounds.median(name)
        print(f"  {name:13s} {median:7.3f} s   ({median / watch_s:6.1f}× the watch re-score)  "
              f"{rounds.describe(name)}")
    print(f"  new process drift max/min {rounds.drift():.2f}")
    print_load("end")


if __name__ == "__main__":
    main()
