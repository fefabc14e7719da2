"""Run a trained policy as the slow-fast process graph: robot node + slow node + fast node (+ relay).

    python -m rdp.run task=wipe checkpoint=RUN_DIR [mode=realtime|lockstep] [episodes=N seed=S] [out=DIR]
    python -m rdp.run ... secure.enabled=true secure.keys=KEYS secure.slow_source=127.0.0.2   # "remote" slow node
    python -m rdp.run ... restart.slow.max_restarts=0          # a dead slow node stops the run instead

Config: ``configs/runtime/default.yaml`` (``rdp.runtime.config.RuntimeConfig``); every node gets the same hydra
overrides (``key=value``; ``--help``, ``--cfg``) plus the addresses read from the ready lines of the nodes started
before it (all ports are picked by the OS). The robot node renders cameras when the policy reads them (at its
run.json ``image_hz`` and frame size) or for the video, else not (``robot_settings``). Start order: robot node,
(relay), fast node (it binds the chunk socket), slow node, then the slow node's warm standby. The fast node runs the
episodes; the launcher prints one live line per fast-node stats record and supervises the children until the fast
node finishes, Ctrl-C / SIGTERM, or a child dies that may not:

* A child with a ``restart.<name>`` policy (the slow node: it connects to addresses that outlive it) is restarted
  with the same arguments after an exponential back-off (``rdp.runtime.process.Backoff``); more than
  ``max_restarts`` deaths within ``window_s`` stop the run, and so does one exit with a usage error (exit 2: its
  configuration or input is wrong, e.g. an image policy's slow node that gets no camera frames), in its one line.
  With ``standby`` a warm spare (``rdp.runtime.standby``) takes over instead of a cold start. The fast node runs
  out its chunk and holds the robot meanwhile; in lockstep it stops waiting for a plan the dead node owed once a new
  slow node is up. One live line per death and restart.
* Any other death (fast node, robot node, relay) stops the run.

Stopping: once a stop is decided no command reaches the robot. The fast node is frozen (SIGSTOP) so it sends
nothing more, then the robot node latches a hold (its ``hold`` request: hold, refuse every command until it exits)
and acknowledges it; only then is the fast node resumed and told to stop (SIGTERM), so it still writes its trace and
statistics, and its late commands are refused. Without the robot's acknowledgement the fast node is killed instead.
Then the slow node (and standby), relay, robot: SIGTERM, then SIGKILL. Children also die with the launcher
(PR_SET_PDEATHSIG).

Writes into the run directory: ``results.json`` (per-episode success, loop statistics of every node, every restart
with its back-off and the times to a new slow node and to its first chunk driving the robot, the fast node's holds,
how the stop went), ``episode0.mp4`` (the robot node's scene camera during the first episode), ``timing.png``
(fast-node iteration time, command intervals, chunk hand-overs) and each child's log (``slow.2.log``... for
restarts). The last stdout line is the results summary JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import USAGE_EXIT, UsageError, command
from bus.config import override
from bus.node import node_args
from bus.sched import sched_fields
from bus.transport import Client, Publisher, Subscriber
from rdp.runtime.config import DEFAULT_CAMERA_HZ, RestartPolicy, RuntimeConfig, load_config
from rdp.runtime.process import Backoff, Child, robot_node_args

STOP_GRACE_S = 30.0  # a finished fast node's own shutdown (interpreter, torch) on a loaded machine
STOP_TIMEOUT_S = 30.0  # SIGTERM -> exit before SIGKILL
READY_TIMEOUT_S = 180.0  # a starting child's ready line (torch import and checkpoint load on a loaded machine)
LATCH_TIMEOUT_S = 2.0  # the robot node's acknowledgement of a latched hold (it answers within one tick)
OPTIONAL = ("planner",)  # children whose death the run outlives: the planning slow node then plans alone


class ChildDied(RuntimeError):
    pass


@dataclass
class ChildSpec:
    """How to start one child; a restart starts it the same way (same module, same arguments)."""

    name: str
    module: str
    args: list[str]
    standby_module: str | None = None  # its warm spare: loads, follows its inputs, waits silently for SIGUSR1


@dataclass
class Supervised:
    """One restartable child: the process that is it now, its warm spare, its back-off and its history."""

    spec: ChildSpec
    policy: RestartPolicy
    primary: str | None = None  # key of the process that is the child (None: dead, a restart is due)
    starting: bool = False  # the primary is a cold start that has not said it is ready
    spare: str | None = None  # key of the warm spare
    spare_ready: bool = False
    spare_due: float | None = None  # when to start a spare (None: none wanted)
    due: float | None = None  # when the pending restart may happen
    pending: dict[str, Any] | None = None  # the death the pending restart answers
    restarts: list[dict[str, Any]] = field(default_factory=list)
    spare_deaths: list[dict[str, Any]] = field(default_factory=list)
    backoff: Backoff = field(init=False)
    spare_backoff: Backoff = field(init=False)  # a spare that keeps dying only ends the spares, not the run
    wants_spare: bool = field(init=False)

    def __post_init__(self) -> None:
        p = self.policy
        self.backoff = Backoff(p.max_restarts, p.window_s, p.initial_delay_s, p.max_delay_s)
        self.spare_backoff = Backoff(p.max_restarts, p.window_s, p.initial_delay_s, p.max_delay_s)
        self.wants_spare = p.standby and p.max_restarts > 0 and self.spec.standby_module is not None


class Launcher:
    def __init__(self, cfg: RuntimeConfig, overrides: list[str], out: Path, robot: dict[str, Any]) -> None:
        self.cfg = cfg
        self.robot_settings = robot  # the robot node's settings (robot_settings)
        self.overrides = [o for o in overrides if not o.startswith(("addresses.", "out="))]
        self.out = out
        self.t0 = time.monotonic()
        self.lines: queue.Queue = queue.Queue()
        self.children: dict[str, Child] = {}  # by process key: the child's name, "slow.2" for its second process...
        self.roles: dict[str, str] = {}  # process key -> child name
        self.incarnations: Counter[str] = Counter()
        self.supervised: dict[str, Supervised] = {}
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.interrupted = False
        self.frames: list[np.ndarray] = []
        self.frame_times: list[float] = []  # sim_time of each captured frame
        self.video_sub: Subscriber | None = None
        self.fast_sched: dict[str, Any] = {}
        self.robot: dict[str, Any] = {}  # the robot node's ready record
        self.hold_pub: Publisher | None = None  # realtime: the robot's command socket, for the latch
        self.status_sub: Subscriber | None = None  # realtime: the robot's status, which acknowledges the latch
        self.stop_record: dict[str, Any] = {}
        self.specs: dict[str, ChildSpec] = {}

    # ------------------------------------------------------------------------------------ processes
    def _spawn(self, spec: ChildSpec, standby: bool = False) -> str:
        self.incarnations[spec.name] += 1
        n = self.incarnations[spec.name]
        key = spec.name if n == 1 else f"{spec.name}.{n}"
        module = spec.standby_module if standby and spec.standby_module else spec.module
        self.children[key] = Child(key, module, spec.args, self.out / f"{key}.log", self.lines)
        self.roles[key] = spec.name
        self.records.setdefault(spec.name, [])
        return key

    def _start(self, spec: ChildSpec) -> dict[str, Any]:
        """Start a child and wait for its ready record (start-up: any death here stops the run)."""
        key = self._spawn(spec)
        end = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < end:
            record = self._next(timeout=0.5)
            if record is not None and record[0] == spec.name and record[1].get("event") == "ready":
                return record[1]
        child = self.children[key]
        raise ChildDied(f"{spec.name} gave no ready line; log {child.log_path}:\n{child.tail()}")

    def _next(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """Next stdout record of a child (by child name; a spare's records are handled here, None). A child's end:
        ChildDied unless the fast node finished or the child is supervised (then its restart is scheduled)."""
        if self.interrupted:
            raise KeyboardInterrupt
        try:
            key, record = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        name = self.roles.get(key, key)
        if record is None:
            return self._ended(key)
        sup = self.supervised.get(name)
        if sup is not None and key != sup.primary:
            if key == sup.spare and record.get("event") == "ready":
                sup.spare_ready = True
                print(f"[supervisor] {name} standby pid {self.children[key].pid} ready", flush=True)
            return None
        self.records[name].append(record)
        if sup is not None and record.get("event") == "ready" and sup.starting:
            self._took_over(sup, key, "cold", self.children[key].ready_at or time.monotonic())
        elif sup is not None and record.get("event") == "active" and sup.restarts:
            restart = sup.restarts[-1]
            if restart["pid"] == record.get("pid") and isinstance(record.get("first_plan_wall"), float):
                restart["first_plan_s"] = round(record["first_plan_wall"] - restart["died_at"], 3)
        return name, record

    def _ended(self, key: str) -> tuple[str, dict[str, Any]] | None:
        child = self.children[key]
        name = self.roles[key]
        try:
            child.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # closed its stdout but runs on: treat it as dead
            child.kill9()
        finished = name == "fast" and any(r.get("event") == "exit" for r in self.records["fast"])
        if finished:
            return (name, {"event": "ended"})
        if name in OPTIONAL and key in self.children:  # the run goes on without it (the slow node plans alone)
            self.children.pop(key).stop(timeout=5.0)
            self.records[name].append({"event": "died", "exit_code": child.proc.returncode,
                                       "died_s": round(time.monotonic() - self.t0, 3)})
            print(f"[{name}] pid {child.pid} died (exit {child.proc.returncode}); the run goes on without it "
                  f"(log {child.log_path})", flush=True)
            return None
        sup = self.supervised.get(name)
        if sup is None:
            raise ChildDied(f"{name} (pid {child.pid}) exited with code {child.proc.returncode}; log "
                            f"{child.log_path}:\n{child.tail()}")
        if key in (sup.primary, sup.spare):
            self._on_death(sup, key)
        return None

    # ------------------------------------------------------------------------------------ supervision
    def _begin_supervision(self) -> None:
        """Children with a restart policy are supervised from here on (a death during start-up stops the run)."""
        for key, name in self.roles.items():
            policy = self.cfg.restart.get(name)
            spec = self.specs.get(name)
            if policy is None or spec is None:
                continue
            sup = Supervised(spec, policy, primary=key)
            sup.spare_due = time.monotonic() if sup.wants_spare else None
            self.supervised[name] = sup

    def _on_death(self, sup: Supervised, key: str) -> None:
        noticed = time.monotonic()
        child = self.children.pop(key)
        child.stop(timeout=5.0)  # reaped already: closes its pipes and log
        now = child.ended_at or noticed
        name, code = sup.spec.name, child.proc.returncode
        if code == USAGE_EXIT:  # its configuration or input is wrong: a new process would fail the same way
            raise ChildDied(f"{name} (pid {child.pid}) failed: {child.last_log_line()}")
        death = {"died_pid": child.pid, "exit_code": code, "died_s": round(now - self.t0, 3),
                 "noticed_s": round(noticed - now, 3), "robot_episode": self._fast_episode(), "died_at": now}
        if key == sup.spare:
            sup.spare, sup.spare_ready = None, False
            delay = sup.spare_backoff.on_death(now)
            sup.spare_deaths.append({**death, "backoff_s": delay})
            sup.spare_due = None if delay is None else now + delay
            print(f"[supervisor] {name} standby pid {child.pid} died (exit {code}); "
                  + ("no more standbys (too many deaths)" if delay is None else f"a new one in {delay:.2f} s"),
                  flush=True)
            return
        restarts = sup.backoff.in_window(now)
        delay = sup.backoff.on_death(now)
        if delay is None:
            raise ChildDied(f"{name} died {restarts + 1} times within {sup.policy.window_s:g} s, more than "
                            f"restart.{name}.max_restarts={sup.policy.max_restarts} allows: giving up (pid {child.pid} "
                            f"exited with code {code}); log {child.log_path}:\n{child.tail()}")
        sup.primary, sup.starting = None, False
        sup.due, sup.pending = now + delay, {**death, "backoff_s": round(delay, 3)}
        print(f"[supervisor] {name} pid {child.pid} died (exit {code}) at {death['died_s']:.1f} s; restart "
              f"{restarts + 1} of {sup.policy.max_restarts} within {sup.policy.window_s:g} s after {delay:.2f} s"
              + (" (warm standby)" if sup.spare is not None else " (cold start)"), flush=True)

    def _supervise(self) -> None:
        """Due restarts and spares; a child that never gets ready is killed (and counts as a death)."""
        now = time.monotonic()
        for sup in self.supervised.values():
            if sup.primary is None and sup.due is not None and now >= sup.due:
                if sup.spare is not None:
                    if sup.spare_ready:  # a spare still loading is ahead of a cold start: it is waited for
                        self._promote(sup)
                else:
                    sup.primary, sup.starting = self._spawn(sup.spec), True
            for key, waiting in ((sup.primary, sup.starting), (sup.spare, not sup.spare_ready)):
                child = self.children.get(key) if key is not None else None
                if child is not None and waiting and now - child.started_at > READY_TIMEOUT_S and child.alive():
                    print(f"[supervisor] {sup.spec.name} pid {child.pid} not ready after {READY_TIMEOUT_S:.0f} s; "
                          "killing it", flush=True)
                    child.signal(signal.SIGKILL)
            if (sup.spare is None and sup.spare_due is not None and now >= sup.spare_due
                    and sup.primary is not None and not sup.starting):
                sup.spare, sup.spare_ready, sup.spare_due = self._spawn(sup.spec, standby=True), False, None

    def _promote(self, sup: Supervised) -> None:
        key = sup.spare
        assert key is not None
        t = time.monotonic()
        if not self.children[key].signal(signal.SIGUSR1):
            return  # it died just now; its end of output is on the way and makes the next decision
        sup.primary, sup.spare, sup.spare_ready = key, None, False
        self._took_over(sup, key, "standby", t)

    def _took_over(self, sup: Supervised, key: str, how: str, at: float) -> None:
        """The restart is done: ``key`` is ready (a cold start's ready line, a spare's promotion) at ``at``."""
        restart = {**(sup.pending or {}), "pid": self.children[key].pid, "via": how, "ready_at": at}
        restart["ready_s"] = round(at - restart["died_at"], 3) if "died_at" in restart else None
        sup.restarts.append(restart)
        sup.pending, sup.due, sup.starting = None, None, False
        if sup.wants_spare and sup.spare is None and sup.spare_due is None:
            sup.spare_due = at
        print(f"[{sup.spec.name}] pid {restart['pid']} ready ({'warm standby' if how == 'standby' else 'cold start'}, "
              f"{restart['ready_s']:.2f} s after the death)", flush=True)

    def _fast_episode(self) -> int | None:
        return next((r["episode"] for r in reversed(self.records.get("fast", [])) if r.get("event") == "stats"), None)

    # ------------------------------------------------------------------------------------ start
    def start_all(self) -> None:
        cfg = self.cfg
        robot_spec = ChildSpec("robot", "sim.node", robot_node_args(cfg.task, cfg.mode, cfg.seed, cfg.perturb,
                                                                     self.robot_settings))
        robot = self._start_spec(robot_spec)
        self.robot = robot
        self._open_latch(robot)
        if cfg.video and self.robot_settings["cameras"]:
            self._subscribe_video(robot)
        addr = {"addresses.robot_pub": robot["pub"], "addresses.robot_cmd": robot["cmd"]}
        if robot.get("tick"):
            addr["addresses.robot_tick"] = robot["tick"]
        obs = robot["pub"]
        if cfg.secure.enabled:
            host = cfg.addresses.chunk.split("://")[1].rsplit(":", 1)[0]
            relay = self._start_spec(ChildSpec("relay", "rdp.runtime.relay", [*self.overrides, *_kv(addr),
                                                                              override("addresses.obs",
                                                                                       f"tcp://{host}:*")]))
            obs = relay["obs"]
        fast = self._start_spec(ChildSpec("fast", "rdp.runtime.fast", [
            *self.overrides, *_kv(addr), override("out", str(self.out)),
            override("addresses.chunk", self.cfg.addresses.chunk)]))
        self.fast_sched = sched_fields(fast)
        if cfg.mode == "realtime":
            print(f"[fast] scheduling {fast.get('sched')} priority {fast.get('rt_priority')}"
                  + (f" ({fast['sched_note']})" if fast.get("sched_note") else ""), flush=True)
        slow_args = [*self.overrides, override("addresses.obs", obs), override("addresses.chunk", fast["chunk"])]
        modules = ("rdp.runtime.slow", "rdp.runtime.standby")
        if cfg.planning.enabled:  # the planner node, then the planning slow node (world_model.runtime) beside it
            p = cfg.planning
            planner = self._start_spec(ChildSpec("planner", "world_model.node", _kv({
                "task": cfg.task, "run": p.run, "scorer": p.scorer, "memory": str(p.memory).lower(),
                "score_frames": str(p.score_frames), "lora_rank": str(p.lora_rank), "lora_lr": str(p.lora_lr),
                "lora_steps": str(p.lora_steps), "threads": str(p.threads), "nice": str(cfg.slow.nice)})))
            slow_args.append(override("addresses.planner", str(planner["address"])))
            modules = ("world_model.runtime", "world_model.runtime_standby")
        self._start_spec(ChildSpec("slow", modules[0], slow_args, standby_module=modules[1]))
        self._begin_supervision()

    def _start_spec(self, spec: ChildSpec) -> dict[str, Any]:
        self.specs[spec.name] = spec
        ready = self._start(spec)
        where = ", ".join(f"{k} {ready[k]}" for k in ("pub", "cmd", "tick", "obs") if ready.get(k))
        print(f"[{spec.name}] pid {self.children[spec.name].pid} ready" + (f" ({where})" if where else ""), flush=True)
        return ready

    def _open_latch(self, robot: dict[str, Any]) -> None:
        """Realtime: connect to the robot's command socket and status now, so a stop can latch it at once."""
        if robot.get("tick"):
            return  # lockstep: the hold is a request on the tick socket
        self.status_sub = Subscriber(robot["pub"], topics=("status",), conflate=True)
        self.hold_pub = Publisher(robot["cmd"], bind=False)
        if not self.hold_pub.wait_for_subscriber("hold", timeout=30.0):
            raise ChildDied("the robot node does not subscribe to 'hold' requests on its command socket")

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

    # ------------------------------------------------------------------------------------ stop
    def stop_all(self) -> dict[str, int]:
        """Freeze the fast node, latch the robot's hold, then stop every child: fast, slow (and its standby), relay,
        robot. From the freeze on nothing the fast node sends reaches the robot (see the module docstring)."""
        decided = time.monotonic()
        fast, robot = self.children.get("fast"), self.children.get("robot")
        finished = any(r.get("event") == "exit" for r in self.records.get("fast", []))
        robot_up = robot is not None and robot.alive()
        frozen = fast is not None and not finished and robot_up and fast.freeze()
        latch = self._latch_robot() if robot_up else None
        self.stop_record = {"decided_s": round(decided - self.t0, 3), "fast_frozen": frozen, "robot_latch": latch}
        if frozen and latch is None:
            print("[launcher] the robot node did not acknowledge the hold; killing the fast node", flush=True)
            fast.kill9()
        codes: dict[str, int] = {}
        for key in self._stop_order():
            name = self.roles[key]
            grace = STOP_GRACE_S if name == "fast" and finished else 0.0
            code = self.children[key].stop(timeout=STOP_TIMEOUT_S, grace=grace)
            sup = self.supervised.get(name)
            if sup is None or key == sup.primary or name not in codes:
                codes[name] = code
        while True:  # exit records printed while stopping
            try:
                key, record = self.lines.get_nowait()
            except queue.Empty:
                break
            name = self.roles.get(key, key)
            sup = self.supervised.get(name)
            if record is not None and (sup is None or key == sup.primary):
                self.records[name].append(record)
        for sock in (self.video_sub, self.status_sub, self.hold_pub):
            if sock is not None:
                sock.close()
        return codes

    def _stop_order(self) -> list[str]:
        """Fast node first (it commands the robot), then the slow nodes (a spare after the one it backs up), the
        world-model planner (a slow node stopped after it would wait out a request to it), the relay, the robot
        node last (it holds until then)."""
        rank = {"fast": 0, "planner": 1.5, "relay": 2, "robot": 3}
        return sorted(self.children, key=lambda k: (rank.get(self.roles[k], 1), self._is_spare(k)))

    def _is_spare(self, key: str) -> bool:
        sup = self.supervised.get(self.roles[key])
        return sup is not None and key != sup.primary

    def _latch_robot(self) -> dict[str, Any] | None:
        """Ask the robot node to hold and refuse every later command; its acknowledgement (how long it took, the
        commands it had accepted), None if none came within LATCH_TIMEOUT_S."""
        t = time.monotonic()
        accepted = None
        if self.robot.get("tick"):
            try:
                with Client(self.robot["tick"]) as client:
                    accepted = client.request("hold", timeout=LATCH_TIMEOUT_S).meta.get("accepted", 0)
            except TimeoutError:
                return None
        elif self.hold_pub is not None and self.status_sub is not None:
            self.status_sub.drain()  # a full queue (a long run's status) would drop the acknowledgement
            self.hold_pub.publish("hold")
            end = t + LATCH_TIMEOUT_S
            while accepted is None and (left := end - time.monotonic()) > 0:
                msg = self.status_sub.recv(timeout=left)
                if msg is not None and msg.meta.get("reason") == "latched":
                    accepted = msg.meta.get("accepted", 0)
        if accepted is None:
            return None
        return {"ack_ms": round((time.monotonic() - t) * 1e3, 2), "accepted": accepted}

    # ------------------------------------------------------------------------------------ monitoring
    def monitor(self) -> None:
        """Until the fast node has run every episode: live lines, episode records, video frames, restarts."""
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
                self._supervise()
                while video and (msg := sub.recv(timeout=0)) is not None:
                    if msg.topic == "episode" and msg.meta.get("event") == "reset" and capturing is not False:
                        capturing = msg.meta.get("seed") == self.cfg.seed
                        self.frames.clear()
                        self.frame_times.clear()
                    elif msg.topic == "image" and capturing:
                        self.frames.append(msg.arrays["scene_rgb"].copy())
                        self.frame_times.append(float(msg.meta.get("sim_time", math.nan)))

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
            age = r.get("image_age_ms")
            print(f"[slow] ep {r['episode']} plans {r['plans']} infer_ms p50/p99 {r['infer_ms']['p50']}/"
                  f"{r['infer_ms']['p99']} rejects {sum(r['rejects'].values())}"
                  + (f" image_age_ms p50/max {age['p50']}/{age['max']}" if age else ""), flush=True)
        elif name == "fast" and event == "episode":
            print(f"[episode {r['index']}] seed {r['seed']} success {r['success']} ({r['ended_by']}, "
                  f"{r['sim_time']} s sim, {r['wall_s']} s wall, {r['chunks']} chunks)", flush=True)

    # ------------------------------------------------------------------------------------ outputs
    def results(self, codes: dict[str, int], error: str | None) -> dict[str, Any]:
        episodes = [r for r in self.records.get("fast", []) if r.get("event") == "episode"]
        last = {name: next((r for r in reversed(recs) if r.get("event") in ("exit", "died")), None)
                for name, recs in self.records.items()}
        n_ok = sum(e["success"] for e in episodes)
        trace = _load_trace(self.out / "fast_timing.npz")
        return {
            "task": self.cfg.task, "mode": self.cfg.mode, "checkpoint": self.cfg.checkpoint, "goal": self.cfg.goal,
            "press_guard_n": self.cfg.robot.press_guard_n,
            "episodes": len(episodes), "episodes_requested": self.cfg.episodes, "seed": self.cfg.seed,
            "success_rate": n_ok / len(episodes) if episodes else None,
            "episodes_detail": episodes, "loop": {"fast": last.get("fast"), "slow": last.get("slow"),
                                                  "robot": last.get("robot"), "planner": last.get("planner")},
            "fast_sched": self.fast_sched,
            "supervision": {name: self._supervision_result(sup, trace) for name, sup in self.supervised.items()},
            "fast_holds": _fast_holds(last.get("fast"), trace),
            "stop": self._stop_result(last.get("robot")),
            "exit_codes": codes, "interrupted": self.interrupted, "error": error, "run_dir": str(self.out),
        }

    def _supervision_result(self, sup: Supervised, trace: dict[str, np.ndarray] | None) -> dict[str, Any]:
        """Every restart: its death, back-off, how it came back, and (from the fast node's trace) when the first
        chunk of the new process drove the robot and how long the fast node held in between. ``*_s``: seconds
        after the death (``died_s``: after the launcher started); ``died_at`` / ``ready_at``: the monotonic clock
        (the robot node's stamps in realtime), to line them up with other records."""
        restarts = [*sup.restarts, *([{**sup.pending, "via": None, "ready_s": None}] if sup.pending else [])]
        out = []
        for r in restarts:
            died, ready = r["died_at"], r.get("ready_at")
            row = dict(r)
            if trace is not None:
                adopted = trace["adopt_wall"]
                first = adopted[adopted >= ready] if ready is not None else adopted[:0]
                row["first_chunk_s"] = round(float(first[0]) - died, 3) if first.size else None
                row["fast_held_s"] = round(_held_s(trace, died, float(first[0]) if first.size else math.inf), 3)
            out.append(row)
        return {"policy": asdict(sup.policy), "restarts": len(sup.restarts), "detail": out,
                "standby_deaths": sup.spare_deaths}

    def _stop_result(self, robot_exit: dict[str, Any] | None) -> dict[str, Any]:
        out = dict(self.stop_record)
        latch = out.get("robot_latch")
        if latch is not None and robot_exit is not None:
            out["accepted_after_latch"] = robot_exit.get("accepted", 0) - latch["accepted"]
            out["refused_after_latch"] = (robot_exit.get("rejects") or {}).get("latched", 0)
        return out

    def write_outputs(self, result: dict[str, Any]) -> None:
        for name, sup in result["supervision"].items():
            for i, r in enumerate(sup["detail"]):
                print(f"[supervisor] {name} restart {i + 1}: died at {r['died_s']:.1f} s (exit {r['exit_code']}), "
                      f"back-off {r['backoff_s']:.2f} s, {r['via'] or 'not'} ready after {_s(r['ready_s'])}, first "
                      f"new chunk after {_s(r.get('first_chunk_s'))}, fast node held {_s(r.get('fast_held_s'))}",
                      flush=True)
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(self.out / "results.json")
        if self.frames:
            import imageio.v2 as imageio

            fps = max(1, round(self.robot_settings["camera_hz"]))
            with imageio.get_writer(self.out / "episode0.mp4", fps=fps, codec="libx264", quality=7,
                                    macro_block_size=8) as w:
                for f in self.frames:
                    w.append_data(f)
            self._write_scene_video(result)
        trace = self.out / "fast_timing.npz"
        if trace.is_file():
            plot_timing(trace, self.out / "timing.png", f"{self.cfg.task} / {self.cfg.mode}",
                        None if self.cfg.mode == "lockstep" else self.cfg.fast.cmd_hz)


    def _write_scene_video(self, result: Mapping[str, Any]) -> None:
        """``episode0.npz`` (``dataset.video``): the first episode's scene frames with their times, what
        ``grounding.run video=`` reads; frames without a usable time, or from before a later one, are left out."""
        from dataset.video import write_scene_video

        keep_f, keep_t = [], []
        for f, t in zip(self.frames, self.frame_times, strict=True):
            if math.isfinite(t) and t >= 0.0 and (not keep_t or t > keep_t[-1]):
                keep_f.append(f)
                keep_t.append(t)
        detail = (result.get("episodes_detail") or [{}])[0]
        duration = max(float(detail.get("sim_time") or 0.0), keep_t[-1] if keep_t else 0.0)
        if keep_f:
            write_scene_video(self.out / "episode0.npz", keep_f, keep_t, duration=duration, task=self.cfg.task,
                              seed=self.cfg.seed, camera="scene_rgb", source="rdp.run")


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _load_trace(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _held_s(trace: dict[str, np.ndarray], start: float, end: float) -> float:
    """Wall time the fast node held (its chunk had run out) between ``start`` and ``end`` (monotonic s)."""
    wall, holding = trace["tick_wall"], trace["tick_holding"]
    if wall.size < 2:
        return 0.0
    dt = np.diff(wall)
    inside = (wall[:-1] >= start) & (wall[:-1] < end) & (holding[:-1] > 0)
    return float(dt[inside].sum())


def _fast_holds(fast_exit: dict[str, Any] | None, trace: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """How often the fast node's chunk ran out (it then holds the robot) and for how long in all."""
    held = _held_s(trace, -math.inf, math.inf) if trace is not None else None
    return {"count": (fast_exit or {}).get("exhausted", 0), "held_s": None if held is None else round(held, 3)}


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


def robot_settings(cfg: RuntimeConfig, run: Mapping[str, Any]) -> dict[str, Any]:
    """The robot node's settings for a run (``robot.*`` with its nulls resolved). Cameras are on when the policy
    reads them, at the rate and frame size it was trained on (run.json ``image_hz``, ``camera_size``), when the
    world-model planner watches them (at ``planning.camera_hz``), or when the run records a video; off otherwise (a
    lockstep robot renders in its tick). A setting that would give an image policy, or the planner, other frames
    than training did is refused in one line."""
    out = _policy_robot_settings(cfg, run)
    if not cfg.planning.enabled:
        return out
    hz, r = cfg.planning.camera_hz, cfg.robot
    if r.cameras is False:
        raise UsageError("planning.enabled: the planner watches the robot's cameras; robot.cameras=false would send "
                         "it none (leave robot.cameras null)")
    if (out["cameras"] or r.camera_hz is not None) and not math.isclose(out["camera_hz"], hz):
        why = ("the policy reads its cameras at" if run.get("image_keys") else "robot.camera_hz is")
        raise UsageError(f"planning.camera_hz={hz:g}: {why} {out['camera_hz']:g} Hz; the world model was trained "
                         f"on frames at planning.camera_hz (set the two equal)")
    return {**out, "cameras": True, "camera_hz": hz}


def _policy_robot_settings(cfg: RuntimeConfig, run: Mapping[str, Any]) -> dict[str, Any]:
    from rdp.inference import camera_rate  # torch: imported only once a run is being launched

    r = cfg.robot
    # The scene settings passed on where they differ from the robot node's defaults.
    defaults = {"goal": "default", "looks": "none", "press_guard_n": 0.0}
    scene = {k: v for k, v in {"goal": cfg.goal, "looks": r.looks, "press_guard_n": r.press_guard_n}.items()
             if v != defaults[k]}
    if "goal" in run["obs_keys"] and cfg.goal == "default":
        raise UsageError(f"{cfg.checkpoint}: the policy observes a goal, but goal=default gives none: run with "
                         f"goal=random or a goal of the task (python -m rdp.run task={cfg.task} goal=...)")
    keys = list(run.get("image_keys") or ())
    perception = run.get("perception")
    if perception and not keys:  # the first scene frame of each episode, at the size the estimator reads
        where = f"{cfg.checkpoint}: the policy reads the scene off the {perception['camera']!r} camera"
        if r.cameras is False:
            raise UsageError(f"{where}; robot.cameras=false would send it none (leave robot.cameras null)")
        side = int(perception.get("image_size", 96))
        if r.image_size is not None and r.image_size != side:
            raise UsageError(f"robot.image_size={r.image_size}: {where} as {side}x{side} frames (leave "
                             "robot.image_size null)")
        points = {"point_cloud": True} if perception["camera"] == "scene_points" else {}
        return {"watchdog_ms": r.watchdog_ms, "cameras": True,
                "camera_hz": DEFAULT_CAMERA_HZ if r.camera_hz is None else r.camera_hz, "image_size": side,
                **points, **scene}
    if not keys:
        out = {"watchdog_ms": r.watchdog_ms, "cameras": cfg.video if r.cameras is None else r.cameras,
               "camera_hz": DEFAULT_CAMERA_HZ if r.camera_hz is None else r.camera_hz, **scene}
        return out if r.image_size is None else {**out, "image_size": r.image_size}
    where = f"{cfg.checkpoint}: the policy reads cameras {keys}"
    sizes = {tuple(run["camera_size"][k]) for k in keys}
    if r.cameras is False:
        raise UsageError(f"{where}; robot.cameras=false would send it none (leave robot.cameras null)")
    rate = camera_rate(run)
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        raise UsageError(f"{where} recorded as {run['camera_size']}: the robot node renders square frames of one "
                         "size")
    side = sizes.pop()[0]
    if r.camera_hz is not None and not math.isclose(r.camera_hz, rate):
        raise UsageError(f"robot.camera_hz={r.camera_hz:g}: {where} at {rate:g} Hz, the rate training held them at "
                         "(leave robot.camera_hz null)")
    if r.image_size is not None and r.image_size != side:
        raise UsageError(f"robot.image_size={r.image_size}: {where} as {side}x{side} frames (leave robot.image_size "
                         "null)")
    return {"watchdog_ms": r.watchdog_ms, "cameras": True, "camera_hz": rate, "image_size": side, **scene}


def _kv(d: dict[str, str]) -> list[str]:
    """Hydra overrides for a child's command line (quoted where hydra would misread a value)."""
    return [override(k, v) for k, v in d.items()]


@command("rdp.run")
def main(argv: Sequence[str] | None = None) -> int:
    args = node_args(argv)
    cfg = load_config(args, doc=__doc__)  # --help, --cfg end here
    from rdp.inference import load_run

    run, _, _ = load_run(cfg.checkpoint)  # a bad checkpoint fails here, in one line, before any node starts
    robot = robot_settings(cfg, run)  # so does a robot setting the policy cannot run with
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (Path(cfg.out) if cfg.out else Path("outputs/runtime") / f"{cfg.task}-{cfg.mode}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(cfg, args, out, robot)

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
    summary["slow"].update({k: slow[k] for k in ("image_age_ms", "images_dropped", "planner") if k in slow})
    print(json.dumps(summary, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
