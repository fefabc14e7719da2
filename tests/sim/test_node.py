"""The robot node as a real subprocess on random loopback ports: streams, commands, watchdog, fuzzing,
lockstep determinism and clean shutdown. Rate bounds are loose (a shared 2-core machine); the benchmark
``python -m benchmarks.robot_node_rate`` measures the real numbers."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest

from bus.message import Message, encode
from bus.transport import Client, Publisher, Subscriber
from sim.node import CommandRejected, CommandValidator, hold_command, load_config

ROOT = Path(__file__).resolve().parents[2]
ANY_PORT = ["addresses.pub=tcp://127.0.0.1:*", "addresses.cmd=tcp://127.0.0.1:*", "addresses.tick=tcp://127.0.0.1:*"]
TIMEOUT = 60.0  # generous: every wait returns as soon as its condition holds; a loaded machine answers late


@dataclass
class NodeProcess:
    proc: subprocess.Popen
    ready: dict
    lines: queue.Queue

    def next_json(self, timeout: float = TIMEOUT) -> dict:
        return json.loads(self.lines.get(timeout=timeout))


@contextmanager
def robot_node(log_path: Path, *overrides: str) -> Iterator[NodeProcess]:
    """Start ``python -m sim.node`` and wait for its ready line; always terminate, wait and reap it."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim.node", *ANY_PORT, *overrides],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        )
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
        reader.start()
        try:
            try:
                ready = json.loads(lines.get(timeout=180))
            except queue.Empty:
                raise AssertionError(f"robot node gave no ready line; stderr: {log_path.read_text()[-2000:]}") from None
            assert ready["event"] == "ready"
            yield NodeProcess(proc, ready, lines)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=2)
            proc.stdout.close()


@pytest.fixture(scope="module")
def realtime_node(tmp_path_factory) -> Iterator[NodeProcess]:
    with robot_node(tmp_path_factory.mktemp("node") / "stderr.log", "task=wipe", "perturb=false") as node:
        yield node


def _collect_sim(sub: Subscriber, sim_seconds: float, timeout: float = 30.0) -> list[Message]:
    """Every message stamped (meta ``sim_time``) within ``sim_seconds`` of simulated time from the first state on.

    Counted in simulated time, not wall time: on a loaded machine the realtime node skips ticks it cannot make,
    so a wall second holds fewer ticks, but a simulated second always holds ``tick_hz`` of them."""
    first = _wait_for(sub, lambda m: m.topic == "state")
    t0, t1 = first.meta["sim_time"], first.meta["sim_time"] + sim_seconds
    out = [first]
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        msg = sub.recv(timeout=left)
        if msg is None:
            break
        t = msg.meta.get("sim_time")
        if msg.topic == "state" and t >= t1 - 1e-9:
            return [m for m in out if t0 - 1e-9 <= m.meta.get("sim_time", t0) < t1 - 1e-9]
        out.append(msg)
    raise AssertionError(f"{sim_seconds} s of simulated time did not pass within {timeout} s")


def _states_until(sub: Subscriber, stamp: float) -> list[Message]:
    """The queued state messages up to the first one stamped after ``stamp``."""
    out: list[Message] = []
    while not out or out[-1].stamp <= stamp:
        msg = sub.recv(timeout=TIMEOUT)
        assert msg is not None, "the node stopped publishing states"
        out.append(msg)
    return out


def _tick_gap_before(states: list[Message], stamp: float) -> float:
    """Upper bound (s) on the node's tick interval that ended at ``stamp``: from the state published two ticks
    earlier. A watchdog hold decided at ``stamp`` is due at the first tick after the limit, so its command age
    is at most limit + this gap (~2 periods on an idle machine; more when the OS did not run the node)."""
    before = [m.stamp for m in states if m.stamp <= stamp]
    assert len(before) >= 2, "no state messages before the hold"
    return stamp - before[-2]


def _wait_for(sub: Subscriber, pred, timeout: float = TIMEOUT) -> Message:
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        msg = sub.recv(timeout=left)
        if msg is not None and pred(msg):
            return msg
    raise AssertionError("expected message did not arrive")




# ----------------------------------------------------------------------------- unit: validation
def test_command_validator_clips_and_rejects():
    low = np.array([[0.2, -0.4, 0.0, -3, -3, -3, 0.0]])
    high = np.array([[0.85, 0.4, 0.6, 3, 3, 3, 0.08]])
    v = CommandValidator(low, high)
    ok, clipped = v.check({"target": np.array([[0.5, 0.0, 0.3, 0.0, 3.0, 0.0, 0.04]], np.float32)})
    assert not clipped and ok.dtype == np.float64
    ok, clipped = v.check({"target": np.array([[2.0, 0.0, 0.3, 0.0, 3.0, 0.0, 0.5]])})
    assert clipped and ok[0, 0] == 0.85 and ok[0, 6] == 0.08 and ok[0, 4] == 3.0  # rotation never clipped
    for arrays, kind in [
        ({"target": np.zeros((2, 7))}, "shape"),
        ({"target": np.zeros((1, 7), np.int64)}, "dtype"),
        ({"target": np.full((1, 7), np.nan)}, "nonfinite"),
        ({"target": np.array([[0.5, 0, 0.3, 10.0, 0, 0, 0.04]])}, "range"),
        ({"target": np.zeros((1, 7)), "extra": np.zeros(1)}, "schema"),
        ({}, "schema"),
    ]:
        with pytest.raises(CommandRejected) as exc:
            v.check(arrays)
        assert exc.value.kind == kind


def test_config_rejects_bad_values():
    assert load_config(["mode=lockstep"]).tick_hz == 250.0
    with pytest.raises(ValueError, match="mode"):
        load_config(["mode=fast"])
    with pytest.raises(ValueError, match="publish_every"):
        load_config(["publish_every=3"])
    with pytest.raises(ValueError, match="no_such_key=1: no such robot node config key; the keys are .*watchdog_ms"):
        load_config(["no_such_key=1"])


# ----------------------------------------------------------------------------- realtime process
def test_streams_arrive_at_rate(realtime_node):
    with Subscriber(realtime_node.ready["pub"], topics=("state", "tactile", "wrench", "image", "status"),
                    hwm=20000) as sub:
        got = _collect_sim(sub, 1.0)
    by_topic: dict[str, list[Message]] = {}
    for msg in got:
        by_topic.setdefault(msg.topic, []).append(msg)
    for topic in ("state", "tactile", "wrench"):
        msgs = by_topic.get(topic, [])
        assert len(msgs) >= 150, f"{topic}: {len(msgs)} messages in 1 s of sim time, expected >= 150"
        seqs = np.array([m.seq for m in msgs])
        stamps = np.array([m.stamp for m in msgs])
        assert (np.diff(seqs) > 0).all() and (np.diff(stamps) > 0).all()
    s = by_topic["state"][-1].arrays
    assert s["tcp_pos"].shape == (1, 3) and s["joint_pos"].shape == (1, 7) and s["tcp_quat"].shape == (1, 4)
    t = by_topic["tactile"][-1].arrays
    assert t["marker_offset"].shape == (3, 7, 9, 2) and t["marker_slip"].shape == (3, 2)
    assert by_topic["wrench"][-1].arrays["wrench"].shape == (1, 6)
    images = by_topic.get("image", [])
    assert 5 <= len(images) <= 20, f"{len(images)} images in 1 s of sim time at camera_hz=10"
    assert images[-1].arrays["scene_rgb"].shape == (96, 96, 3) and images[-1].arrays["wrist_rgb"].dtype == np.uint8
    status = by_topic["status"][-1].meta
    assert status["held"] is True and status["reason"] == "no_command"  # nobody commanded it yet


def test_commands_move_the_tcp_and_the_watchdog_holds(realtime_node):
    addr = realtime_node.ready
    with Subscriber(addr["pub"], topics=("state",), conflate=True) as states, \
            Subscriber(addr["pub"], topics=("state",), hwm=100_000) as stream, \
            Subscriber(addr["pub"], topics=("watchdog",)) as events, \
            Publisher(addr["cmd"], bind=False) as cmd:
        assert cmd.wait_for_subscriber("cmd", timeout=TIMEOUT)
        start = states.recv(timeout=TIMEOUT)
        target = hold_command(start)
        target[0, 2] += 0.04
        # Commands at 100 Hz for 0.8 s of the node's simulated time (on a loaded machine it runs slower than wall
        # time; the deadline only bounds a node that stopped).
        t_end = start.meta["sim_time"] + 0.8
        deadline = time.monotonic() + 30.0
        while True:
            cmd.publish("cmd", {"target": target})
            last_sent = time.monotonic()
            now = states.recv(timeout=0) or states.latest["state"]
            if now.meta["sim_time"] >= t_end or last_sent > deadline:
                break
            time.sleep(0.01)
        moved = states.recv(timeout=TIMEOUT).arrays["tcp_pos"][0] - start.arrays["tcp_pos"][0]
        assert moved[2] > 0.025, f"TCP moved {moved} toward +4 cm in z"
        held = _wait_for(events, lambda m: m.meta["engaged"], timeout=TIMEOUT)
        assert held.meta["reason"] == "watchdog"
        # Never before the 100 ms limit; at the first node tick after it (node clock).
        gap_ms = _tick_gap_before(_states_until(stream, held.stamp), held.stamp) * 1e3
        assert 100.0 <= held.meta["cmd_age_ms"] <= 100.0 + max(gap_ms, 50.0), (held.meta, gap_ms)
        assert held.stamp - last_sent < 0.5  # node clock = this machine's monotonic clock in realtime
        # Held: the TCP stays put (0.2 s of simulated time to settle, then 0.3 s observed).
        t_hold = held.meta["sim_time"]
        settle = _wait_for(states, lambda m: m.meta["sim_time"] >= t_hold + 0.2)
        positions = [settle.arrays["tcp_pos"][0].copy()]
        while settle.meta["sim_time"] < t_hold + 0.5:
            time.sleep(0.03)
            settle = states.recv(timeout=TIMEOUT)
            positions.append(settle.arrays["tcp_pos"][0].copy())
        assert np.ptp(np.array(positions), axis=0).max() < 0.003
        # A fresh command releases the hold at once.
        cmd.publish("cmd", {"target": target})
        released = _wait_for(events, lambda m: True, timeout=2.0)
        assert released.meta["engaged"] is False


def test_fuzzed_commands_are_counted_and_dropped(realtime_node):
    addr = realtime_node.ready
    rng = np.random.default_rng(0)
    with Subscriber(addr["pub"], topics=("status", "state"), hwm=20000) as sub, \
            Publisher(addr["cmd"], bind=False) as cmd:
        assert cmd.wait_for_subscriber("cmd", timeout=TIMEOUT)
        good = hold_command(_wait_for(sub, lambda m: m.topic == "state"))  # any state: only the shape matters
        raw = cmd.socket
        raw.send_multipart([b"cmd" + rng.bytes(40)])  # frames
        raw.send_multipart([b"cmd", rng.bytes(50), rng.bytes(8)])  # header
        frames = encode(Message("cmd", 1.0, 0, {"target": good}))
        header = msgpack.unpackb(frames[1])
        raw.send_multipart([frames[0], msgpack.packb({**header, "v": 99}), *frames[2:]])  # version
        raw.send_multipart([b"cmd", b"x" * 100_000])  # size (limit 64 KiB)
        cmd.publish("cmd", {"target": np.zeros((2, 7))})  # shape
        cmd.publish("cmd", {"target": np.zeros((1, 7), np.int32)})  # dtype
        nan = good.copy()
        nan[0, 1] = np.nan
        cmd.publish("cmd", {"target": nan})  # nonfinite
        cmd.publish("cmd", {"pose": good})  # schema
        cmd.publish("cmdx", {"target": good})  # topic
        far = good.copy()
        far[0, 0] = 5.0
        cmd.publish("cmd", {"target": far})  # accepted, clipped into the workspace
        expected = ["frames", "header", "version", "size", "shape", "dtype", "nonfinite", "schema", "topic"]
        status = _wait_for(
            sub, lambda m: m.topic == "status" and all(m.meta.get(f"rej_{k}", 0) >= 1 for k in expected)
        )
        assert status.meta["rejects"] >= len(expected)
        assert status.meta["clipped"] >= 1
        assert realtime_node.proc.poll() is None
        # Still publishing.
        with Subscriber(addr["pub"], topics=("state",), conflate=True) as states:
            first = states.recv(timeout=TIMEOUT)
            assert _wait_for(states, lambda m: m.seq > first.seq).seq > first.seq


# ----------------------------------------------------------------------------- lockstep
def _lockstep_run(log_path: Path, seed: int, ticks: int = 40, commanded: int = 25) -> tuple[list, list]:
    """(published state/wrench/tactile/watchdog stream, tick replies) of one lockstep run."""
    with robot_node(log_path, "mode=lockstep", "cameras=false", f"seed={seed}") as node, \
            Subscriber(node.ready["pub"], hwm=20000) as sub, Client(node.ready["tick"]) as client:
        end = time.monotonic() + TIMEOUT
        while not client.request("ping", timeout=TIMEOUT).meta["subscribed"]:
            assert time.monotonic() < end, "subscription never reached the node"
            time.sleep(0.01)
        first = client.request("tick", timeout=TIMEOUT)
        target = hold_command(first)
        replies = [first]
        for k in range(1, ticks):
            target[0, 0] += 0.002  # a steady slide in x while commanded, then silence (watchdog)
            arrays = {"target": target} if k < commanded else None
            replies.append(client.request("tick", arrays, timeout=TIMEOUT))
        stream = []
        n_state = 0
        end = time.monotonic() + TIMEOUT
        while n_state < ticks * 5 and time.monotonic() < end:
            msg = sub.recv(timeout=0.5)
            if msg is not None and msg.topic in ("state", "wrench", "tactile", "watchdog"):
                stream.append(msg)
                n_state += msg.topic == "state"
        assert n_state == ticks * 5, f"{n_state} state messages for {ticks} ticks of 5 node ticks"
    return stream, replies


def _fingerprint(msgs: list[Message]) -> list:
    return [
        (m.topic, m.seq, m.stamp, sorted(m.meta.items()), {k: a.tobytes() for k, a in m.arrays.items()}) for m in msgs
    ]


@pytest.mark.timeout(400)
def test_lockstep_is_deterministic(tmp_path):
    stream_a, replies_a = _lockstep_run(tmp_path / "a.log", seed=3)
    stream_b, replies_b = _lockstep_run(tmp_path / "b.log", seed=3)
    assert _fingerprint(stream_a) == _fingerprint(stream_b)
    assert _fingerprint(replies_a) == _fingerprint(replies_b)
    # The run did something: it moved while commanded, then the watchdog held it (in lockstep time).
    x = [m.arrays["tcp_pos"][0, 0] for m in replies_a]
    assert x[24] - x[0] > 0.02
    assert [r.meta["held"] for r in replies_a][:2] == [True, False]
    trips = [m for m in stream_a if m.topic == "watchdog" and m.meta["reason"] == "watchdog" and m.meta["engaged"]]
    assert len(trips) == 1 and 100.0 <= trips[0].meta["cmd_age_ms"] <= 104.0 + 1e-6
    assert replies_a[-1].meta["held"] is True
    assert replies_a[-1].meta["sim_time"] == pytest.approx(40 * 0.02)


@pytest.mark.parametrize(("sig", "mode"), [(signal.SIGTERM, "lockstep"), (signal.SIGINT, "realtime")])
def test_signal_exits_cleanly(tmp_path, sig, mode):
    with robot_node(tmp_path / "node.log", f"mode={mode}", "cameras=false") as node:
        time.sleep(0.3)
        node.proc.send_signal(sig)
        assert node.proc.wait(timeout=TIMEOUT) == 0
        summary = node.next_json()
        assert summary["event"] == "exit" and summary["rejects"] == {}
    assert "robot node stopped" in (tmp_path / "node.log").read_text()


def test_force_limit_holds_and_reports(tmp_path):
    """Pushing the sponge into the surface past limits.force_n holds the robot and says why."""
    with robot_node(tmp_path / "node.log", "mode=lockstep", "cameras=false", "perturb=false",
                    "limits.force_n=15") as node, \
            Subscriber(node.ready["pub"], topics=("watchdog",)) as events, Client(node.ready["tick"]) as client:
        end = time.monotonic() + TIMEOUT
        while not client.request("ping", meta={"topic": "watchdog"}, timeout=TIMEOUT).meta["subscribed"]:
            assert time.monotonic() < end
            time.sleep(0.01)
        target = hold_command(client.request("tick", timeout=TIMEOUT))
        target[0, 2] -= 0.15  # far below the surface: the impedance would press up to ~120 N
        reasons = []
        for _ in range(100):
            reply = client.request("tick", {"target": target}, timeout=TIMEOUT)
            reasons.append(reply.meta["reason"])
            if reply.meta["reason"] == "force_limit":
                break
        assert "force_limit" in reasons, f"no force hold in 2 s of pressing; reasons {set(reasons)}"
        event = _wait_for(events, lambda m: m.meta["engaged"] and m.meta["reason"] == "force_limit")
        assert event.meta["force_n"] > 15.0
        # A reset request starts a new episode that waits, held, for its first command.
        reset = client.request("reset", meta={"seed": 5}, timeout=TIMEOUT)
        assert reset.meta == {"episode": 1, "seed": 5}
        assert client.request("tick", timeout=TIMEOUT).meta["reason"] == "no_command"


def test_single_node_ticks_and_the_applied_stream(tmp_path):
    """``node_ticks`` advances single 250 Hz ticks; every target the controllers take is published as ``applied``
    with its tick, a hold included; a bad ``node_ticks`` is refused without advancing."""
    with robot_node(tmp_path / "node.log", "mode=lockstep", "cameras=false", "perturb=false") as node, \
            Subscriber(node.ready["pub"], topics=("applied",)) as applied, Client(node.ready["tick"]) as client:
        end = time.monotonic() + TIMEOUT
        while not client.request("ping", meta={"topic": "applied"}, timeout=TIMEOUT).meta["subscribed"]:
            assert time.monotonic() < end
            time.sleep(0.01)
        first = client.request("tick", meta={"node_ticks": 1}, timeout=TIMEOUT)
        assert first.meta["sim_time"] == pytest.approx(0.004) and first.meta["reason"] == "no_command"
        for bad in (0, 6, 2.0, "1"):
            refused = client.request("tick", meta={"node_ticks": bad}, timeout=TIMEOUT)
            assert refused.topic == "error" and "node_ticks" in refused.meta["reason"]
        target = hold_command(first)
        target[0, 0] += 0.01
        sent = client.request("tick", {"target": target}, meta={"node_ticks": 3}, timeout=TIMEOUT)
        assert sent.meta["sim_time"] == pytest.approx(0.016) and sent.meta["held"] is False
        msg = applied.recv(timeout=TIMEOUT)
        assert msg.meta["tick"] == 1 and msg.meta["sim_time"] == pytest.approx(0.004) and msg.meta["reason"] is None
        np.testing.assert_array_equal(msg.arrays["applied_target"], target)
        # No further command: the watchdog (100 ms) holds, and the hold pose is an applied target too.
        for _ in range(8):
            reply = client.request("tick", timeout=TIMEOUT)
        assert reply.meta["reason"] == "watchdog"
        hold = applied.recv(timeout=TIMEOUT)
        assert hold.meta["reason"] == "watchdog" and hold.meta["tick"] > msg.meta["tick"]
        assert not np.array_equal(hold.arrays["applied_target"], target)


def test_lockstep_frames_start_at_each_reset_and_precede_the_reading_they_show(tmp_path):
    """Lockstep frames: one at every reset (the reset pose, sim_time 0), then one every camera period counted from
    that reset, each sent just before the state of its own tick, so whoever reads a tick's state already holds the
    frame of that tick (the slow node's rule, as in training: the newest frame at or before the observation)."""
    with robot_node(tmp_path / "node.log", "mode=lockstep", "perturb=false", "camera_hz=25", "image_size=32") as node, \
            Subscriber(node.ready["pub"], topics=("episode", "image", "state"), hwm=10_000) as sub, \
            Client(node.ready["tick"]) as client:
        for topic in ("episode", "image", "state"):
            end = time.monotonic() + TIMEOUT
            while not client.request("ping", meta={"topic": topic}, timeout=TIMEOUT).meta["subscribed"]:
                assert time.monotonic() < end
                time.sleep(0.01)
        client.request("reset", meta={"seed": 1}, timeout=TIMEOUT)
        client.request("tick", meta={"node_ticks": 3}, timeout=TIMEOUT)  # episode ticks no longer the node's ticks
        for _ in range(5):
            client.request("tick", timeout=TIMEOUT)
        client.request("reset", meta={"seed": 2}, timeout=TIMEOUT)
        for _ in range(6):  # 30 node ticks of 4 ms: frames due at episode ticks 0, 10, 20, 30 (25 Hz)
            client.request("tick", timeout=TIMEOUT)
        stream = []  # all published before the last reply; the node then waits for the next request
        while (msg := sub.recv(timeout=2.0)) is not None:
            stream.append(msg)
    resets = [i for i, m in enumerate(stream) if m.topic == "episode" and m.meta["event"] == "reset"]
    second = stream[resets[-1]:]  # (the node's own start-up reset may be in the stream too)
    assert second[0].meta["seed"] == 2
    assert second[1].topic == "image" and second[1].meta["sim_time"] == 0.0  # the reset frame, before any state
    images = [i for i, m in enumerate(second) if m.topic == "image"]
    assert [round(second[i].meta["sim_time"], 6) for i in images] == [0.0, 0.04, 0.08, 0.12]
    for i in images[1:]:  # the state right after a frame is that frame's tick
        assert second[i + 1].topic == "state" and second[i + 1].meta["sim_time"] == second[i].meta["sim_time"]
    assert second[images[0]].arrays["wrist_rgb"].shape == (32, 32, 3)


def test_camera_worker_renders_a_snapshot_off_the_loop_and_never_makes_it_wait() -> None:
    """The realtime node's render thread: the frames show the state as it was submitted (the same pixels as
    rendering it in the loop) although the loop stepped on meanwhile; a submit while it renders is refused."""
    from sim.mujoco_robot import MujocoRobot
    from sim.node import CameraWorker
    from sim.registry import make_env

    env = make_env("wipe", perturb=False)
    env.reset(seed=0)
    try:
        names = {"scene_rgb": "scene_cam", "wrist_rgb": env.task.arms[0].prefix + "wrist_cam"}
        assert MujocoRobot(env, 2).cameras == names
        for _ in range(5):
            env.step(env.action_space.sample() * 0)
        want = {key: env.render_camera(camera, 64) for key, camera in names.items()}
        worker = CameraWorker(lambda: MujocoRobot(env, 2).open_cameras(64))
        try:
            assert worker.take() is None
            assert worker.submit("episode-3", env.time)
            assert not worker.submit("episode-3", env.time)  # still rendering: refused, not queued
            t_submitted = env.time
            for _ in range(20):  # the loop goes on; the snapshot is the worker's own
                env.step(env.action_space.sample())
            end = time.monotonic() + TIMEOUT
            while (done := worker.take()) is None and time.monotonic() < end:
                time.sleep(0.005)
            assert done is not None, worker.error
            tag, sim_time, frames = done
            assert tag == "episode-3" and sim_time == t_submitted and set(frames) == set(names)
            for key in names:
                assert frames[key].shape == (64, 64, 3) and frames[key].dtype == np.uint8
                np.testing.assert_array_equal(frames[key], want[key])
            assert worker.take() is None  # handed over once
            assert worker.submit("episode-3", env.time)  # free again
        finally:
            worker.close()
        assert not worker._thread.is_alive()
    finally:
        env.close()


def test_realtime_node_publishes_finished_frames_of_its_own_episode_only() -> None:
    """The loop's side of the render thread: finished frames go out with the sim time they show; frames rendered
    before a reset are dropped; a camera tick while the thread is busy is counted, not waited for."""
    from sim.node import RobotNode

    class Worker:  # stands in for CameraWorker: a scripted sequence of finished renders, busy or free
        def __init__(self) -> None:
            self.results: list = []
            self.busy = False
            self.submitted: list = []

        def take(self):
            return self.results.pop(0) if self.results else None

        def submit(self, tag, sim_time) -> bool:
            if self.busy:
                return False
            self.submitted.append((tag, sim_time))
            return True

        def close(self) -> None:
            pass

    class Pub:
        def __init__(self) -> None:
            self.sent: list = []

        def publish(self, topic, arrays=None, meta=None, **_):
            self.sent.append((topic, meta))

        def close(self) -> None:
            pass

    node = RobotNode(load_config([*ANY_PORT, "task=wipe", "mode=realtime", "cameras=true"]))
    real_pub = node.pub
    try:
        node.pub, node.camera_worker = Pub(), Worker()
        node._episode, node._episode_ticks = 4, node._camera_every  # a camera tick (counted from the reset)
        frame = {"scene_rgb": np.zeros((4, 4, 3), np.uint8)}
        node.camera_worker.results = [(3, 1.25, frame)]  # rendered before the reset into episode 4
        node._cameras_tick()
        assert node.pub.sent == [] and node.camera_worker.submitted == [(4, node.robot.time)]
        node.camera_worker.results = [(4, 1.5, frame)]
        node.camera_worker.busy = True
        node._cameras_tick()
        assert node.pub.sent == [("image", {"sim_time": 1.5})]
        assert node.counts["camera_frames_dropped"] == 1
        node._episode_ticks += 1  # not a camera tick: nothing submitted, nothing counted
        node.camera_worker.busy = False
        node._cameras_tick()
        assert len(node.camera_worker.submitted) == 1 and node.counts["camera_frames_dropped"] == 1
    finally:
        node.pub = real_pub
        node.camera_worker = None
        node.close()
