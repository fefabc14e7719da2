"""Headless demonstration collection through the full process graph, and the recorder process it runs.

    python -m teleop.collect task=<wipe|peel|lift> operator=scripted episodes=N out=DIR [seed=S] [cameras=false]
    python -m teleop.collect recorder robot=ADDR teleop=ADDR out=DIR [task=NAME]     # the recorder process alone

Processes (each its own ``python -m``; config ``configs/teleop/collect.yaml``)::

    scripted operator --operator--> teleop node --cmd--> robot node (realtime) --streams--> recorder
            ^                           |   ^                  |                               ^
            +------ feedback -----------+   +---- streams -----+            teleop "command" --+

The graph runs in **realtime**: the robot node steps on the wall clock and every other process reacts to
what it publishes, exactly as when a person operates it through the browser page. (Lockstep would make
the run bit-reproducible, but it would need the operator's latency simulated in sim time and the recorder to
hold the sim back; realtime exercises the latency, watchdog and drop paths a real session has.) An episode
is what the robot node says it is: the recorder begins one on the node's ``episode`` ``reset`` event and
commits it on ``end`` with the task outcome; this orchestrator asks for each reset through the teleop node
(which stops commanding first, so no stale target reaches the new episode) and waits for the commit.

Recorded streams (``teleop.dataset`` format), each at its native rate, stamped with the robot's simulation
time (1 us resolution, as ``teleop.record_expert``): every array of ``state``, ``tactile`` and ``wrench``
(250 Hz), ``scene_rgb`` / ``wrist_rgb`` (camera rate), ``action`` (7 A,) float32 = each command the teleop
node sent (its sim time from the node's newest state and the shared monotonic clock), ``applied_target``
(A, 7) float64 = each target the robot's controllers actually took, stamped with the start of the tick that
took it (what ``teleop.replay`` re-applies), ``clutch`` (A,) u1 (teleop status), ``robot_held`` u1 (robot
status), and at the end ``outcome_score`` (one sample).

Children die with this process (``PR_SET_PDEATHSIG``) and are stopped in order on exit; their stderr goes to
``OUT/logs/``. Progress goes to stderr; the last stdout line is a JSON summary (also ``OUT/collect.json``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.config import load_node_config
from bus.message import Message
from bus.transport import Publisher, Subscriber

log = logging.getLogger("teleop.collect")

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / "configs" / "teleop" / "collect.yaml"
ANY = "tcp://127.0.0.1:*"
OPERATORS = ("scripted",)
ROBOT_STREAM_TOPICS = ("state", "tactile", "wrench", "image", "applied")
TIME_DECIMALS = 6


# ------------------------------------------------------------------------------------------- config
@dataclass
class CollectConfig:
    """Typed collection settings; ``configs/teleop/collect.yaml`` says what each key means."""

    task: str = "wipe"
    operator: str = "scripted"
    episodes: int = 1
    out: str = ""
    seed: int = 0
    perturb: bool = True
    cameras: bool = True
    latency_ms: list[float] = field(default_factory=lambda: [50.0, 150.0])
    operator_overrides: list[str] = field(default_factory=list)
    episode_timeout_s: float = 40.0
    start_timeout_s: float = 60.0
    progress: bool = True

    def __post_init__(self) -> None:
        from sim.registry import TASKS

        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}, expected one of {sorted(TASKS)}")
        if self.operator not in OPERATORS:
            raise ValueError(f"operator={self.operator!r}: headless collection supports {OPERATORS} (the browser "
                             "and keyboard operators need a person: run python -m teleop.node)")
        if not self.out:
            raise ValueError("out=DIR is required: the dataset directory to record into")
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes} must be >= 1")


def load_config(overrides: Sequence[str]) -> CollectConfig:
    return load_node_config(CollectConfig, CONFIG_PATH, overrides, "collect", "task=wipe episodes=2 out=DIR")


# ------------------------------------------------------------------------------------------ recorder
class RecorderNode:
    """Subscribes to the robot and teleop streams and records episodes with ``EpisodeRecorder``.

    One JSON line per episode event on stdout (``begin``, ``commit``, ``abort``) lets a supervisor follow.
    """

    def __init__(self, robot_pub: str, teleop_feedback: str, out: str, task: str = "", operator: str = "") -> None:
        from teleop.recorder import EpisodeRecorder

        self.recorder = EpisodeRecorder(out)
        self.task, self.operator = task, operator
        self.robot = Subscriber(robot_pub, topics=("",), hwm=20000)
        self.teleop = Subscriber(teleop_feedback, topics=("command", "teleop"), hwm=20000)
        self.episode: int | None = None  # robot episode index being recorded
        self.pending: list[Message] = []  # commands for an episode whose reset we have not seen yet
        self.last_t: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Both publishers are heard (state from the robot, status from the teleop node)."""
        deadline = time.monotonic() + timeout
        heard = set()
        while heard != {"robot", "teleop"}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recorder heard only {sorted(heard)} within {timeout} s")
            if self.robot.recv(timeout=0.05) is not None:
                heard.add("robot")
            if self.teleop.recv(timeout=0.05) is not None:
                heard.add("teleop")

    def run(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self.robot.socket, zmq.POLLIN)
        poller.register(self.teleop.socket, zmq.POLLIN)
        while not self._stop:
            ready = dict(poller.poll(100))
            if self.robot.socket in ready:
                while (msg := self.robot.recv(timeout=0)) is not None:
                    self._on_robot(msg)
            if self.teleop.socket in ready:
                while (msg := self.teleop.recv(timeout=0)) is not None:
                    self._on_teleop(msg)

    def close(self) -> None:
        """Flush and leave an unfinished episode for ``teleop.dataset recover`` (nothing recorded is lost)."""
        try:
            self.recorder.close()
        finally:
            self.robot.close()
            self.teleop.close()

    # ------------------------------------------------------------------------------ robot streams
    def _on_robot(self, msg: Message) -> None:
        topic = msg.topic
        if topic == "episode":
            self._on_episode(msg)
        elif self.episode is None:
            return
        elif topic in ROBOT_STREAM_TOPICS:
            t = _sim_t(msg)
            for name, arr in msg.arrays.items():
                self._append(name, t, arr)
        elif topic == "status":
            self._append("robot_held", _sim_t(msg), np.uint8(bool(msg.meta.get("held"))))

    def _on_episode(self, msg: Message) -> None:
        meta = msg.meta
        if meta.get("event") == "reset":
            if self.recorder.recording:
                self.recorder.abort()  # reset before the end: the operator discarded it
                self.counts["aborted"] += 1
                self._emit("abort", episode=self.episode)
            self.episode = int(meta.get("episode", 0))
            self.last_t.clear()
            seed = meta.get("seed")
            user = {k: meta.get(k) for k in ("perturbation", "perturbation_time")}
            user.update(source="teleop", operator=self.operator, clock="sim", robot_episode=self.episode)
            self.recorder.begin({"task": str(meta.get("task") or self.task), "seed": seed, "user": user})
            self._emit("begin", episode=self.episode, seed=seed)
            for cmd in [m for m in self.pending if m.meta.get("episode") == self.episode]:
                self._on_command(cmd)
            self.pending.clear()
        elif meta.get("event") == "end" and self.recorder.recording and meta.get("episode") == self.episode:
            score = float(meta.get("score") or 0.0)
            t_end = meta.get("time")
            t_end = round(float(t_end), TIME_DECIMALS) if isinstance(t_end, (int, float)) else max(self.last_t.values())
            self._append("outcome_score", t_end, np.float64(score))
            path = self.recorder.commit(success=bool(meta.get("success")))
            self.counts["committed"] += 1
            self._emit("commit", episode=self.episode, path=str(path), seed=meta.get("seed"),
                       success=bool(meta.get("success")), score=score, perturbation=meta.get("perturbation"),
                       failure=meta.get("failure"), sim_time=meta.get("time"))
            self.episode = None

    # ------------------------------------------------------------------------------ teleop streams
    def _on_teleop(self, msg: Message) -> None:
        episode = msg.meta.get("episode")
        if msg.topic == "command":
            if self.episode is not None and episode == self.episode:
                self._on_command(msg)
            elif isinstance(episode, int) and (self.episode is None or episode > self.episode):
                self.pending.append(msg)  # sent in an episode whose reset has not reached us yet
                del self.pending[:-1000]
        elif msg.topic == "teleop" and self.episode is not None and episode == self.episode and "engaged" in msg.arrays:
            self._append("clutch", _sim_t(msg), msg.arrays["engaged"])

    def _on_command(self, msg: Message) -> None:
        self._append("action", _sim_t(msg), msg.arrays["target"].reshape(-1).astype(np.float32))

    def _append(self, name: str, t: float, value: Any) -> None:
        if not self.recorder.recording or not math.isfinite(t) or t < 0:
            return
        t = max(t, self.last_t.get(name, -1.0) + 10 ** -TIME_DECIMALS)  # two samples in one microsecond
        self.last_t[name] = t
        try:
            self.recorder.append(name, t, value)
            self.counts["samples"] += 1
        except ValueError as exc:  # wrong shape or dtype mid-episode: dropped, counted, logged once
            if self.counts[f"rejected_{name}"] == 0:
                log.warning("%s", exc)
            self.counts[f"rejected_{name}"] += 1

    def _emit(self, event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)


def _sim_t(msg: Message) -> float:
    t = msg.meta.get("sim_time")
    return round(float(t), TIME_DECIMALS) if isinstance(t, (int, float)) else math.nan


def run_recorder(argv: Sequence[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    missing = [k for k in ("robot", "teleop", "out") if k not in args]
    if missing or len(args) != len(argv):
        print(f"recorder: need robot=ADDR teleop=ADDR out=DIR [task=NAME operator=NAME], missing {missing}",
              file=sys.stderr)
        return 2
    node = RecorderNode(args["robot"], args["teleop"], args["out"], args.get("task", ""), args.get("operator", ""))
    signal.signal(signal.SIGINT, node.stop)
    signal.signal(signal.SIGTERM, node.stop)
    try:
        node.wait_connected()
        print(json.dumps({"event": "ready", "pid": os.getpid(), "out": args["out"]}), flush=True)
        node.run()
    finally:
        node.close()
        print(json.dumps({"event": "exit", **node.counts}), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ processes
def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), so no process is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A ``python -m`` child with its stdout lines in a queue and stderr in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, preexec_fn=_die_with_parent, env=env)
        self.lines: queue.Queue[dict] = queue.Queue()
        self.last: dict | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                self.last = record
                self.lines.put(record)

    def expect(self, event: str, timeout: float) -> dict:
        """The next stdout record whose ``event`` is ``event`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None and self.lines.empty():
                raise RuntimeError(f"{self.name} gave no {event!r} record (exit code {self.proc.poll()}); log "
                                   f"{self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(queue.Empty):
                record = self.lines.get(timeout=min(remaining, 0.2))
                if record.get("event") == event:
                    return record

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-n:]
        return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=2)
        self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Run the process graph until ``cfg.episodes`` episodes are committed; return the summary."""
    from tqdm import tqdm

    out = Path(cfg.out)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    children: list[Child] = []
    rows: list[dict[str, Any]] = []
    timeouts = 0
    control: Publisher | None = None
    try:
        robot = Child("robot_node", [
            "sim.node", f"task={cfg.task}", f"seed={cfg.seed}", "mode=realtime", f"perturb={str(cfg.perturb).lower()}",
            f"cameras={str(cfg.cameras).lower()}", "auto_reset=false",
            f"addresses.pub={ANY}", f"addresses.cmd={ANY}", f"addresses.tick={ANY}"], log_dir)
        children.append(robot)
        r = robot.expect("ready", cfg.start_timeout_s)
        teleop = Child("teleop_node", [
            "teleop.node", f"robot.pub={r['pub']}", f"robot.cmd={r['cmd']}", f"addresses.operator={ANY}",
            f"addresses.feedback={ANY}", "web.enabled=false"], log_dir)
        children.append(teleop)
        tl = teleop.expect("ready", cfg.start_timeout_s)
        recorder = Child("recorder", [
            "teleop.collect", "recorder", f"robot={r['pub']}", f"teleop={tl['feedback']}", f"out={cfg.out}",
            f"task={cfg.task}", f"operator={cfg.operator}"], log_dir)
        children.append(recorder)
        lo, hi = cfg.latency_ms
        operator = Child("operator", [
            "teleop.operators", "scripted", f"task={cfg.task}", f"perturb={str(cfg.perturb).lower()}",
            f"seed={cfg.seed}", f"latency_ms=[{lo},{hi}]", f"teleop.operator={tl['operator']}",
            f"teleop.feedback={tl['feedback']}", *cfg.operator_overrides], log_dir)
        children.append(operator)
        recorder.expect("ready", cfg.start_timeout_s)
        operator.expect("ready", cfg.start_timeout_s)
        control = Publisher(tl["operator"], bind=False)
        if not control.wait_for_subscriber("reset", timeout=10):
            raise RuntimeError("the teleop node did not subscribe to the control socket")
        bar = tqdm(total=cfg.episodes, desc=f"collect {cfg.task}", unit="ep", file=sys.stderr, disable=not cfg.progress)
        for k in range(cfg.episodes):
            seed = cfg.seed + k
            control.publish("reset", meta={"seed": seed})
            recorder.expect("begin", cfg.start_timeout_s)
            t0 = time.monotonic()
            try:
                row = recorder.expect("commit", cfg.episode_timeout_s)
            except RuntimeError:
                if recorder.proc.poll() is not None:
                    raise
                timeouts += 1
                rows.append({"seed": seed, "success": False, "score": None, "timed_out": True})
                log.warning("episode with seed %d did not end within %.0f s; skipped", seed, cfg.episode_timeout_s)
                continue
            row["wall_s"] = round(time.monotonic() - t0, 2)
            rows.append(row)
            bar.update(1)
            bar.set_postfix(ok=f"{sum(bool(r.get('success')) for r in rows)}/{len(rows)}")
        bar.close()
    finally:
        if control is not None:
            control.close()
        exits = {}
        for child in reversed(children):  # operator, recorder, teleop, robot: producers outlive their readers
            code = child.stop()
            exits[child.name] = {"code": code, **(child.last or {})}
    ok = [r for r in rows if r.get("success")]
    scores = [r["score"] for r in rows if r.get("score") is not None]
    teleop_exit = exits.get("teleop_node", {})
    summary = {
        "task": cfg.task, "operator": cfg.operator, "out": str(out), "episodes": len(rows),
        "success_rate": round(len(ok) / len(rows), 4) if rows else 0.0,
        "mean_score": round(float(np.mean(scores)), 4) if scores else None,
        "timed_out": timeouts, "wall_s": round(time.monotonic() - t_start, 2),
        "teleop": {k: teleop_exit.get(k) for k in ("commands", "op_samples", "lost_sync", "latency_ms_p50",
                                                   "latency_ms_p99", "loop_hz", "rejects")},
        "robot": {k: exits.get("robot_node", {}).get(k) for k in ("mean_hz", "overruns", "watchdog_trips", "rejects")},
        "exit_codes": {name: e.get("code") for name, e in exits.items()},
        "rows": rows,
    }
    (out / "collect.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and args[0] == "recorder":
        return run_recorder(args[1:])
    try:
        cfg = load_config(args)
    except ValueError as exc:
        print(f"teleop.collect: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the children like Ctrl-C does
    summary = collect(cfg)
    print(json.dumps(summary), flush=True)
    return 0 if summary["episodes"] == cfg.episodes and not summary["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
