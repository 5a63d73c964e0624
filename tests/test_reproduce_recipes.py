"""bench/reproduce.py's recipes stay runnable as the CLI changes: every command parses, every dataset id is well
formed (offline; running them needs network and a GPU)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "reproduce.py"


def _reproduce():
    spec = importlib.util.spec_from_file_location("vlmcls_bench_reproduce", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_recipe_parses_and_names_a_well_formed_dataset(capsys):
    reproduce = _reproduce()
    assert reproduce.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == len(reproduce.RECIPES) >= 5


def test_a_recipe_with_a_retired_flag_or_a_bad_dataset_id_is_caught():
    reproduce = _reproduce()
    good = reproduce.RECIPES[0]
    stale = reproduce.Recipe("stale", good.args.replace("--dataset split=test", "--bogus-flag test"), good.dataset,
                             None, 0.01, "test")
    assert any("does not parse" in p for p in reproduce.check(stale))
    bad_id = reproduce.Recipe("bad", good.args, "hf-dataset:not a dataset", None, 0.01, "test")
    assert any("is not hf-dataset:ORG/NAME" in p for p in reproduce.check(bad_id))
