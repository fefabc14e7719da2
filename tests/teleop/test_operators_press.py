"""The scripted operator's contact regulation from displayed force (PressShaping), the teleop node's force-limited
press (sim.press_guard.PressGuard), and the operator's guard against observations of an ended episode."""

from __future__ import annotations

import numpy as np
import pytest

from bus.message import Message
from sim.press_guard import PressGuard, PressGuardConfig
from teleop.operators import PressConfig, PressShaping, ScriptedConfig, displayed_normal_force

K = 1200.0  # N/m, the arm's Cartesian stiffness
DT = 0.02


def shaping(**kw) -> PressShaping:
    return PressShaping(PressConfig(**kw), target_n=10.0, stiffness=K, dt=DT)


def test_press_backs_off_as_the_displayed_force_rises():
    press = shaping(filter_s=0.0)
    for _ in range(50):  # settled at the target force: no correction
        settled = press.update(10.0, searching=True)
    assert settled == pytest.approx(0.0, abs=1e-9)
    offsets = [press.update(f, searching=True) for f in np.linspace(10.0, 40.0, 30)]
    assert all(b < a for a, b in zip(offsets, offsets[1:], strict=False))  # each stronger reading backs off more
    assert offsets[-1] < -0.005  # at 40 N shown, the press is several millimetres shallower than the plan
    # and it comes back once the force falls to the target again
    for _ in range(300):
        back = press.update(10.0, searching=True)
    assert back > offsets[-1]


def test_press_feels_for_a_lost_surface_slowly_and_only_once_the_plan_reached_its_depth():
    cfg = dict(search_speed=0.01, filter_s=0.0)
    approaching, searching = shaping(**cfg), shaping(**cfg)
    a = [approaching.update(0.0, searching=False) for _ in range(50)]
    s = [searching.update(0.0, searching=True) for _ in range(50)]
    # P part: 0 N shown is 10 N under target -> gain_p * 10 / K deeper at once; the integral may not add to it
    assert max(a) == pytest.approx(0.2 * 10.0 / K)
    steps = np.diff(s)
    assert steps.max() <= 0.01 * DT + 1e-12 and steps.min() > 0  # deeper, at most search_speed
    assert s[-1] > a[-1]


def test_press_is_stable_through_a_latency_against_a_stiff_contact():
    """Closed loop through 150 ms of delay: force = K * max(0, offset + 8 mm - surface); the surface rises by 25 mm
    at 30 mm/s (the raise perturbation). The sustained force stays under the 40 N failure limit and settles."""
    press = shaping(filter_s=0.1, gain_p=0.2)
    delay = [0.0] * round(0.15 / DT)
    surface, forces = 0.0, []
    for k in range(600):
        surface = min(0.025, max(0.0, (k * DT - 2.0) * 0.03))
        force = K * max(0.0, delay[0] + 0.008 - surface)
        forces.append(force)
        delay = [*delay[1:], press.update(force, searching=True)]
    window = round(0.1 / DT)
    sustained = np.convolve(forces, np.ones(window) / window, mode="valid")
    assert sustained.max() < 40.0
    assert forces[-1] == pytest.approx(10.0, abs=1.5)


def test_displayed_force_reads_the_press_or_most_of_a_slanted_push():
    assert displayed_normal_force(np.array([0.0, 0.0, -12.0, 0, 0, 0])) == pytest.approx(12.0)
    assert displayed_normal_force(np.array([20.0, 0.0, -5.0, 0, 0, 0])) == pytest.approx(0.75 * np.hypot(20, 5))


def test_press_limiter_retracts_along_the_tool_axis_only_while_over_the_limit():
    limiter = PressGuard(PressGuardConfig(press_force_n=20.0, gain=0.004, p_gain=0.0))
    limiter.reset(1)
    limiter.on_state(np.array([[0.0, 1.0, 0.0, 0.0]]))  # tool z axis = world -z (rotated 180 deg about x)
    target = np.array([[0.5, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0]])
    t = 0.0
    for _ in range(250):  # 1 s at 30 N: 10 N over -> 0.004 * 10 = 40 mm/s, capped at max_retract_m
        t += 0.004
        limiter.on_wrench(np.array([[0.0, 0.0, -30.0, 0, 0, 0]]), t)
    out = limiter.apply(target)
    assert out[0, 2] == pytest.approx(0.1 + 0.03)  # backed off upward (against the tool axis) by 30 mm
    assert np.array_equal(out[0, [0, 1, 3, 4, 5, 6]], target[0, [0, 1, 3, 4, 5, 6]])
    for _ in range(2000):  # under the limit it relaxes back to the operator's command, never past it
        t += 0.004
        limiter.on_wrench(np.array([[0.0, 0.0, -5.0, 0, 0, 0]]), t)
    assert np.array_equal(limiter.apply(target), target)
    off = PressGuard(PressGuardConfig())
    off.reset(1)
    off.on_wrench(np.array([[0.0, 0.0, -100.0, 0, 0, 0]]), 0.004)
    assert off.apply(target) is target


class _Link:
    def __init__(self) -> None:
        self.sent = []

    def send(self, pose, grip, clutch, frame="robot") -> int:
        self.sent.append(clutch.copy())
        return len(self.sent) - 1


def _state(t: float) -> Message:
    arrays = {"tcp_pos": np.zeros((1, 3)), "tcp_quat": np.array([[1.0, 0, 0, 0]]), "joint_pos": np.zeros((1, 7)),
              "gripper_width": np.zeros(1)}
    return Message(topic="state", stamp=t, seq=0, arrays=arrays, meta={"sim_time": t})


def test_operator_ignores_states_of_the_ended_episode_that_follow_the_reset():
    """Lockstep: the node forwards the reset event at once and streams at its next tick, so a state of the ended
    episode can arrive after the reset. Taking its clock for the new episode stalled the clutch press (seconds)."""
    from teleop.operators import ScriptedOperator

    cfg = ScriptedConfig(task="wipe", feedback=False, lockstep=True, latency_ms=[0.0, 0.0], jitter_ms=0.0)
    op = ScriptedOperator(cfg, _Link())
    try:
        op._on_feedback(_state(8.70))
        op._on_feedback(Message(topic="episode", stamp=0.0, seq=1, arrays={},
                                meta={"event": "reset", "episode": 3, "seed": 5}))
        op._on_feedback(_state(8.704))  # the old episode, forwarded late
        assert "state" not in op.obs
        for k in range(1, 6):
            op._on_feedback(_state(0.02 * k))
            op._answer_observation()
        assert op.phase == "press"  # released at once, pressed after 0.05 s of sim time
        assert [bool(c[0]) for c in op.link.sent] == [False, False, True, True, True]
    finally:
        op.env.close()
