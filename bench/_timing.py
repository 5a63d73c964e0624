"""How every bench in bench/ times a candidate against its baseline: warm, bracketed, alternated rounds, medians.

On this shared 2-core box a rate moves by up to 2x between minutes (other people's tests) and a fresh process runs
its first tens of seconds at about half speed. So a figure is only trusted when

- the baseline is **warmed**: one run first, not counted (``warmup``; the candidates too with ``warm_measured``),
- the candidates **alternate** with the baseline, round after round (baseline, every candidate, baseline, …),
- the baseline **brackets** them: it also runs once more after the last round, so every candidate run has a
  baseline run before and after it, and the baseline's spread shows how much the machine drifted,
- **medians** are compared (each run's value is kept and printed as a spread).

:func:`alternate` does this and returns a :class:`Rounds`; :data:`METHOD` is the sentence a bench prints beside its
figures. A measured callable returns seconds (use :func:`timed`) or any value a ``key`` maps to a number (a rate,
a dict a child process printed).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

METHOD = ("medians of {rounds} alternated rounds after a warm-up, the baseline ({baseline}) run before and after "
          "every candidate run (bracketed)")


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_out(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, what ``fn()`` returned)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def spread(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    """``median 12.30 s (min 11.90, max 14.00, n 5)``."""
    v = [x * scale for x in values]
    return f"median {statistics.median(v):.2f} {unit} (min {min(v):.2f}, max {max(v):.2f}, n {len(v)})"


@dataclass
class Rounds:
    """What :func:`alternate` measured: every baseline run (``rounds + 1``) and every candidate run (``rounds``)."""

    baseline_name: str
    baseline: list = field(default_factory=list)
    runs: dict[str, list] = field(default_factory=dict)
    key: Callable[[object], float] | None = None

    def values(self, name: str | None = None, key: Callable[[object], float] | None = None) -> list[float]:
        """The numbers of ``name``'s runs (the baseline's for ``None`` or the baseline's name), through ``key``."""
        raw = self.baseline if name in (None, self.baseline_name) else self.runs[name]
        key = key or self.key
        return [float(key(v)) if key else float(v) for v in raw]

    def median(self, name: str | None = None, key: Callable[[object], float] | None = None) -> float:
        return statistics.median(self.values(name, key))

    def ratio(self, numerator: str | None, denominator: str | None = None,
              key: Callable[[object], float] | None = None) -> float:
        """``median(numerator) / median(denominator)`` (``None``: the baseline). For seconds,
        ``ratio(None, "x")`` is how many times faster ``x`` ran than the baseline."""
        return self.median(numerator, key) / self.median(denominator, key)

    def drift(self, key: Callable[[object], float] | None = None) -> float:
        """Slowest / fastest baseline run: how much the machine moved during the rounds (1.0: not at all)."""
        v = self.values(None, key)
        return max(v) / min(v)

    def describe(self, name: str | None = None, unit: str = "s", scale: float = 1.0,
                 key: Callable[[object], float] | None = None) -> str:
        return spread(self.values(name, key), unit, scale)

    def method(self) -> str:
        return METHOD.format(rounds=len(self.baseline) - 1, baseline=self.baseline_name)

    def print_summary(self, unit: str = "s", scale: float = 1.0, key: Callable[[object], float] | None = None) -> None:
        """One line per entry (its spread), the baseline's drift, and how it was measured."""
        width = max(len(n) for n in [self.baseline_name, *self.runs])
        print(f"  {self.baseline_name:<{width}}  {self.describe(None, unit, scale, key)}  (baseline, bracketing; "
              f"drift max/min {self.drift(key):.2f})")
        for name in self.runs:
            print(f"  {name:<{width}}  {self.describe(name, unit, scale, key)}")
        print(f"  ({self.method()})", flush=True)


def alternate(baseline: Callable[[], object], measured: dict[str, Callable[[], object]], rounds: int, *,
              name: str = "baseline", warmup: bool = True, warm_measured: bool = False,
              key: Callable[[object], float] | None = None, verbose: bool = True) -> Rounds:
    """Run ``baseline``, every ``measured`` run, ``baseline``, … for ``rounds`` rounds and end with ``baseline``.

    ``warmup``: one baseline run first, not counted (allocator, oneDNN primitives, page cache, imports);
    ``warm_measured``: each measured run once too, not counted (leave it off where a run must start cold by design,
    e.g. from an empty store, and costs a full run). ``verbose`` prints each round's values as it ends."""
    if warmup:
        baseline()
    if warm_measured:
        for run in measured.values():
            run()
    out = Rounds(name, [], {n: [] for n in measured}, key)

    def show(v: object) -> str:
        v = key(v) if key else v
        return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)

    for i in range(rounds):
        out.baseline.append(baseline())
        for n, run in measured.items():
            out.runs[n].append(run())
        if verbose:
            print(f"  round {i + 1}/{rounds}: {name} {show(out.baseline[-1])}, "
                  + ", ".join(f"{n} {show(v[-1])}" for n, v in out.runs.items()), flush=True)
    out.baseline.append(baseline())
    if verbose:
        print(f"  closing {name} {show(out.baseline[-1])}", flush=True)
    return out


def bracketed(baseline: Callable[[], float], measured: dict[str, Callable[[], float]], rounds: int,
              warmup: bool = True) -> tuple[list[float], dict[str, list[float]]]:
    """:func:`alternate` as (baseline values, {name: values}), for callers that want the lists."""
    got = alternate(baseline, measured, rounds, warmup=warmup, verbose=False)
    return got.baseline, got.runs
