"""Clocks and RateKeeper. Timing bounds are loose on purpose: this runs on a loaded 2-core machine;
precise timing goals belong in benchmarks."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from bus.clock import Clock, LockstepClock, PhaseLock, RateKeeper, RealtimeClock, precise_sleep_until


def node_loop(clock: Clock, hz: float, ticks: int) -> tuple[list[float], RateKeeper]:
    """The same node code for both clock modes: a fixed-rate loop that records when it ran."""
    rate = RateKeeper(hz, clock)
    stamps = []
    for _ in range(ticks):
        rate.sleep()
        stamps.append(clock.now())
    return stamps, rate


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(RealtimeClock(), Clock)
    assert isinstance(LockstepClock(), Clock)


def test_precise_sleep_never_wakes_early() -> None:
    for delay in (0.0, 0.0005, 0.003):
        deadline = time.monotonic() + delay
        precise_sleep_until(deadline, spin_s=0.001)
        assert time.monotonic() >= deadline


def test_rate_keeper_average_rate() -> None:
    stamps, rate = node_loop(RealtimeClock(spin_s=0.0005), hz=200.0, ticks=60)
    stats = rate.stats()
    assert stats.ticks == 60
    assert 200.0 * 0.8 < stats.mean_hz < 200.0 * 1.05  # never faster than asked; late ticks are skipped
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert 0.0 <= stats.lateness_p50 <= stats.lateness_p99
    assert stats.period_err_p50 <= stats.period_err_p99
    assert stats.overruns <= 60


def test_rate_keeper_keeps_the_grid_after_an_overrun() -> None:
    rate = RateKeeper(100.0, RealtimeClock(spin_s=0.0))
    t0 = rate.next_deadline - rate.period
    assert rate.sleep()
    time.sleep(0.035)  # the body overran by 3+ periods
    assert not rate.sleep()
    assert rate.overruns == 1 and rate.missed >= 2
    rate.sleep()
    k = (rate.next_deadline - t0) / rate.period
    assert abs(k - round(k)) < 1e-6  # deadlines stay on t0 + k / hz: no drift
    assert rate.ticks == 3


def test_rate_keeper_rejects_bad_rate() -> None:
    with pytest.raises(ValueError):
        RateKeeper(0.0)


def test_lockstep_time_is_exact_and_monotonic() -> None:
    clock = LockstepClock(start=1.0)
    for _ in range(1000):
        clock.advance(0.001)
    assert clock.now() == 2.0
    assert clock.advance_to(2.5) == 2.5
    with pytest.raises(ValueError):
        clock.advance(-0.1)
    with pytest.raises(ValueError):
        clock.advance_to(2.0)
    with pytest.raises(ValueError):
        clock.advance(math.nan)


def test_lockstep_rate_keeper_with_tick_source_is_deterministic() -> None:
    def run() -> tuple[list[float], RateKeeper]:
        clock = LockstepClock(tick_source=lambda: clock.advance(0.001))  # coordinator ticks at 1 kHz
        return node_loop(clock, hz=250.0, ticks=50)

    (first, rate), (second, _) = run(), run()
    assert first == second
    assert first[0] == 0.004 and first[-1] == 0.2
    stats = rate.stats()
    assert (stats.overruns, stats.missed) == (0, 0)
    assert stats.lateness_p99 < 1e-12 and stats.period_err_p99 < 1e-12  # float rounding only
    assert stats.mean_hz == pytest.approx(250.0)


def test_lockstep_sleep_waits_for_a_coordinator_thread() -> None:
    """Node in a thread, coordinator here: time moves only when the coordinator ticks."""
    clock = LockstepClock(wait_timeout=5.0)
    rate = RateKeeper(100.0, clock)
    woke: list[float] = []

    def node() -> None:
        for _ in range(5):
            rate.sleep()
            woke.append(clock.now())

    thread = threading.Thread(target=node)
    thread.start()
    try:
        for i in range(5):
            time.sleep(0.002)
            assert len(woke) == i  # the node is blocked until the tick
            clock.advance(0.01)
            deadline = time.monotonic() + 5.0
            while len(woke) == i and time.monotonic() < deadline:
                time.sleep(0.0005)
    finally:
        thread.join(timeout=5.0)
    assert not thread.is_alive()
    assert woke == [0.01, 0.02, 0.03, 0.04, 0.05]


def test_lockstep_sleep_without_coordinator_times_out() -> None:
    clock = LockstepClock(wait_timeout=0.02)
    clock.sleep_until(0.0)  # already there: returns at once
    with pytest.raises(TimeoutError, match="stuck"):
        clock.sleep_until(0.5)


class _JumpClock:
    """A clock whose sleep lands exactly on the deadline: a loop's ticks at their nominal times, nothing else."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)


def _locked_ages(source_phase: float, *, lead: float = 1e-3, period: float = 4e-3, source_period: float = 4e-3,
                 transit: float = 1e-4, ticks: int = 400) -> tuple[np.ndarray, list[float]]:
    """Run a 250 Hz loop against a source publishing at ``source_phase + k * source_period`` (readings usable
    ``transit`` after their stamp); the age wake - stamp of the newest reading at every tick, and every shift."""
    clock = _JumpClock()
    rate = RateKeeper(1 / period, clock)
    lock = PhaseLock(rate, lead)
    ages, shifts, last = [], [], None
    for _ in range(ticks):
        rate.sleep()
        wake = clock.now()
        k = math.floor((wake - transit - source_phase) / source_period)
        stamp = source_phase + k * source_period
        ages.append(wake - stamp)
        if stamp != last:
            last = stamp
            shifts.append(lock.update(wake, stamp))
    return np.array(ages), shifts


@pytest.mark.parametrize("source_phase", [0.3e-3, 1.0e-3, 2.5e-3, 3.95e-3])
def test_phase_lock_settles_the_reading_age_at_the_lead(source_phase: float) -> None:
    ages, shifts = _locked_ages(source_phase)
    assert np.all(np.abs(ages[-100:] - 1e-3) < 1e-5)  # every late tick reads a reading 1 ms old
    assert shifts[0] == 0.0  # one reading gives no interval yet
    assert all(abs(s) <= 50e-6 + 1e-12 for s in shifts[2:])  # after the first correction (the snap), small steps


def test_phase_lock_without_snap_moves_the_grid_in_small_steps() -> None:
    clock = _JumpClock()
    rate = RateKeeper(250.0, clock)
    lock = PhaseLock(rate, 1e-3, max_step_s=20e-6)
    lock._snap = False
    shifts = []
    for k in range(300):
        rate.sleep()
        shifts.append(lock.update(clock.now(), 3.9e-3 + (k - 1) * 4e-3))
    assert max(abs(s) for s in shifts) <= 20e-6 + 1e-12
    assert abs(lock.last_error) < 1e-5


def test_phase_lock_ignores_a_slower_source() -> None:
    """A loop at twice the source's rate sees a new reading every other tick: no phase to lock to."""
    ages, shifts = _locked_ages(1.0e-3, source_period=8e-3)
    assert all(s == 0.0 for s in shifts)


def test_phase_lock_rejects_a_lead_of_a_period() -> None:
    with pytest.raises(ValueError, match="lead_s"):
        PhaseLock(RateKeeper(250.0), 4e-3)
