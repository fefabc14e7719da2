"""Teleop node: loop rate and operator-to-command latency, with a live robot node behind it.

    python -m benchmarks.teleop_loop [seconds=5] [rate=90] [task=wipe] [out=FILE]

Starts a realtime robot node and a teleop node (``teleop.collect.Child``: separate processes, random loopback
ports, no browser), then plays an operator from this process: it presses the clutch and streams hand poses
(a slow 2 cm circle) at ``rate`` Hz, like a headset's controller. Measured:

* ``node_latency``: operator sample stamped -> command published, as the teleop node reports it in each
  command's meta (validation, mapping, guard, encoding: the node's own cost);
* ``echo_latency``: operator sample sent -> the command's echo received here on the feedback socket (adds
  one bus hop, what a second subscriber of the command sees);
* the node's tick rate (``loop_hz`` from its exit record) and the rate of commands it sent.

Prints a table; writes benchmarks/results/teleop_loop.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.report import publish
from bus.cli import UsageError, choose, command
from bus.config import compose
from bus.process import Child
from bus.transport import Publisher, Subscriber
from teleop.collect import ANY


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def run(seconds: float, rate: float, task: str, log_dir: Path) -> dict:
    robot = teleop = None
    pub = sub = None
    try:
        robot = Child("bench_robot", "sim.node", [f"task={task}", "perturb=false", "cameras=false",
                                                  f"addresses.pub={ANY}", f"addresses.cmd={ANY}",
                                                  f"addresses.tick={ANY}"], log_dir / "bench_robot.log")
        r = robot.wait_ready(60)
        teleop = Child("bench_teleop", "teleop.node", [f"robot.pub={r['pub']}", f"robot.cmd={r['cmd']}",
                                                       f"addresses.operator={ANY}", f"addresses.feedback={ANY}",
                                                       "web.enabled=false"], log_dir / "bench_teleop.log")
        t = teleop.wait_ready(60)
        pub = Publisher(t["operator"], bind=False)
        sub = Subscriber(t["feedback"], topics=("command", "teleop"))
        assert pub.wait_for_subscriber("operator", 10), "teleop node did not subscribe"
        deadline = time.monotonic() + 20
        arms = 0
        while not arms and time.monotonic() < deadline:
            msg = sub.recv(timeout=0.2)
            arms = int(msg.meta.get("arms") or 0) if msg is not None and msg.topic == "teleop" else 0
        assert arms, "no teleop status with a robot"
        pose = np.tile([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], (arms, 1))
        grip, period = np.ones(arms), 1.0 / rate
        sent_at: dict[int, float] = {}
        node_lat: list[float] = []
        echo_lat: list[float] = []
        commands = 0
        for clutch in (0, 1):  # a press is a rising edge
            for _ in range(5):
                pub.publish("operator", {"pose": pose, "grip": grip, "clutch": np.full(arms, clutch, np.uint8)},
                            {"frame": "robot", "sent": time.monotonic()})
                time.sleep(period)
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            phase = 2 * math.pi * 0.2 * k * period
            pose[:, 0], pose[:, 1] = 0.02 * math.sin(phase), 0.02 * (1 - math.cos(phase))
            now = time.monotonic()
            msg = pub.publish("operator", {"pose": pose, "grip": grip, "clutch": np.ones(arms, np.uint8)},
                              {"frame": "robot", "sent": now})
            sent_at[msg.seq] = now
            k += 1
            while (deadline := t0 + k * period) > time.monotonic():
                echo = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
                if echo is None or echo.topic != "command":
                    continue
                commands += 1
                seq = echo.meta.get("op_seq")
                if isinstance(seq, int) and seq in sent_at:
                    echo_lat.append((time.monotonic() - sent_at.pop(seq)) * 1e3)
                    node_lat.append(float(echo.meta["latency_ms"]))
        elapsed = time.monotonic() - t0
    finally:
        for sock in (pub, sub):
            if sock is not None:
                sock.close()
        exits = {}
        for child in (teleop, robot):
            if child is not None:
                child.stop()
                exits[child.name] = child.last or {}
    node = exits.get("bench_teleop", {})
    return {
        "benchmark": "teleop_loop", "task": task, "seconds": round(elapsed, 2), "operator_rate_hz": rate,
        "operator_samples": k, "node_loop_hz": node.get("loop_hz"), "commands_per_s": round(commands / elapsed, 1),
        "node_latency_ms": _pct(node_lat), "echo_latency_ms": _pct(echo_lat),
        "lost_sync": node.get("lost_sync"), "rejects": node.get("rejects"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
    }


@dataclass
class TeleopLoopConfig:
    """``configs/benchmarks/teleop_loop.yaml``."""

    seconds: float = 5.0
    rate: float = 90.0  # operator samples per second
    task: str = "wipe"
    out: str = "benchmarks/results/teleop_loop.json"

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.rate <= 0:
            raise UsageError(f"seconds={self.seconds} and rate={self.rate} must be > 0")
        from sim.registry import TASKS

        choose("task", self.task, TASKS, "task")


@command("benchmarks.teleop_loop")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(TeleopLoopConfig, "benchmarks/teleop_loop", list(sys.argv[1:] if argv is None else argv),
                   "teleop_loop", "seconds=2 rate=90")
    with tempfile.TemporaryDirectory(prefix="teleop_loop-") as log_dir:  # the children's stderr
        report = run(args.seconds, args.rate, args.task, Path(log_dir))
    n, e = report["node_latency_ms"], report["echo_latency_ms"]
    print(f"teleop loop {report['node_loop_hz']} Hz, {report['commands_per_s']} commands/s from "
          f"{report['operator_samples']} operator samples at {args.rate:.0f} Hz")
    print(f"operator -> command (node):  p50 {n['p50']} ms  p99 {n['p99']} ms  max {n['max']} ms")
    print(f"operator -> command echo:    p50 {e['p50']} ms  p99 {e['p99']} ms  max {e['max']} ms")
    publish(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
