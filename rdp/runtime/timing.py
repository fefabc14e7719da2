"""Preallocated timing windows and the JSON lines the nodes report on stdout."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np


class Window:
    """The last ``size`` samples of one quantity (a ring, no allocation per ``add``) and their percentiles."""

    def __init__(self, size: int = 4096) -> None:
        self._x = np.zeros(size)
        self._n = 0
        self.total = 0

    def add(self, x: float) -> None:
        self._x[self._n % self._x.size] = x
        self._n += 1
        self.total += 1

    def values(self) -> np.ndarray:
        return self._x[: min(self._n, self._x.size)]

    def summary(self, scale: float = 1.0, digits: int = 4) -> dict[str, float | int | None]:
        v = self.values()
        if not v.size:
            return {"n": 0, "p50": None, "p99": None, "max": None}
        p50, p99 = np.percentile(v, [50, 99])
        return {"n": self.total, "p50": round(float(p50) * scale, digits), "p99": round(float(p99) * scale, digits),
                "max": round(float(v.max()) * scale, digits)}


class Trace:
    """Rows of (time, value...) kept for the timing plot; bounded, so a long run cannot grow without limit."""

    def __init__(self, columns: tuple[str, ...], capacity: int = 200_000) -> None:
        self.columns = columns
        self._rows = np.full((capacity, len(columns)), math.nan)
        self._n = 0

    def add(self, *values: float) -> None:
        if self._n < self._rows.shape[0]:
            self._rows[self._n] = values
            self._n += 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {c: self._rows[: self._n, i].copy() for i, c in enumerate(self.columns)}


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout (the launcher reads these); flushed at once."""
    print(json.dumps(record), flush=True)


class Every:
    """True once per ``period`` seconds of wall time."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self._next = time.monotonic() + self.period

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.period
        return True


class LoopGc:
    """Python's cyclic garbage collector kept out of a loop's ticks, and its pauses measured (``gc.callbacks``).

    Left automatic, a collection runs inside whichever allocation crosses the threshold, often mid-tick before the
    command goes out (lift: ~7 per second, 0.2 ms typical, 1 ms p99). ``manual=True``: everything alive at start-up
    (torch brings hundreds of thousands of objects) is frozen out of the collector's sight (``gc.freeze``), automatic
    collection is off, and the loop calls ``idle()`` after each tick's output, which collects the young generations
    when they are due; ``full()`` collects everything (between episodes). Cycles are still freed, at a time the
    loop chooses."""

    def __init__(self, manual: bool, young_threshold: int = 700) -> None:
        import gc

        self._gc = gc
        self.manual = manual
        self.young_threshold = young_threshold
        self.pauses = Window()
        self.by_generation = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)
        if manual:
            gc.collect()
            gc.freeze()
            gc.disable()

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.add(time.perf_counter() - self._t0)
            self.by_generation[min(info.get("generation", 2), 2)] += 1

    def idle(self) -> None:
        """Collect generations 0 and 1 if enough allocations piled up since the last collection (manual mode)."""
        if self.manual and self._gc.get_count()[0] >= self.young_threshold:
            self._gc.collect(1)

    def full(self) -> None:
        if self.manual:
            self._gc.collect()

    def summary(self) -> dict[str, Any]:
        return {**self.pauses.summary(1e3), "by_generation": list(self.by_generation), "manual": self.manual}

    def close(self) -> None:
        if self._callback in self._gc.callbacks:
            self._gc.callbacks.remove(self._callback)
        if self.manual:
            self._gc.enable()
