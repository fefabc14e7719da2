"""Run a trained policy as the slow-fast process graph: robot node + slow node + fast node (+ relay).

    python -m rdp.run task=wipe checkpoint=RUN_DIR [mode=realtime|lockstep] [episodes=N seed=S] [out=DIR]
    python -m rdp.run ... secure.enabled=true secure.keys=KEYS secure.slow_source=127.0.0.2   # "remote" slow node

Config: ``configs/runtime/default.yaml`` (``rdp.runtime.config.RuntimeConfig``); every node gets the same
``key=value`` overrides plus the addresses read from the ready lines of the nodes started before it (all ports are
picked by the OS). Start order: robot node, (relay), fast node (it binds the chunk socket), slow node. The fast node
runs the episodes; the launcher prints one live line per fast-node stats record, and stops every child (fast, slow,
relay, robot, in that order: SIGTERM, then SIGKILL) when the fast node finishes, on Ctrl-C / SIGTERM, or as soon
as any child dies. Children also die with the launcher (PR_SET_PDEATHSIG).

Writes into the run directory: ``results.json`` (per-episode success, loop statistics of every node),
``episode0.mp4`` (the robot node's scene camera during the first episode), ``timing.png`` (fast-node iteration
time, command intervals, chunk hand-overs) and each child's log. The last stdout line is the results summary JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bus.sched import sched_fields
from bus.transport import Client, Subscriber
from rdp.runtime.config import RuntimeConfig, load_config
from rdp.runtime.process import Child, robot_node_args

STOP_GRACE_S = 30.0  # a finished fast node's own shutdown (interpreter, torch) on a loaded machine
STOP_TIMEOUT_S = 30.0  # SIGTERM -> exit before SIGKILL


class ChildDied(RuntimeError):
    pass


class Launcher:
    def __init__(self, cfg: RuntimeConfig, overrides: list[str], out: Path) -> None:
        self.cfg = cfg
        self.overrides = [o for o in overrides if not o.startswith(("addresses.", "out="))]
        self.out = out
        self.lines: queue.Queue = queue.Queue()
        self.children: dict[str, Child] = {}
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.interrupted = False
        self.frames: list[np.ndarray] = []
        self.video_sub: Subscriber | None = None
        self.fast_sched: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ processes
    def _start(self, name: str, module: str, args: list[str]) -> dict[str, Any]:
        child = Child(name, module, args, self.out / f"{name}.log", self.lines)
        self.children[name] = child
        self.records[name] = []
        end = time.monotonic() + 180.0
        while time.monotonic() < end:
            record = self._next(timeout=0.5)
            if record is not None and record[0] == name and record[1].get("event") == "ready":
                return record[1]
        raise ChildDied(f"{name} gave no ready line; log {child.log_path}:\n{child.tail()}")

    def _next(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """Next stdout record of any child; raises ChildDied when a child other than a finished fast node ends."""
        if self.interrupted:
            raise KeyboardInterrupt
        try:
            name, record = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if record is None:
            child = self.children[name]
            child.proc.wait(timeout=10)
            finished = name == "fast" and any(r.get("event") == "exit" for r in self.records["fast"])
            if not finished:
                raise ChildDied(f"{name} (pid {child.pid}) exited with code {child.proc.returncode}; log "
                                f"{child.log_path}:\n{child.tail()}")
            return (name, {"event": "ended"})
        self.records[name].append(record)
        return name, record

    def start_all(self) -> None:
        cfg = self.cfg
        robot = self._start("robot", "sim.node", robot_node_args(cfg.task, cfg.mode, cfg.seed, cfg.perturb,
                                                                  asdict(cfg.robot)))
        if cfg.video and cfg.robot.cameras:
            self._subscribe_video(robot)
        addr = {"addresses.robot_pub": robot["pub"], "addresses.robot_cmd": robot["cmd"]}
        if robot.get("tick"):
            addr["addresses.robot_tick"] = robot["tick"]
        obs = robot["pub"]
        if cfg.secure.enabled:
            host = cfg.addresses.chunk.split("://")[1].rsplit(":", 1)[0]
            relay = self._start("relay", "rdp.runtime.relay", [*self.overrides, *_kv(addr),
                                                               f"addresses.obs=tcp://{host}:*"])
            obs = relay["obs"]
        fast = self._start("fast", "rdp.runtime.fast", [*self.overrides, *_kv(addr), f"out={self.out}",
                                                         f"addresses.chunk={self.cfg.addresses.chunk}"])
        self.fast_sched = sched_fields(fast)
        if cfg.mode == "realtime":
            print(f"[fast] scheduling {fast.get('sched')} priority {fast.get('rt_priority')}"
                  + (f" ({fast['sched_note']})" if fast.get("sched_note") else ""), flush=True)
        self._start("slow", "rdp.runtime.slow", [*self.overrides, f"addresses.obs={obs}",
                                                 f"addresses.chunk={fast['chunk']}"])

    def _subscribe_video(self, robot: dict[str, Any], timeout: float = 60.0) -> None:
        """Subscribe to the robot's images and episode events before the fast node can reset it: a subscription
        made later could miss episode 0's reset event (and so the whole video) on a loaded machine."""
        self.video_sub = Subscriber(robot["pub"], topics=("image", "episode"), hwm=2000)
        end = time.monotonic() + timeout
        if robot.get("tick"):  # lockstep: nothing is published until ticked; the robot says when it sees us
            with Client(robot["tick"]) as client:
                while not client.request("ping", meta={"topic": "episode"}, timeout=timeout).meta.get("subscribed"):
                    if time.monotonic() > end:
                        raise ChildDied("the robot node never saw the launcher's video subscription")
                    time.sleep(0.01)
        elif self.video_sub.recv(timeout=timeout) is None:  # realtime: images flow at camera_hz once subscribed
            raise ChildDied(f"no image from the robot node within {timeout:.0f} s")

    def stop_all(self) -> dict[str, int]:
        codes = {}
        finished = any(r.get("event") == "exit" for r in self.records.get("fast", []))
        for name in ("fast", "slow", "relay", "robot"):
            if name in self.children:
                # A fast node that printed its exit record is shutting down by itself: let it, not SIGTERM it.
                grace = STOP_GRACE_S if name == "fast" and finished else 0.0
                codes[name] = self.children[name].stop(timeout=STOP_TIMEOUT_S, grace=grace)
        while True:  # exit records printed while stopping
            try:
                name, record = self.lines.get_nowait()
            except queue.Empty:
                break
            if record is not None:
                self.records[name].append(record)
        if self.video_sub is not None:
            self.video_sub.close()
        return codes

    # ------------------------------------------------------------------------------------ monitoring
    def monitor(self) -> None:
        """Until the fast node has run every episode: live lines, episode records, video frames."""
        video = self.video_sub is not None
        with contextlib.nullcontext(self.video_sub) as sub:
            capturing = None  # None: waiting for episode 0; True: recording; False: done
            while True:
                got = self._next(timeout=0.02)
                if got is not None:
                    name, record = got
                    if name == "fast" and record.get("event") in ("exit", "ended"):
                        return
                    self._print_live(name, record)
                    if name == "fast" and record.get("event") == "episode" and record["index"] == 0:
                        capturing = False
                while video and (msg := sub.recv(timeout=0)) is not None:
                    if msg.topic == "episode" and msg.meta.get("event") == "reset" and capturing is not False:
                        capturing = msg.meta.get("seed") == self.cfg.seed
                        self.frames.clear()
                    elif msg.topic == "image" and capturing:
                        self.frames.append(msg.arrays["scene_rgb"].copy())

    def _print_live(self, name: str, r: dict[str, Any]) -> None:
        event = r.get("event")
        if name == "fast" and event == "stats":
            rate = r.get("cmd_rate") or {}
            line = (f"[fast] ep {r['episode']} step {r['step']} step_ms p50/p99 {r['step_ms']['p50']}/"
                    f"{r['step_ms']['p99']} chunks {r.get('chunks', 0)} skipped {r.get('skipped', 0)} "
                    f"exhausted {r.get('exhausted', 0)} holding {r['holding']}")
            if rate:
                line += (f" cmd {rate['mean_hz']} Hz (target {rate['target_hz']:g}, "
                         f"jitter p99 {rate['jitter_p99_ms']} ms)")
            print(line, flush=True)
        elif name == "slow" and event == "stats":
            print(f"[slow] ep {r['episode']} plans {r['plans']} infer_ms p50/p99 {r['infer_ms']['p50']}/"
                  f"{r['infer_ms']['p99']} rejects {sum(r['rejects'].values())}", flush=True)
        elif name == "fast" and event == "episode":
            print(f"[episode {r['index']}] seed {r['seed']} success {r['success']} ({r['ended_by']}, "
                  f"{r['sim_time']} s sim, {r['wall_s']} s wall, {r['chunks']} chunks)", flush=True)

    # ------------------------------------------------------------------------------------ outputs
    def results(self, codes: dict[str, int], error: str | None) -> dict[str, Any]:
        episodes = [r for r in self.records.get("fast", []) if r.get("event") == "episode"]
        last = {name: next((r for r in reversed(recs) if r.get("event") == "exit"), None)
                for name, recs in self.records.items()}
        n_ok = sum(e["success"] for e in episodes)
        return {
            "task": self.cfg.task, "mode": self.cfg.mode, "checkpoint": self.cfg.checkpoint,
            "episodes": len(episodes), "episodes_requested": self.cfg.episodes, "seed": self.cfg.seed,
            "success_rate": n_ok / len(episodes) if episodes else None,
            "episodes_detail": episodes, "loop": {"fast": last.get("fast"), "slow": last.get("slow"),
                                                  "robot": last.get("robot")},
            "fast_sched": self.fast_sched,
            "exit_codes": codes, "interrupted": self.interrupted, "error": error, "run_dir": str(self.out),
        }

    def write_outputs(self, result: dict[str, Any]) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(self.out / "results.json")
        if self.frames:
            import imageio.v2 as imageio

            fps = max(1, round(self.cfg.robot.camera_hz))
            with imageio.get_writer(self.out / "episode0.mp4", fps=fps, codec="libx264", quality=7,
                                    macro_block_size=8) as w:
                for f in self.frames:
                    w.append_data(f)
        trace = self.out / "fast_timing.npz"
        if trace.is_file():
            plot_timing(trace, self.out / "timing.png", f"{self.cfg.task} / {self.cfg.mode}",
                        None if self.cfg.mode == "lockstep" else self.cfg.fast.cmd_hz)


def plot_timing(trace: Path, path: Path, title: str, cmd_hz: float | None) -> None:
    """Fast-node iteration time, command intervals and chunk hand-overs over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.load(trace) as z:
        d = {k: z[k] for k in z.files}
    wall = d["tick_wall"]
    if wall.size < 2:
        return
    t = wall - wall[0]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), dpi=100, sharex=True)
    axes[0].plot(t, d["tick_step_ms"], lw=0.6)
    axes[0].set_ylabel("iteration work [ms]")
    axes[0].set_yscale("log")
    axes[1].plot(t[1:], np.diff(wall) * 1e3, lw=0.6, label="command interval")
    if cmd_hz:
        axes[1].axhline(1e3 / cmd_hz, color="k", ls="--", lw=0.8, label=f"target {cmd_hz:g} Hz")
    axes[1].set_ylabel("interval [ms]")
    axes[1].legend(fontsize=8, loc="upper right")
    if d["adopt_wall"].size:
        ta = d["adopt_wall"] - wall[0]
        axes[2].step(ta, d["adopt_infer_ms"], where="post", label="slow inference [ms]")
        axes[2].plot(ta, d["adopt_skipped"], "o", ms=3, label="actions skipped at hand-over")
    axes[2].fill_between(t, 0, d["tick_holding"] * max(1.0, float(np.nanmax(d["adopt_infer_ms"], initial=1.0))),
                         color="crimson", alpha=0.15, step="post", label="holding (chunk ran out)")
    axes[2].set_ylabel("hand-overs")
    axes[2].set_xlabel("wall time [s]")
    axes[2].legend(fontsize=8, loc="upper right")
    axes[0].set_title(f"slow-fast runtime timing — {title}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _kv(d: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    cfg = load_config(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (Path(cfg.out) if cfg.out else Path("outputs/runtime") / f"{cfg.task}-{cfg.mode}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(cfg, args, out)

    def _interrupt(*_: object) -> None:
        launcher.interrupted = True

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    error = None
    try:
        launcher.start_all()
        launcher.monitor()
    except KeyboardInterrupt:
        error = "interrupted"
    except ChildDied as exc:
        error = str(exc).splitlines()[0]
        print(f"stopping: {exc}", file=sys.stderr, flush=True)
    finally:
        codes = launcher.stop_all()
    result = launcher.results(codes, error)
    launcher.write_outputs(result)
    summary = {k: v for k, v in result.items() if k not in ("episodes_detail", "loop")}
    fast = result["loop"]["fast"] or {}
    summary["fast"] = {k: fast.get(k) for k in ("step_ms", "cmd_rate", "tactile_to_cmd_ms", "chunks", "skipped",
                                                 "exhausted", "rejects", "cmd_digest")}
    slow = result["loop"]["slow"] or {}
    summary["slow"] = {k: slow.get(k) for k in ("plans", "infer_ms", "rejects")}
    print(json.dumps(summary, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
