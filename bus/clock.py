"""Clocks and fixed-rate loops that run the same node code in realtime and in lockstep.

A node only ever asks its ``Clock`` two things: ``now()`` and ``sleep_until(t)``. ``RealtimeClock``
answers with the monotonic clock and a precise sleep; ``LockstepClock`` answers with simulated time that
moves only when a coordinator says so, which makes runs deterministic (tests, evaluation).

``RateKeeper`` turns either clock into a fixed-rate loop with absolute deadlines ``t0 + k / hz``: a late
tick does not push later ones back, so the average rate does not drift. ``PhaseLock`` nudges such a loop until
its ticks fall just after a same-rate source's messages (a controller reading a sensor).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_SPIN_S = 1e-3


@runtime_checkable
class Clock(Protocol):
    """What node code may ask of time; seconds, monotonic, never going back."""

    def now(self) -> float: ...

    def sleep_until(self, deadline: float) -> None: ...


def precise_sleep_until(deadline: float, spin_s: float = DEFAULT_SPIN_S) -> None:
    """Sleep on ``time.monotonic`` until ``deadline``: OS sleep, then busy-spin the last ``spin_s``.

    ``time.sleep`` alone wakes 50-100+ us late on Linux (timer slack, scheduling); spinning the final
    stretch buys precision for ``spin_s`` of CPU per call.
    """
    remaining = deadline - time.monotonic()
    if remaining > spin_s:
        time.sleep(remaining - spin_s)
    while time.monotonic() < deadline:
        pass


class RealtimeClock:
    """Monotonic time; ``sleep_until`` sleeps then spins the last ``spin_s`` seconds."""

    def __init__(self, spin_s: float = DEFAULT_SPIN_S) -> None:
        if spin_s < 0:
            raise ValueError(f"spin_s={spin_s} must be >= 0")
        self.spin_s = spin_s

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        precise_sleep_until(deadline, self.spin_s)


class LockstepClock:
    """Simulated time that advances only through ``advance``/``advance_to`` (a coordinator's tick).

    Time is kept in integer nanoseconds, so a thousand ``advance(0.001)`` land exactly on 1.0 and two runs
    with the same ticks see bit-identical times.

    ``sleep_until(t)`` returns once time reaches ``t``. Until then it either calls ``tick_source`` (a
    blocking callable that waits for the coordinator's next tick, e.g. over a ``bus.transport.Server``,
    and calls ``advance``), or, without one, waits for another thread to advance the clock, for at most
    ``wait_timeout`` seconds of real time (None: forever) before raising ``TimeoutError``.
    """

    def __init__(
        self,
        start: float = 0.0,
        tick_source: Callable[[], None] | None = None,
        wait_timeout: float | None = None,
    ) -> None:
        self._ns = _to_ns(start)
        self.tick_source = tick_source
        self.wait_timeout = wait_timeout
        self._changed = threading.Condition()

    def now(self) -> float:
        return self._ns / 1e9

    def advance(self, dt: float) -> float:
        """Move time forward by ``dt`` >= 0 seconds; returns the new time."""
        step = _to_ns(dt)
        if step < 0:
            raise ValueError(f"lockstep time cannot go back (dt={dt})")
        with self._changed:
            self._ns += step
            self._changed.notify_all()
        return self.now()

    def advance_to(self, t: float) -> float:
        """Set time to ``t`` (>= now); returns it."""
        target = _to_ns(t)
        with self._changed:
            if target < self._ns:
                raise ValueError(f"lockstep time cannot go back from {self.now()} to {t}")
            self._ns = target
            self._changed.notify_all()
        return self.now()

    def sleep_until(self, deadline: float) -> None:
        target = _to_ns(deadline)
        if self.tick_source is not None:
            while self._ns < target:
                self.tick_source()
            return
        with self._changed:
            if not self._changed.wait_for(lambda: self._ns >= target, timeout=self.wait_timeout):
                raise TimeoutError(
                    f"lockstep clock stuck at {self.now():.9f} s waiting for {deadline:.9f} s: "
                    f"nothing advanced it within {self.wait_timeout} s"
                )


def _to_ns(t: float) -> int:
    if not math.isfinite(t):
        raise ValueError(f"time {t} must be finite")
    return round(t * 1e9)


@dataclass(frozen=True)
class RateStats:
    """Timing of a ``RateKeeper`` loop; periods and errors in seconds.

    ``lateness_*``: how far after its deadline a sleep woke (sleep precision; overrun ticks excluded).
    ``period_err_*``: |actual period - nominal| between consecutive wake-ups (what the loop body sees).
    Percentiles cover the last ``window`` ticks.
    """

    ticks: int
    overruns: int
    missed: int
    mean_hz: float
    lateness_p50: float
    lateness_p99: float
    period_err_p50: float
    period_err_p99: float


class RateKeeper:
    """Fixed-rate loop on absolute deadlines: call ``sleep()`` once per iteration.

    Overrun (the body took longer than a period): ``sleep`` returns at once and counts it; if a whole
    period or more was lost, the missed deadlines are skipped (counted in ``missed``) instead of
    running a burst of back-to-back ticks to catch up.

    Args:
        hz: loop rate.
        clock: ``RealtimeClock(spin_s)`` when None; with a clock given, its own spin setting applies.
        spin_s: busy-spin window before each deadline for the default realtime clock.
        window: ticks kept for the percentile statistics (preallocated; the loop allocates nothing).
    """

    def __init__(
        self,
        hz: float,
        clock: Clock | None = None,
        *,
        spin_s: float = DEFAULT_SPIN_S,
        window: int = 4096,
    ) -> None:
        if not hz > 0:
            raise ValueError(f"rate hz={hz} must be > 0")
        self.hz = hz
        self.period = 1.0 / hz
        self.clock: Clock = clock if clock is not None else RealtimeClock(spin_s)
        self._lateness = np.zeros(window)
        self._period_err = np.zeros(window)
        self.reset()

    def reset(self) -> None:
        """Re-anchor the deadline grid at the clock's now (e.g. after a pause) and clear statistics."""
        self._t0 = self.clock.now()
        self._k = 0
        self._last_wake = self._t0
        self.ticks = 0
        self.overruns = 0
        self.missed = 0
        self._n_late = 0
        self._n_period = 0

    @property
    def next_deadline(self) -> float:
        return self._t0 + (self._k + 1) * self.period

    @property
    def last_wake(self) -> float:
        """When the last ``sleep`` returned (clock time)."""
        return self._last_wake

    def shift(self, dt: float) -> None:
        """Move every later deadline by ``dt`` seconds (a phase correction; ``PhaseLock``). A shift of ``dt`` changes
        one period by ``dt``, which the period-error statistics see."""
        if not math.isfinite(dt):
            raise ValueError(f"shift dt={dt} must be finite")
        self._t0 += dt

    def sleep(self) -> bool:
        """Wait for the next deadline; returns False when it had already passed (overrun)."""
        self._k += 1
        deadline = self._t0 + self._k * self.period
        now = self.clock.now()
        on_time = now <= deadline
        if on_time:
            self.clock.sleep_until(deadline)
            wake = self.clock.now()
            self._lateness[self._n_late % self._lateness.size] = wake - deadline
            self._n_late += 1
        else:
            self.overruns += 1
            wake = now
            behind = int((now - deadline) // self.period)  # whole periods lost
            if behind > 0:
                self._k += behind
                self.missed += behind
        self._period_err[self._n_period % self._period_err.size] = abs(wake - self._last_wake - self.period)
        self._n_period += 1
        self._last_wake = wake
        self.ticks += 1
        return on_time

    def stats(self) -> RateStats:
        elapsed = self._last_wake - self._t0
        late = self._lateness[: min(self._n_late, self._lateness.size)]
        err = self._period_err[: min(self._n_period, self._period_err.size)]
        return RateStats(
            ticks=self.ticks,
            overruns=self.overruns,
            missed=self.missed,
            mean_hz=self.ticks / elapsed if elapsed > 0 else math.nan,
            lateness_p50=_percentile(late, 50),
            lateness_p99=_percentile(late, 99),
            period_err_p50=_percentile(err, 50),
            period_err_p99=_percentile(err, 99),
        )


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan


class PhaseLock:
    """Keeps a loop's ticks ``lead_s`` after the messages of a source that publishes at the loop's own rate.

    Two fixed-rate loops on one host (a sensor publishing at 250 Hz, a controller ticking at 250 Hz) keep whatever
    phase they started with: the controller reads a reading that is anywhere from 0 to one period old, a different
    age in every run, so the reaction time varies by a period. Told the wake time and the stamp of each *new*
    reading, this nudges the ``RateKeeper``'s grid until wake - stamp settles at ``lead_s``: the reading is fresh and
    the wait is short. ``lead_s`` must cover the publication's own jitter, or readings that come late are missed
    and read one period later.

    Per reading: error = wake - stamp - lead, wrapped into [-period/2, period/2) (a reading that just missed the
    tick looks a period old: the tick should move *later*, not a period earlier); the grid moves by -gain * error,
    at most ``max_step_s`` per reading, so the loop's period changes by no more than that. After ``snap()`` (call it
    when the grid was re-anchored anyway) the next reading moves it by the whole error at once. Readings whose
    interval is not the loop's period (a slower source, a dropped reading) are not used.
    """

    def __init__(self, rate: RateKeeper, lead_s: float, gain: float = 0.25, max_step_s: float = 50e-6) -> None:
        if not 0 <= lead_s < rate.period:
            raise ValueError(f"lead_s={lead_s} must be in [0, the loop period {rate.period})")
        if not (0 < gain <= 1 and max_step_s > 0):
            raise ValueError(f"need 0 < gain <= 1 and max_step_s > 0, got {gain} and {max_step_s}")
        self.rate = rate
        self.lead_s = lead_s
        self.gain = gain
        self.max_step_s = max_step_s
        self.last_error = math.nan
        self._last_stamp = math.nan
        self._snap = True

    def snap(self) -> None:
        """Let the next usable reading correct the whole phase error in one move."""
        self._snap = True

    def update(self, wake: float, stamp: float) -> float:
        """Feed one new reading (its stamp) as seen at a tick that woke at ``wake``; returns the shift applied."""
        period = self.rate.period
        interval, self._last_stamp = stamp - self._last_stamp, stamp
        if not abs(interval - period) < 0.25 * period:  # NaN (first reading) included
            return 0.0
        error = (wake - stamp - self.lead_s + period / 2) % period - period / 2
        self.last_error = error
        if self._snap:
            dt, self._snap = -error, False
        else:
            dt = max(-self.max_step_s, min(self.max_step_s, -self.gain * error))
        self.rate.shift(dt)
        return dt
