"""Slow-fast runtime loop timing: fast-node step time, command rate and jitter, tactile-to-command latency across
processes, slow-node inference time per DDIM step count; our loop against RDP's own loop shape.

    python -m benchmarks.runtime_loop [seconds=8] [checkpoint=RUN] [loops=[ours,...]] [robot_rt_priority=45]

Loop measurements run the real ``rdp.runtime.fast`` and ``rdp.runtime.slow`` processes against a fake robot node in
this process (state / tactile / wrench at 250 Hz with monotonic stamps, like ``sim.node``; no physics, so the
numbers are the runtime's, not the simulator's). Commands come back here: their arrival intervals give the achieved
rate and jitter; a command's ``tactile_stamp`` (the reading its action was decoded from) against its arrival time
gives the tactile-to-command latency, robot -> fast node -> robot, one clock. Configurations:

* ``ours``: commands at 250 Hz, one incremental GRU step per 25 Hz policy step, a new chunk every 4 steps.
* ``ours_no_fifo``: the same with ``fast.rt_priority=0``: the fast node at ordinary priority instead of SCHED_FIFO
  (where the OS grants FIFO at all; the fast node's ready line says, and the JSON keeps it as ``fast_sched``).
* ``ours_no_prewarm``: the same with ``fast.prewarm_ms=null``: no rehearsal of a step's decode before its tick.
* ``ours_no_phase_lock``: the same with ``fast.phase_lead_ms=null``: the fast node's ticks keep whatever phase they
  started with against the robot's publication (a reading 0-4 ms old), instead of locking 2 ms after it.
* ``rdp_shape``: RDP's loop (fast 24 Hz, slow ~6 Hz, a new chunk every 16 ticks): commands at 24 Hz,
  ``replan_every=16``; its reaction to touch waits for the next 24 Hz tick.

The fake robot stamps each command as it arrives, so its own wake-up delay would read as the fast node's jitter.
It therefore runs under SCHED_FIFO (``robot_rt_priority``, 45: below the fast node's 50) once both nodes are up,
as a robot driver would, where the OS grants it (the JSON keeps ``robot_sched``). A check with a FIFO sender at
250 Hz and two CPU-bound processes beside it (2026-12-04): an ordinary receiver saw p99 jitter 2.5-4.1 ms, a FIFO
one 0.16 ms.

Slow-node inference: ``DiffusionPolicy.predict`` at the sizes ``configs/policy/rdp.yaml`` trains (latent 8 x 16,
proprio + 3 tactile pads, UNet 32/64/128; random weights), batch 1, 1 thread, DDIM 1/2/4/8/16 steps; plus the
tokenizer's per-tick decode: one incremental step vs re-running the GRU over the chunk so far (RDP's loop).
Without ``checkpoint`` a tiny run is trained first (seconds). Prints a table; writes
benchmarks/results/runtime_loop.json (``out``); the last stdout line is that JSON.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import publish
from bus.cli import UsageError, choose, command
from bus.config import compose
from bus.message import Message, encode
from bus.sched import sched_fields, set_fifo, set_normal
from bus.transport import Publisher, Subscriber
from rdp.runtime.process import Child
from sensors.types import MARKER_GRID

NODE_HZ = 250.0
# name: (command Hz, replan every, runtime overrides)
LOOPS: dict[str, tuple[float, int, tuple[str, ...]]] = {
    "ours": (250.0, 4, ()),
    "ours_no_fifo": (250.0, 4, ("fast.rt_priority=0",)),
    "ours_no_prewarm": (250.0, 4, ("fast.prewarm_ms=null",)),
    "ours_no_phase_lock": (250.0, 4, ("fast.phase_lead_ms=null",)),
    "rdp_shape": (24.0, 16, ()),
}


def _observation(seq: int, sim_time: float, stamp: float) -> list[Message]:
    meta = {"sim_time": sim_time}
    return [
        Message("state", stamp, seq, {"tcp_pos": np.array([[0.5, 0.0, 0.3]]), "tcp_quat": np.array([[0, 1.0, 0, 0]]),
                                      "joint_pos": np.zeros((1, 7)), "joint_vel": np.zeros((1, 7)),
                                      "gripper_width": np.full(1, 0.02)}, meta),
        Message("tactile", stamp, seq, {"marker_offset": np.random.default_rng(seq).normal(
            scale=1e-4, size=(3, *MARKER_GRID, 2)).astype(np.float32),
            "marker_depth": np.zeros((3, 14, 18), np.float32), "marker_slip": np.zeros((3, 2), np.float32)}, meta),
        Message("wrench", stamp, seq, {"wrench": np.zeros((1, 6))}, meta),
    ]


def _pct(x: np.ndarray, scale: float = 1e3) -> dict:
    if not x.size:
        return {"n": 0}
    p50, p99 = np.percentile(x, [50, 99])
    return {"n": int(x.size), "p50": round(float(p50) * scale, 4), "p99": round(float(p99) * scale, 4),
            "max": round(float(x.max()) * scale, 4)}


ROBOT_PRIORITY = 45  # the fake robot's SCHED_FIFO priority: below the fast node's default (50), as a robot driver


def measure_loop(run: Path, name: str, cmd_hz: float, replan_every: int, seconds: float, tmp: Path,
                 extra: tuple[str, ...] = (), robot_priority: int = ROBOT_PRIORITY) -> dict:
    children: list[Child] = []
    with Publisher("tcp://127.0.0.1:*") as pub, \
            Subscriber("tcp://127.0.0.1:*", topics=("cmd", "reset"), bind=True, hwm=100_000) as cmd:
        try:
            args = [f"checkpoint={run}", f"fast.cmd_hz={cmd_hz}", f"slow.replan_every={replan_every}", "stats_hz=1",
                    "fast.hold=pose", "perturb=false", *extra]
            fast = Child("fast", "rdp.runtime.fast", [*args, f"addresses.robot_pub={pub.address}",
                                                      f"addresses.robot_cmd={cmd.address}"], tmp / f"{name}-fast.log")
            children.append(fast)
            ready = fast.wait_ready()
            sched = sched_fields(ready)
            slow = Child("slow", "rdp.runtime.slow", [*args, f"addresses.obs={pub.address}",
                                                      f"addresses.chunk={ready['chunk']}"], tmp / f"{name}-slow.log")
            children.append(slow)
            slow.wait_ready()
            # Only now, with both nodes started (they must not inherit it) and this process's ZeroMQ I/O thread
            # long running: the fake robot and its I/O thread run FIFO, so a command is stamped when it arrives,
            # not when an ordinary thread next gets a core (receiver-side delay would read as the fast node's jitter).
            robot_sched = set_fifo(robot_priority).record()
            seq, tick, episode, t_end = 0, 0, 0, None
            arrivals, latencies = [], []
            last_step = -1
            next_tick = time.monotonic()
            while t_end is None or time.monotonic() < t_end:
                # Between two node ticks, wait on the command socket itself: each command is stamped when it
                # arrives, not when the next tick polls (polling once per tick quantised both the measured jitter
                # and the tactile-to-command latency to the 4 ms node period).
                while (left := next_tick - time.monotonic()) > 0:
                    msg = cmd.recv(timeout=left)
                    if msg is None:
                        break
                    arrived = time.monotonic()
                    if msg.topic == "reset":
                        episode, tick = episode + 1, 0
                        pub.publish("episode", meta={"event": "reset", "episode": episode, "seed": msg.meta["seed"]})
                        continue
                    if t_end is None:
                        t_end = arrived + seconds  # measure from the first command on
                    arrivals.append(arrived)
                    if msg.meta["step"] != last_step:  # the first command decoded from a new step's reading
                        last_step = msg.meta["step"]
                        latencies.append(arrived - msg.meta["tactile_stamp"])
                now = time.monotonic()
                for m in _observation(seq, tick / NODE_HZ, now):
                    pub.socket.send_multipart(encode(m), copy=False)
                if seq % 25 == 0:  # status at 10 Hz, as sim.node: the fast node learns the robot's episode from it
                    pub.publish("status", meta={"episode": episode, "held": False, "sim_time": tick / NODE_HZ})
                seq, tick = seq + 1, tick + 1
                next_tick += 1.0 / NODE_HZ
                if now - next_tick > 1.0 / NODE_HZ:  # more than a period late: skip the missed ticks, as RateKeeper
                    next_tick = now + 1.0 / NODE_HZ
        finally:
            set_normal()
            for c in reversed(children):
                c.stop()
    stats, slow_stats = (_exit_record(c) for c in children)
    intervals = np.diff(np.array(arrivals))
    nominal = 1.0 / cmd_hz
    return {
        "config": {"cmd_hz": cmd_hz, "replan_every": replan_every, "policy_hz": 25.0, "overrides": list(extra)},
        "fast_sched": sched,
        "robot_sched": robot_sched,
        "commands_received": len(arrivals),
        "achieved_rate_hz": round(float(len(intervals) / (arrivals[-1] - arrivals[0])), 2),
        "received_jitter_ms": _pct(np.abs(intervals - nominal)),
        "fast_self": {"step_ms": stats["step_ms"], "cmd_rate": stats.get("cmd_rate"),
                      "tactile_to_cmd_ms": stats.get("tactile_to_cmd_ms"), "chunks": stats.get("chunks"),
                      "tactile_age_ms": stats.get("tactile_age_ms"),
                      "skipped": stats.get("skipped"), "exhausted": stats.get("exhausted", 0)},
        "tactile_to_command_ms": _pct(np.array(latencies)),
        "slow_self": {"plans": slow_stats["plans"], "infer_ms": slow_stats["infer_ms"]},
    }


def _exit_record(child: Child) -> dict:
    """The exit record a stopped child printed (its statistics over the whole run)."""
    while not child.lines.empty():
        _, record = child.lines.get_nowait()
        if record is not None and record.get("event") == "exit":
            return record
    raise RuntimeError(f"{child.name} printed no exit record; log tail:\n{child.tail()}")


def measure_inference(steps: tuple[int, ...] = (1, 2, 4, 8, 16), repeats: int = 30) -> dict:
    from rdp.policy import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig(target="latent", horizon=32, action_dim=10, latent_steps=8, latent_channels=16,
                                obs_steps=2, lowdim_keys=("proprio", "tactile"), lowdim_dims=(10, 45), image_keys=(),
                                encoder="none", down_dims=(32, 64, 128), diffusion_step_embed_dim=32)
    policy = DiffusionPolicy(cfg).eval()
    rng = np.random.default_rng(0)
    policy.fit_normalizer({"proprio": rng.normal(size=(100, 10)), "tactile": rng.normal(size=(100, 45))},
                          rng.normal(size=(100, 8, 16)))
    obs = {"proprio": torch.randn(1, 2, 10), "tactile": torch.randn(1, 2, 45)}
    out = {}
    for k in steps:
        policy.predict(obs, num_inference_steps=k)
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.predict(obs, num_inference_steps=k)
            t.append(time.perf_counter() - t0)
        t = np.array(t)
        out[str(k)] = {**_pct(t), "hz_at_p50": round(1.0 / float(np.median(t)), 1)}
    return out


def measure_decode(horizon: int = 32, repeats: int = 320) -> dict:
    """Per-tick decoder cost over a chunk: our incremental step vs re-running the GRU over the chunk so far (RDP's
    loop, ``benchmarks.rdp_tokenizer_step.rerun_prefix``)."""
    from benchmarks.rdp_tokenizer_step import rerun_prefix
    from rdp.tokenizer import AsymmetricTokenizer, TokenizerConfig

    tok = AsymmetricTokenizer(TokenizerConfig(action_dim=10, cond_dim=45, horizon=horizon, encoder_hidden=32,
                                              decoder_hidden=64)).eval()
    z, cond = torch.randn(1, 8, 16), torch.randn(1, horizon, 45)
    inc, rerun = [], []
    with torch.inference_mode():
        state = tok.init_state(z)
        for r in range(repeats):
            t = r % horizon
            if t == 0:
                state = tok.init_state(z)
            t0 = time.perf_counter()
            _, state = tok.step(state, cond[:, t])
            inc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rerun_prefix(tok, z, cond, t)
            rerun.append(time.perf_counter() - t0)
    return {"incremental_step_ms": _pct(np.array(inc)), "rerun_chunk_so_far_ms": _pct(np.array(rerun))}


@dataclass
class RuntimeLoopConfig:
    """``configs/benchmarks/runtime_loop.yaml``."""

    seconds: float = 8.0  # measured seconds per loop configuration
    checkpoint: str | None = None  # a training run; None: a tiny one, trained first
    loops: list[str] = field(default_factory=lambda: list(LOOPS))
    robot_rt_priority: int = ROBOT_PRIORITY  # the fake robot's SCHED_FIFO priority (0: ordinary scheduling)
    out: str = "benchmarks/results/runtime_loop.json"

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.robot_rt_priority < 0:
            raise UsageError(f"seconds={self.seconds} must be > 0 and robot_rt_priority={self.robot_rt_priority} >= 0")
        for name in self.loops:
            choose("loops", name, LOOPS, "loop configuration")


@command("benchmarks.runtime_loop")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(RuntimeLoopConfig, "benchmarks/runtime_loop", list(sys.argv[1:] if argv is None else argv),
                   "runtime_loop", "seconds=2 loops=[ours]")
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    if args.checkpoint:
        run = Path(args.checkpoint)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rdp"))
        from test_runtime_units import make_tiny_run

        run = make_tiny_run(tmp)
    loops = {}
    for name in args.loops:
        cmd_hz, replan, extra = LOOPS[name]
        loops[name] = measure_loop(run, name, cmd_hz, replan, args.seconds, tmp, extra, args.robot_rt_priority)
    inference = measure_inference()
    decode = measure_decode()
    print(f"{'loop':18} {'cmd Hz':>8} {'target':>7} {'jit p99 ms':>11} {'step p50/p99 ms':>17} "
          f"{'tac->cmd p50/p99 ms':>21}")
    for name, r in loops.items():
        s, lat = r["fast_self"]["step_ms"], r["tactile_to_command_ms"]
        print(f"{name:18} {r['achieved_rate_hz']:8.1f} {r['config']['cmd_hz']:7.0f} "
              f"{r['received_jitter_ms']['p99']:11.3f} {s['p50']:8.3f}/{s['p99']:<8.3f} "
              f"{lat['p50']:10.3f}/{lat['p99']:<10.3f}")
    print("slow inference (latent 8x16, lowdim, 1 thread): " + ", ".join(
        f"{k} steps {v['p50']:.1f} ms ({v['hz_at_p50']} Hz)" for k, v in inference.items()))
    print(f"decoder per tick: incremental {decode['incremental_step_ms']['p50']:.3f} ms, re-run chunk so far "
          f"{decode['rerun_chunk_so_far_ms'].get('p50', float('nan')):.3f} ms (p50)")
    publish({
        "benchmark": "runtime_loop", "seconds": args.seconds, "cpu_count": os.cpu_count(),
        "note": "fake robot node in the benchmark process, stamping commands on arrival",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "loops": loops, "slow_inference_ms_by_ddim_steps": inference, "decoder_per_tick": decode,
        "goals": {"fast_step_p99_ms": 1.0, "cmd_rate_hz": 200, "jitter_p99_ms": 1.0, "tactile_to_cmd_p99_ms": 5.0,
                  "slow_hz_at_8_steps": 10},
    }, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
