"""The slow-fast runtime as real processes on random loopback ports: a deterministic lockstep run through the
launcher, kill -9 of either node, garbage on every input socket. Weights are a seconds-long tiny training run, so
only the plumbing is under test here (``python -m benchmarks.runtime_loop`` measures the timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_runtime_units import make_tiny_run

from bus.message import Message, encode
from bus.transport import Publisher, Subscriber
from rdp.runtime.process import ROOT, Child, robot_node_args

TIMEOUT = 60.0
LAUNCH_TIMEOUT = 240  # one rdp.run (a few seconds idle; minutes on a loaded 2-core machine: five processes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("runtime_ckpt"))


def _runtime_args(run: Path, *extra: str) -> list[str]:
    return [f"checkpoint={run}", "slow.replan_every=4", "stats_hz=20", "fast.start_timeout_s=30", *extra]


@contextmanager
def stopped_children() -> Iterator[dict[str, Child]]:
    """Started children by name; every one is stopped (SIGTERM, then SIGKILL) and reaped on the way out."""
    children: dict[str, Child] = {}
    try:
        yield children
    finally:
        for child in children.values():
            child.stop(timeout=5.0)


def _start(children: dict[str, Child], tmp: Path, name: str, module: str, args: list[str]) -> dict:
    child = Child(name, module, args, tmp / f"{name}-{len(children)}.log")
    children[name] = child
    return child.wait_ready(timeout=TIMEOUT)


def _start_stack(children: dict[str, Child], tmp: Path, run: Path, *extra: str) -> dict[str, dict]:
    """Robot node (realtime, 20 N force limit so the meaningless tiny policy cannot end the episode by breaking the
    vase), fast node, slow node."""
    robot = _start(children, tmp, "robot", "sim.node", robot_node_args(
        "wipe", "realtime", 0, False, {"watchdog_ms": 50.0, "cameras": False, "limits.force_n": 20.0}))
    addr = [f"addresses.robot_pub={robot['pub']}", f"addresses.robot_cmd={robot['cmd']}"]
    args = _runtime_args(run, "episodes=1", "perturb=false", *extra)
    fast = _start(children, tmp, "fast", "rdp.runtime.fast", [*args, *addr])
    slow_args = [*args, f"addresses.obs={robot['pub']}", f"addresses.chunk={fast['chunk']}"]
    _start(children, tmp, "slow", "rdp.runtime.slow", slow_args)
    return {"robot": robot, "fast": fast, "slow_args": slow_args}


def _niceness(pid: int) -> int:
    """A process's nice value (field 19 of /proc/PID/stat; the command name before it may hold spaces)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _fresh_stats(child: Child) -> dict:
    """A stats record printed after this call (older queued lines are skipped)."""
    while not child.lines.empty():
        child.lines.get_nowait()
    return child.wait_event("stats", timeout=60.0)


def _fast_stats_until(fast: Child, predicate, timeout: float = 120.0) -> dict:
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = fast.wait_event("stats", timeout=max(0.1, end - time.monotonic()))
        if predicate(last):
            return last
    raise AssertionError(f"fast node stats never satisfied the condition; last {last}")


def _states_until(sub: Subscriber, stamp: float) -> list[Message]:
    """The queued robot state messages up to the first one stamped after ``stamp``."""
    out: list[Message] = []
    while not out or out[-1].stamp <= stamp:
        msg = sub.recv(timeout=10.0)
        assert msg is not None, "the robot node stopped publishing states"
        out.append(msg)
    return out


def _tick_gap_before(states: list[Message], stamp: float) -> float:
    """Upper bound (s) on the robot node's tick interval that ended at ``stamp`` (from the state published two
    ticks earlier): a watchdog hold comes at the first node tick after the limit, so its command age is at most
    limit + this gap."""
    before = [m.stamp for m in states if m.stamp <= stamp]
    assert len(before) >= 2, "no robot states before the hold"
    return stamp - before[-2]


# ----------------------------------------------------------------------------------------------- lockstep


def _launch(run: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "rdp.run", *_runtime_args(run, "mode=lockstep", "max_episode_s=0.6",
                                                           f"out={out}", "robot.camera_hz=25", *extra)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(2 * LAUNCH_TIMEOUT + 60)
def test_lockstep_launcher_run_is_deterministic(tiny_run: Path, tmp_path: Path) -> None:
    # With the real-time-chunking hand-over: the slow node inpaints every chunk after the first from the last one.
    a = _launch(tiny_run, tmp_path / "a", "slow.handover=rtc")
    b = _launch(tiny_run, tmp_path / "b", "slow.handover=rtc")
    assert a["error"] is None and a["episodes"] == 1 and a["exit_codes"] == {"fast": 0, "slow": 0, "robot": 0}
    assert a["fast"]["chunks"] >= 3 and a["fast"]["chunks"] == b["fast"]["chunks"]
    # Lockstep models one step of inference latency (slow.handover_steps=1): every chunk takes over one step after
    # the step it was planned on, its first entry skipped.
    assert a["fast"]["skipped"] == a["fast"]["chunks"]
    assert a["fast"]["cmd_digest"] == b["fast"]["cmd_digest"]  # every command bit-identical
    for name in ("results.json", "timing.png", "episode0.mp4", "fast.log", "slow.log", "robot.log"):
        assert (tmp_path / "a" / name).is_file(), name
    detail = json.loads((tmp_path / "a" / "results.json").read_text())
    assert detail["episodes_detail"][0]["ended_by"] == "max_episode_s"
    assert detail["loop"]["slow"]["plans"] >= 3
    assert detail["loop"]["slow"]["inpainted"] == detail["loop"]["slow"]["plans"] - 1  # all but the first
    assert "episode_without_seed" not in detail["loop"]["slow"]  # the episode's noise came from its env seed


# ----------------------------------------------------------------------------------------------- faults


@pytest.mark.timeout(240)
def test_kill9_slow_node_fast_finishes_chunk_then_holds_and_picks_up_a_restart(tiny_run: Path, tmp_path: Path
                                                                               ) -> None:
    with stopped_children() as children:
        stack = _start_stack(children, tmp_path, tiny_run)
        fast = children["fast"]
        # The slow node yields the CPU (slow.nice, default 10) to the fast node and the robot, which keep theirs.
        assert _niceness(children["slow"].pid) == _niceness(fast.pid) + 10
        assert _niceness(fast.pid) == _niceness(children["robot"].pid)
        # The realtime fast node runs SCHED_FIFO (fast.rt_priority, default 50) with every thread, ZeroMQ's I/O
        # thread included, where the OS grants it; where not, it says why and runs at ordinary priority.
        if stack["fast"]["sched"] == "fifo":
            assert stack["fast"]["rt_priority"] == 50
            tids = [int(t) for t in os.listdir(f"/proc/{fast.pid}/task")]
            assert len(tids) >= 2 and {os.sched_getscheduler(t) for t in tids} == {os.SCHED_FIFO}
        else:
            assert "refused" in stack["fast"]["sched_note"]
        assert os.sched_getscheduler(children["slow"].pid) == os.SCHED_OTHER
        with Subscriber(stack["robot"]["pub"], topics=("state",), conflate=True) as states, \
                Subscriber(stack["robot"]["pub"], topics=("status",)) as status:
            _fast_stats_until(fast, lambda s: s.get("chunks", 0) >= 3 and not s["holding"])
            before = _fresh_stats(fast)  # the newest record before the kill, not one queued while we waited
            assert not before["holding"], before
            children["slow"].kill9()
            held = _fast_stats_until(fast, lambda s: s["holding"])
            # Simulated time, not wall time: a loaded machine runs the robot node slower than real time.
            ran = held["sim_time"] - before["sim_time"]
            # It kept executing: at most one chunk (16 steps of 40 ms at 25 Hz) plus the stats period after the kill.
            assert held["exhausted"] >= 1 and held["chunks"] == _fast_stats_until(fast, lambda s: True)["chunks"]
            assert 0.05 < ran < 16 * 0.04 + 0.5, (before, held)
            assert held["episode"] == before["episode"], "the episode must not end during the test"
            # Held: the commanded pose does not move; the robot stays inside the workspace and the force limit.
            time.sleep(0.3)
            poses = []
            for _ in range(8):
                time.sleep(0.03)
                poses.append(states.recv(timeout=5.0).arrays["tcp_pos"][0].copy())
            assert np.ptp(np.array(poses), axis=0).max() < 0.005
            low, high = np.array([0.2, -0.45, 0.0]), np.array([0.9, 0.45, 0.8])
            assert ((np.array(poses) > low) & (np.array(poses) < high)).all()
            forces = [m.meta["force_n"] for m in iter(lambda: status.recv(timeout=0), None)]
            assert forces and max(forces) < 20.0 * 1.5
            # A restarted slow node connects to the same chunk address and is picked up.
            _start(children, tmp_path, "slow", "rdp.runtime.slow", stack["slow_args"])
            after = _fast_stats_until(fast, lambda s: s["chunks"] > held["chunks"] and not s["holding"])
            assert after["episode"] == before["episode"] and fast.alive()


@pytest.mark.timeout(240)
def test_kill9_fast_node_robot_watchdog_holds_within_100ms(tiny_run: Path, tmp_path: Path) -> None:
    with stopped_children() as children:
        stack = _start_stack(children, tmp_path, tiny_run)
        with Subscriber(stack["robot"]["pub"], topics=("watchdog",)) as events, \
                Subscriber(stack["robot"]["pub"], topics=("state",), hwm=100_000) as states:
            _fast_stats_until(children["fast"], lambda s: s.get("chunks", 0) >= 2 and not s["holding"])
            held: list[Message] = []  # the engaging events of the robot's current hold (reasons may change)
            while (msg := events.recv(timeout=0.2)) is not None:  # older hold changes (the start of the episode)
                held = [*held, msg] if msg.meta["engaged"] else []
            children["fast"].kill9()
            killed = time.monotonic()
            # The hold that lasts: a fast node starved by a loaded machine may have tripped (and released) the
            # watchdog just before the kill, and the meaningless tiny policy may press into the force limit, whose
            # hold turns into a watchdog hold when the force drops; so follow the changes until they stop.
            end = killed + 10.0
            while time.monotonic() < end:
                msg = events.recv(timeout=0.5)
                if msg is None and held:
                    break
                if msg is not None:
                    held = [*held, msg] if msg.meta["engaged"] else []
            assert held, "the robot node's watchdog never engaged after kill -9 of the fast node"
            last, first = held[-1], held[0]
            assert last.meta["reason"] == "watchdog", [m.meta for m in held]
            # Robot clock (this machine's monotonic clock in realtime): from the last command to the start of the
            # hold within 100 ms, or the first node tick after the 50 ms limit when the OS did not run the node
            # for longer than that.
            last_cmd = last.stamp - last.meta["cmd_age_ms"] * 1e-3
            gap_ms = _tick_gap_before(_states_until(states, first.stamp), first.stamp) * 1e3
            assert (first.stamp - last_cmd) * 1e3 <= 50.0 + max(gap_ms, 50.0), ([m.meta for m in held], gap_ms)
            assert (first.stamp - killed) * 1e3 < 200.0 + max(gap_ms, 50.0), (first.stamp - killed, gap_ms)
            assert children["robot"].alive() and children["slow"].alive()


@pytest.mark.timeout(240)
def test_realtime_episode_starts_only_once_the_slow_node_hears_the_robot(tiny_run: Path, tmp_path: Path) -> None:
    """A realtime robot's clock runs from its reset: the fast node must not reset it while the slow node still
    loads (the first episode then began with the robot idle for 0.1-1 s, a different episode from lockstep's)."""
    with stopped_children() as children:
        robot = _start(children, tmp_path, "robot", "sim.node", robot_node_args(
            "wipe", "realtime", 0, False, {"watchdog_ms": 50.0, "cameras": False, "limits.force_n": 20.0}))
        with Subscriber(robot["pub"], topics=("episode",)) as events:
            time.sleep(0.5)  # the subscription reaches the robot node before anything below can reset it
            addr = [f"addresses.robot_pub={robot['pub']}", f"addresses.robot_cmd={robot['cmd']}"]
            args = _runtime_args(tiny_run, "episodes=1", "perturb=false")
            fast = _start(children, tmp_path, "fast", "rdp.runtime.fast", [*args, *addr])
            end = time.monotonic() + 3.0
            while (left := end - time.monotonic()) > 0:  # the robot node's own start-up reset (episode 0) may show
                early = events.recv(timeout=left)
                assert early is None or early.meta["episode"] == 0, f"reset before any slow node was up: {early.meta}"
            slow = _start(children, tmp_path, "slow", "rdp.runtime.slow",
                          [*args, f"addresses.obs={robot['pub']}", f"addresses.chunk={fast['chunk']}"])
            assert slow["warmup_ms"] > 0  # it planned once on a blank history before saying it is ready
            reset = events.recv(timeout=60.0)
            assert reset is not None and reset.meta["event"] == "reset"
            stats = _fast_stats_until(children["fast"], lambda s: s.get("chunks", 0) >= 1)
            assert stats["episode"] == reset.meta["episode"]
            assert "start_resets" not in stats, stats  # the slow node saw the first reset: no second one needed
            assert events.recv(timeout=0.2) is None  # no further reset or end


@pytest.mark.timeout(240)
def test_without_a_slow_node_the_episode_starts_after_the_timeout_and_holds(tiny_run: Path, tmp_path: Path) -> None:
    with stopped_children() as children:
        robot = _start(children, tmp_path, "robot", "sim.node", robot_node_args(
            "wipe", "realtime", 0, False, {"watchdog_ms": 50.0, "cameras": False}))
        addr = [f"addresses.robot_pub={robot['pub']}", f"addresses.robot_cmd={robot['cmd']}"]
        _start(children, tmp_path, "fast", "rdp.runtime.fast",
               [*_runtime_args(tiny_run, "episodes=1", "perturb=false"), "fast.start_timeout_s=1", *addr])
        stats = _fast_stats_until(children["fast"], lambda s: s.get("start_without_slow", 0) >= 1, timeout=60.0)
        assert stats["episode"] >= 1 and stats.get("chunks", 0) == 0 and children["fast"].alive()
        assert "robot node did not start" not in children["fast"].log_path.read_text()


def _observation(seq: int, sim_time: float, bad_tactile: bool = False) -> list[Message]:
    """One fake robot-node tick: state, tactile, wrench with the same seq, as sim.node publishes them."""
    meta = {"sim_time": sim_time}
    tactile = {"marker_offset": np.zeros((2, 2), np.float32)} if bad_tactile else {
        "marker_offset": np.zeros((3, 7, 9, 2), np.float32), "marker_depth": np.zeros((3, 14, 18), np.float32),
        "marker_slip": np.zeros((3, 2), np.float32)}
    return [
        Message("state", time.monotonic(), seq, {
            "tcp_pos": np.array([[0.5, 0.0, 0.3]]), "tcp_quat": np.array([[0.0, 1.0, 0.0, 0.0]]),
            "joint_pos": np.zeros((1, 7)), "joint_vel": np.zeros((1, 7)), "gripper_width": np.zeros(1)}, meta),
        Message("tactile", time.monotonic(), seq, tactile, meta),
        Message("wrench", time.monotonic(), seq, {"wrench": np.zeros((1, 6))}, meta),
    ]


@pytest.mark.timeout(240)
def test_garbage_on_every_socket_is_counted_and_survived(tiny_run: Path, tmp_path: Path) -> None:
    """A fake robot node (this test) feeds both nodes good observations mixed with garbage; a rogue publisher feeds
    the fast node's chunk socket garbage. Everything bad is counted; the nodes keep planning and commanding."""
    with ExitStack() as stack, stopped_children() as children:
        robot_pub = stack.enter_context(Publisher("tcp://127.0.0.1:*"))
        robot_cmd = stack.enter_context(Subscriber("tcp://127.0.0.1:*", topics=("cmd", "reset"), bind=True))
        addr = [f"addresses.robot_pub={robot_pub.address}", f"addresses.robot_cmd={robot_cmd.address}"]
        args = _runtime_args(tiny_run, "episodes=1", "fast.hold=silence")
        fast = _start(children, tmp_path, "fast", "rdp.runtime.fast", [*args, *addr])
        _start(children, tmp_path, "slow", "rdp.runtime.slow",
               [*args, f"addresses.obs={robot_pub.address}", f"addresses.chunk={fast['chunk']}"])
        rogue = stack.enter_context(Publisher(fast["chunk"], bind=False))
        rogue_ready = False  # the fast node hands out its chunk subscription once its loop runs
        raw_robot, raw_rogue = robot_pub.socket, rogue.socket
        episode, seq, tick, commands = 0, 0, 0, 0
        end = time.monotonic() + 40.0
        while time.monotonic() < end and not (tick > 300 and commands > 50 and rogue_ready):
            msg = robot_cmd.recv(timeout=0.004)
            if msg is not None and msg.topic == "reset":
                episode, tick = episode + 1, 0
                robot_pub.publish("episode", meta={"event": "reset", "episode": episode, "seed": msg.meta["seed"]})
            elif msg is not None and msg.topic == "cmd":
                commands += 1
            tick += 1
            if tick % 25 == 1:  # status at 10 Hz, as sim.node sends it (the fast node learns the episode from it)
                robot_pub.publish("status", meta={"episode": episode, "held": False, "sim_time": tick * 0.004})
            garbage = tick % 50 == 0  # on a step boundary (10 ticks of 4 ms = one 40 ms step)
            for m in _observation(seq, tick * 0.004, bad_tactile=garbage):
                raw_robot.send_multipart(encode(m), copy=False)
            seq += 1
            rogue_ready = rogue_ready or rogue.wait_for_subscriber("chunk", timeout=0)
            if garbage and rogue_ready:  # bytes, a malformed header, a wrong schema (above), on both nodes' inputs
                raw_robot.send_multipart([b"tactile", b"\x00garbage"])
                raw_robot.send_multipart([b"state", b"x" * 10, b"y"])
                raw_rogue.send_multipart([b"chunk", b"\xff\xfe"])
                raw_rogue.send_multipart([b"chunk"])
                rogue.publish("chunk", {"chunk": np.zeros((3, 3), np.float32)}, {"episode": episode})
                rogue.publish("chunk", {"chunk": np.zeros((4, 4), np.float32), "anchor": np.zeros(10, np.float32)},
                              {"episode": episode, "obs_step": -5})
                time.sleep(0.02)  # the bad tactile stays the newest reading while a step begins
        assert commands > 50, f"the fast node sent {commands} commands"
        time.sleep(0.2)
        fast_stats = _fresh_stats(children["fast"])
        rejects = fast_stats["rejects"]
        for kind in ("header", "frames", "obs_schema", "chunk_schema", "chunk_meta"):
            assert rejects.get(kind, 0) >= 1, (kind, rejects)
        assert fast_stats["chunks"] >= 3
        slow_stats = _fresh_stats(children["slow"])
        slow_rejects = slow_stats["rejects"]
        assert slow_stats["plans"] >= 3, slow_stats
        for kind in ("header", "rej_schema"):
            assert slow_rejects.get(kind, 0) >= 1, (kind, slow_rejects)
        assert all(c.alive() for c in children.values())


@pytest.mark.timeout(LAUNCH_TIMEOUT + 60)
def test_remote_slow_node_over_curve_from_a_second_loopback_address(tiny_run: Path, tmp_path: Path) -> None:
    """The slow node connects from 127.0.0.2 through the CURVE relay and chunk socket (key + IP allow-list)."""
    from rdp.runtime.curve import generate_keys

    keys = generate_keys(tmp_path / "keys")
    cmd = [sys.executable, "-m", "rdp.run", *_runtime_args(
        tiny_run, "max_episode_s=1.0", "perturb=false", "video=false", "robot.cameras=false", f"out={tmp_path / 'o'}",
        "secure.enabled=true", f"secure.keys={keys}", "secure.slow_source=127.0.0.2", "secure.allow=[127.0.0.2]")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["exit_codes"] == {"fast": 0, "slow": 0, "relay": 0, "robot": 0}
    assert result["fast"]["chunks"] >= 2 and result["slow"]["plans"] >= 2
