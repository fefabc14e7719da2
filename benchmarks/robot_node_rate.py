"""Robot node in realtime: achieved publish rate, inter-message jitter and watchdog stop latency.

    python -m benchmarks.robot_node_rate [seconds=5] [trials=10] [task=wipe] [node=[...]] [out=FILE]

Starts ``python -m sim.node`` (realtime, cameras on, random loopback ports) as a subprocess, commands it
at 100 Hz (a slow circle, so the controllers work) and, over ``seconds``, records every state / tactile /
wrench message: rate and |interval - nominal| percentiles from the node's own stamps (publish side) and
from the receive times here (what a subscriber sees, including this process's scheduling). Then, in
``trials`` rounds, stops commanding and measures the time from the last command sent to the "watchdog"
engaged event received, next to the command age the node itself reports at the hold. Prints a table;
writes benchmarks/results/robot_node_rate.json; the last stdout line is that JSON.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.report import publish
from bus.cli import UsageError, choose, command
from bus.config import compose
from bus.transport import Publisher, Subscriber
from sim.node import hold_command, load_config

ROOT = Path(__file__).resolve().parent.parent
STREAMS = ("state", "tactile", "wrench")
ANY_PORT = ["addresses.pub=tcp://127.0.0.1:*", "addresses.cmd=tcp://127.0.0.1:*", "addresses.tick=tcp://127.0.0.1:*"]


def _start_node(task: str, extra: Sequence[str] = ()) -> tuple[subprocess.Popen, dict, queue.Queue]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.node", f"task={task}", "perturb=false", *ANY_PORT, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        ready = json.loads(lines.get(timeout=60))
    except BaseException:
        _stop_node(proc)
        raise
    return proc, ready, lines


def _stop_node(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()




def _interval_stats(times: np.ndarray, nominal: float) -> dict:
    dt = np.diff(times)
    err = np.abs(dt - nominal) * 1e3
    return {
        "rate_hz": round(float(len(dt) / (times[-1] - times[0])), 2),
        "jitter_p50_ms": round(float(np.percentile(err, 50)), 4),
        "jitter_p99_ms": round(float(np.percentile(err, 99)), 4),
        "max_interval_ms": round(float(dt.max() * 1e3), 3),
    }


def measure_rates(sub: Subscriber, cmd: Publisher, base: np.ndarray, seconds: float, tick_hz: float) -> dict:
    recv_t: dict[str, list[float]] = {t: [] for t in STREAMS}
    stamps: dict[str, list[float]] = {t: [] for t in STREAMS}
    seqs: dict[str, list[int]] = {t: [] for t in STREAMS}
    t0 = time.monotonic()
    next_cmd = t0
    while (now := time.monotonic()) < t0 + seconds:
        if now >= next_cmd:  # 100 Hz commands: a 2 cm circle in the horizontal plane
            target = base.copy()
            phase = 2 * np.pi * 0.5 * (now - t0)
            target[0, 0] += 0.02 * np.cos(phase)
            target[0, 1] += 0.02 * np.sin(phase)
            cmd.publish("cmd", {"target": target})
            next_cmd += 0.01
        msg = sub.recv(timeout=max(0.0, next_cmd - time.monotonic()))
        if msg is not None and msg.topic in recv_t:
            recv_t[msg.topic].append(time.monotonic())
            stamps[msg.topic].append(msg.stamp)
            seqs[msg.topic].append(msg.seq)
    nominal = 1.0 / tick_hz
    out = {}
    for topic in STREAMS:
        seq = np.array(seqs[topic])
        out[topic] = {
            "messages": len(seq),
            "dropped": int((np.diff(seq) - 1).sum()),
            "node_stamps": _interval_stats(np.array(stamps[topic]), nominal),
            "received": _interval_stats(np.array(recv_t[topic]), nominal),
        }
    return out


def measure_watchdog(events: Subscriber, cmd: Publisher, base: np.ndarray, trials: int) -> dict:
    client_ms, node_ms = [], []
    for _ in range(trials):
        end = time.monotonic() + 0.3
        while True:
            cmd.publish("cmd", {"target": base})
            last_sent = time.monotonic()
            if last_sent >= end:
                break
            time.sleep(0.01)
        while True:
            msg = events.recv(timeout=2.0)
            if msg is None:
                raise RuntimeError("the watchdog never engaged within 2 s of the last command")
            if msg.meta["engaged"] and msg.meta["reason"] == "watchdog":
                client_ms.append((time.monotonic() - last_sent) * 1e3)
                node_ms.append(float(msg.meta["cmd_age_ms"]))
                break
    c, n = np.array(client_ms), np.array(node_ms)
    return {
        "trials": trials,
        "last_command_to_held_event_ms": {
            "p50": round(float(np.median(c)), 2), "max": round(float(c.max()), 2), "min": round(float(c.min()), 2)
        },
        "node_command_age_at_hold_ms": {
            "p50": round(float(np.median(n)), 2), "max": round(float(n.max()), 2), "min": round(float(n.min()), 2)
        },
    }


@dataclass
class NodeRateConfig:
    """``configs/benchmarks/robot_node_rate.yaml``."""

    seconds: float = 5.0
    trials: int = 10
    task: str = "wipe"
    node: list[str] = field(default_factory=list)  # extra robot-node overrides, e.g. ['point_cloud=true','looks=train']
    out: str = "benchmarks/results/robot_node_rate.json"

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.trials < 1:
            raise UsageError(f"seconds={self.seconds} must be > 0 and trials={self.trials} >= 1")
        from sim.registry import TASKS

        choose("task", self.task, TASKS, "task")


@command("benchmarks.robot_node_rate")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(NodeRateConfig, "benchmarks/robot_node_rate", list(sys.argv[1:] if argv is None else argv),
                   "robot_node_rate", "seconds=2 trials=3")
    proc, ready, lines = _start_node(args.task, args.node)
    try:
        with Subscriber(ready["pub"], topics=STREAMS, hwm=100_000) as sub, \
                Subscriber(ready["pub"], topics=("watchdog",)) as events, \
                Publisher(ready["cmd"], bind=False) as cmd:
            if not cmd.wait_for_subscriber("cmd", timeout=10):
                raise RuntimeError("the robot node's command socket never subscribed")
            first = None
            while first is None or first.topic != "state":
                first = sub.recv(timeout=10)
            base = hold_command(first)
            time.sleep(0.5)  # let the node settle, then start clean
            while sub.recv(timeout=0) is not None:
                pass
            rates = measure_rates(sub, cmd, base, args.seconds, ready["tick_hz"])
            watchdog = measure_watchdog(events, cmd, base, args.trials)
    finally:
        rc = _stop_node(proc)
    exit_record = {}
    while not lines.empty():
        record = json.loads(lines.get())
        if record.get("event") == "exit":
            exit_record = record
    print(f"{'topic':8} {'msgs':>6} {'Hz (node)':>10} {'Hz (recv)':>10} {'p99 jit node ms':>16} "
          f"{'p99 jit recv ms':>16} {'drops':>6}")
    for topic, r in rates.items():
        print(f"{topic:8} {r['messages']:6d} {r['node_stamps']['rate_hz']:10.1f} {r['received']['rate_hz']:10.1f} "
              f"{r['node_stamps']['jitter_p99_ms']:16.3f} {r['received']['jitter_p99_ms']:16.3f} {r['dropped']:6d}")
    w = watchdog
    print(f"watchdog: last command -> held event received p50 "
          f"{w['last_command_to_held_event_ms']['p50']:.1f} ms (max {w['last_command_to_held_event_ms']['max']:.1f}); "
          f"command age at hold (node clock) p50 {w['node_command_age_at_hold_ms']['p50']:.1f} ms "
          f"(max {w['node_command_age_at_hold_ms']['max']:.1f})")
    result = {
        "benchmark": "robot_node_rate",
        "task": args.task,
        "node": list(args.node),
        "seconds": args.seconds,
        "tick_hz": ready["tick_hz"],
        "cpu_count": os.cpu_count(),
        "streams": rates,
        "watchdog": {"watchdog_ms": load_config().watchdog_ms, **watchdog},
        "node_exit": {"returncode": rc, **{k: exit_record.get(k) for k in ("ticks", "mean_hz", "overruns", "missed")}},
    }
    publish(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
