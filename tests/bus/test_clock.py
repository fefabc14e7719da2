"""Clocks and RateKeeper. Timing bounds are loose on purpose: this runs on a loaded 2-core machine;
precise timing goals belong in benchmarks."""

from __future__ import annotations

import math
import threading
import time

import pytest

from bus.clock import Clock, LockstepClock, RateKeeper, RealtimeClock, precise_sleep_until


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
