"""The planner process on the bus: the third, slowest loop, above the slow policy.

    python -m world_model.node [run=RUN] [scorer=DIR] [task=wipe] [memory=true] [address=tcp://127.0.0.1:*]

It holds a world model, a scoring head and (``memory=true``) a TEMP-LoRA episodic memory, and answers requests on a
ROUTER socket (``bus.transport.Server``; loopback by default, the address in its ready line):

- ``reset`` (meta ``seed``: int, optional; ``episode``: int, optional, the caller's name for the episode): a new
  episode; the memory goes back to zero effect -> ``reset``;
- ``observe`` (arrays ``frames`` (T, S, S, 3) uint8 and ``actions`` (T, Da) float32; meta ``until``: float,
  optional, the caller's time of the last frame): real frames and the actions into them; every completed chunk is
  written into the memory -> ``observed`` (meta ``frames``: seen so far, ``memory_updates`` and ``update_s``: local
  updates and their seconds in this episode, ``observe_ms`` of this request);
- ``status`` -> ``status`` (meta ``episode`` and ``until``: the last reset's and observe's, null when none;
  ``frames``, ``memory_updates``): what this episode's memory holds, so that a process that takes over from another
  (a restarted slow node) sends only the frames after ``until`` and keeps the memory;
- ``plan`` (array ``plans`` (K, L, Da) float32: K candidate action sequences; meta ``imagined`` true to get the
  imagined frames back) -> ``plan`` (meta ``index``: the chosen candidate, ``seconds``; arrays ``scores`` (K,), and
  ``imagined`` (K, L, S, S, 3) uint8 when asked; meta ``memory_updates`` / ``update_s`` as above, since a decision
  may rehearse the memory first).

Anything it cannot answer (an unknown request, arrays of the wrong dtype or shape, non-finite actions, more than
``max_candidates`` candidates or ``max_plan_frames`` frames, planning before any frame was observed) gets an
``error`` reply whose meta ``error`` says why in one line; the node keeps running and its state is unchanged.
``RemotePlanner`` is the client with ``WorldModelPlanner``'s interface, so ``world_model.plan eval planner=process``
runs the plan -> act -> observe loop through this process.

The first stdout line is a JSON ready record (``address``); stats lines every ``stats_s``; an exit record on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bus.cli import UsageError, command
from bus.config import compose
from bus.message import Message, MessageError
from bus.node import emit, log_to_stderr
from bus.node import serve as run_node
from bus.transport import Client, Server

log = logging.getLogger("world_model.node")


@dataclass
class PlannerNodeConfig:
    """``configs/world_model/node.yaml``."""

    run: str = ""  # world model run; empty: the shipped one (of ``task``; without one, the revisit model)
    scorer: str = ""  # scoring head; empty: the shipped one (``task``'s progress head; without one, the marker's)
    task: str = ""
    address: str = "tcp://127.0.0.1:*"
    memory: bool = True
    context: int = 0
    score_frames: int = 2
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: int = 1
    reverse: bool = False  # also write each observed chunk into the memory played backwards
    replay: int = 0  # passes over all stored chunks before a decision that follows new frames
    max_candidates: int = 16
    max_plan_frames: int = 128
    max_observe_frames: int = 256
    threads: int = 1
    nice: int = 0  # lower this process's CPU priority by this much (0-19): the runtime passes its slow node's
    stats_s: float = 5.0

    def __post_init__(self) -> None:
        if min(self.max_candidates, self.max_plan_frames, self.max_observe_frames, self.score_frames) < 1:
            raise ValueError("max_candidates, max_plan_frames, max_observe_frames and score_frames must be >= 1")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice={self.nice} must be in [0, 19]")
        if not self.stats_s > 0:
            raise ValueError(f"stats_s must be > 0, got {self.stats_s}")


def build_planner(run: str, scorer: str, memory: bool, context: int, score_frames: int, lora_rank: int,
                  lora_lr: float, lora_steps: int, reverse: bool = False, replay: int = 0,
                  scorer_model: Any = None) -> Any:
    """A ``WorldModelPlanner`` from a world model run and a scorer (empty: the shipped ones; ``scorer_model``: this
    one instead, e.g. one being trained)."""
    from world_model.plan import load_scorer, shipped
    from world_model.planner import WorldModelPlanner
    from world_model.temp_lora import TempLoRAConfig, TempLoRAMemory
    from world_model.train import load_world_model

    ae, model, _ = load_world_model(Path(run) if run else shipped("revisit"))
    head = scorer_model if scorer_model is not None else load_scorer(Path(scorer) if scorer else
                                                                      shipped("marker_scorer"))
    if head.cfg.image_size != ae.cfg.image_size:
        raise UsageError(f"the scorer reads {head.cfg.image_size}px frames, the world model makes "
                         f"{ae.cfg.image_size}px")
    mem = TempLoRAMemory(model, TempLoRAConfig(rank=lora_rank, lr=lora_lr, steps=lora_steps)) if memory else None
    return WorldModelPlanner(ae, model, head, mem, context, score_frames, reverse=reverse, replay=replay)


@contextmanager
def open_planner(process: bool, log_path: Path, run: str, scorer: str, memory: bool, context: int = 0,
                 score_frames: int = 2, lora_rank: int = 8, lora_lr: float = 1e-3, lora_steps: int = 1,
                 reverse: bool = False, replay: int = 0, threads: int = 1) -> Iterator[Any]:
    """A planner for the length of a ``with``: a planner node started as its own process (``process``; its stderr
    in ``log_path``) and a ``RemotePlanner`` to it, both stopped on exit; else a ``WorldModelPlanner`` here."""
    if not process:
        yield build_planner(run, scorer, memory, context, score_frames, lora_rank, lora_lr, lora_steps, reverse,
                            replay)
        return
    from bus.process import Child

    args = [f"run={run}", f"scorer={scorer}", f"memory={str(memory).lower()}", f"context={context}",
            f"score_frames={score_frames}", f"lora_rank={lora_rank}", f"lora_lr={lora_lr}",
            f"lora_steps={lora_steps}", f"reverse={str(reverse).lower()}", f"replay={replay}", f"threads={threads}"]
    child = Child("planner", "world_model.node", args, log_path)
    remote = None
    try:
        ready = child.wait_event("ready", timeout=120.0)
        remote = RemotePlanner(str(ready["address"]))
        yield remote
    finally:
        if remote is not None:
            remote.close()
        child.stop()


class PlannerNode:
    """See the module docstring."""

    def __init__(self, cfg: PlannerNodeConfig) -> None:
        import torch

        torch.set_num_threads(cfg.threads)
        if cfg.nice:
            os.nice(cfg.nice)  # planning may wait; the fast loop and the robot beside it must not
        self.cfg = cfg
        run, scorer = cfg.run, cfg.scorer
        if cfg.task:
            from world_model.task_plan import shipped

            run, scorer = run or shipped(cfg.task, "model"), scorer or shipped(cfg.task, "scorer")
        self.planner = build_planner(run, scorer, cfg.memory, cfg.context, cfg.score_frames,
                                     cfg.lora_rank, cfg.lora_lr, cfg.lora_steps, cfg.reverse, cfg.replay)
        self.size = self.planner.ae.cfg.image_size
        self.action_dim = self.planner.model.cfg.action_dim
        self.counts: Counter[str] = Counter()
        self.episode: int | None = None  # the caller's names for the episode and its last frame (``status``)
        self.until: float | None = None
        self._stop = False
        self.server = Server(cfg.address)

    @property
    def address(self) -> str:
        return self.server.address

    def warm_up(self) -> float:
        """One chunk of blank frames observed (a memory write) and one decision among 4 candidates, then a fresh
        episode: the first real request runs warm (it took over 10 s cold on a loaded 2-core machine). Returns ms."""
        t0 = time.perf_counter()
        n = self.planner.model.cfg.chunk_frames
        self.planner.observe(np.zeros((n, self.size, self.size, 3), np.uint8), np.zeros((n, self.action_dim),
                                                                                        np.float32))
        self.planner.decide(np.zeros((4, 8, self.action_dim), np.float32))
        self.planner.reset()
        return 1e3 * (time.perf_counter() - t0)

    def stop(self, *_: object) -> None:
        self._stop = True

    def close(self) -> None:
        self.server.close()

    def run(self) -> None:
        next_stats = time.monotonic() + self.cfg.stats_s
        while not self._stop:
            request = self.server.recv(timeout=0.05)
            if request is not None:
                topic, arrays, meta = self.answer(request.message)
                try:
                    self.server.reply(request, topic, arrays=arrays, meta=meta)
                except MessageError as e:  # an answer that cannot go out (too large): say so, keep serving
                    self.counts["errors"] += 1
                    self.server.reply(request, "error", meta={"error": f"reply not sent: {e}"})
            if time.monotonic() >= next_stats:
                emit(self.stats("stats"))
                next_stats += self.cfg.stats_s

    def stats(self, event: str) -> dict[str, Any]:
        return {"event": event, "node": "planner", "frames": len(self.planner.latents),
                "memory_updates": self.planner.updates,
                "rejects": dict(Counter(self.server.rejects) + Counter({k: v for k, v in self.counts.items()
                                                                       if k.startswith("rej_")})),
                **{k: v for k, v in self.counts.items() if not k.startswith("rej_")}}

    def answer(self, request: Message) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
        try:
            if request.topic == "reset":
                seed, episode = request.meta.get("seed", 0), request.meta.get("episode")
                if type(seed) is not int or not (episode is None or type(episode) is int):
                    raise UsageError(f"reset: seed (and episode, if given) must be ints, got {type(seed).__name__} "
                                     f"and {type(episode).__name__}")
                self.planner.reset(seed=seed)
                self.episode, self.until = episode, None
                self.counts["resets"] += 1
                return "reset", {}, {"seed": seed}
            if request.topic == "observe":
                return self._observe(request)
            if request.topic == "plan":
                return self._plan(request)
            if request.topic == "status":
                return "status", {}, {"episode": self.episode, "until": self.until,
                                      "frames": len(self.planner.latents), "memory_updates": self.planner.updates,
                                      "update_s": round(self.planner.update_seconds, 6)}
            raise UsageError(f"unknown request {request.topic!r:.40}; send reset, observe, plan or status")
        except UsageError as e:
            self.counts["rej_request"] += 1
            return "error", {}, {"error": str(e)}
        except Exception as e:  # a model failure on strange input must not end the node
            self.counts["errors"] += 1
            log.exception("planner request failed")
            return "error", {}, {"error": f"planning failed: {type(e).__name__}: {e}"}

    def _observe(self, request: Message) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
        frames, actions = request.arrays.get("frames"), request.arrays.get("actions")
        s, da = self.size, self.action_dim
        if frames is None or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (s, s, 3):
            got = "none" if frames is None else f"{frames.dtype} {frames.shape}"
            raise UsageError(f"observe: frames must be uint8 (T, {s}, {s}, 3), got {got}")
        if not 1 <= len(frames) <= self.cfg.max_observe_frames:
            raise UsageError(f"observe: 1 .. {self.cfg.max_observe_frames} frames a request, got {len(frames)}")
        self._check_actions(actions, (len(frames), da), "observe: actions")
        until = request.meta.get("until")
        if until is not None and not (type(until) is float and np.isfinite(until)):
            raise UsageError(f"observe: until must be a finite float (the last frame's time), got {until!r:.40}")
        before, t0 = self.planner.updates, time.perf_counter()
        self.planner.observe(frames, actions.astype(np.float32))
        self.until = until
        self.counts["frames_observed"] += len(frames)
        return "observed", {}, {"frames": len(self.planner.latents), "memory_updates": self.planner.updates,
                                "new_updates": self.planner.updates - before,
                                "observe_ms": round(1000 * (time.perf_counter() - t0), 3),
                                "update_s": round(self.planner.update_seconds, 6)}

    def _plan(self, request: Message) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
        plans = request.arrays.get("plans")
        if plans is None or plans.ndim != 3:
            raise UsageError(f"plan: plans must be (K, L, {self.action_dim}) float32, got "
                             f"{'none' if plans is None else plans.shape}")
        k, length = plans.shape[:2]
        if not 1 <= k <= self.cfg.max_candidates or not 1 <= length <= self.cfg.max_plan_frames:
            raise UsageError(f"plan: 1 .. {self.cfg.max_candidates} candidates of 1 .. {self.cfg.max_plan_frames} "
                             f"frames, got {k} x {length}")
        self._check_actions(plans, (k, length, self.action_dim), "plan: plans")
        if not self.planner.latents:
            raise UsageError("plan: no frame observed yet in this episode; send observe first")
        decision = self.planner.decide(plans.astype(np.float32))
        self.counts["plans"] += 1
        arrays = {"scores": decision.scores.astype(np.float32)}
        if request.meta.get("imagined") is True:
            arrays["imagined"] = np.ascontiguousarray(decision.imagined)
        return "plan", arrays, {"index": decision.index, "seconds": round(decision.seconds, 4),
                                "memory_updates": self.planner.updates,
                                "update_s": round(self.planner.update_seconds, 6)}

    @staticmethod
    def _check_actions(a: np.ndarray | None, shape: tuple[int, ...], what: str) -> None:
        if a is None or a.shape != shape or a.dtype.kind != "f":
            got = "none" if a is None else f"{a.dtype} {a.shape}"
            raise UsageError(f"{what} must be float {shape}, got {got}")
        if not np.isfinite(a).all():
            raise UsageError(f"{what} hold non-finite values")


class RemotePlanner:
    """``WorldModelPlanner``'s interface (reset / observe / decide, ``updates``, ``update_seconds``) over a planner
    node at ``address``. An ``error`` reply raises ``UsageError`` with the node's reason."""

    def __init__(self, address: str, timeout_s: float = 120.0) -> None:
        self.client = Client(address)
        self.timeout_s = timeout_s
        self.updates, self.update_seconds = 0, 0.0

    def _request(self, topic: str, arrays: dict | None = None, meta: dict | None = None) -> Message:
        reply = self.client.request(topic, arrays=arrays, meta=meta, timeout=self.timeout_s)
        if reply.topic == "error":
            raise UsageError(f"the planner node answered: {reply.meta.get('error')}")
        return reply

    def reset(self, seed: int | None = None, episode: int | None = None) -> None:
        self._request("reset", meta={"seed": int(seed or 0),
                                     **({} if episode is None else {"episode": int(episode)})})
        self.updates, self.update_seconds = 0, 0.0

    def observe(self, frames: np.ndarray, actions: np.ndarray, until: float | None = None) -> None:
        if len(frames) == 0:
            return
        reply = self._request("observe", {"frames": np.ascontiguousarray(frames),
                                          "actions": np.ascontiguousarray(actions, np.float32)},
                              None if until is None else {"until": float(until)})
        self._memory(reply)

    def status(self) -> dict[str, Any]:
        """The node's ``status`` meta: episode, until, frames, memory_updates."""
        reply = self._request("status")
        self._memory(reply)
        return dict(reply.meta)

    def _memory(self, reply: Message) -> None:
        self.updates = int(reply.meta["memory_updates"])
        self.update_seconds = float(reply.meta["update_s"])

    def decide(self, plans: np.ndarray, imagined: bool = True) -> Any:
        """The node's decision among ``plans``; ``imagined=False``: without the imagined frames (an empty array in
        their place), when only the choice is needed."""
        from world_model.planner import Decision

        t0 = time.perf_counter()
        reply = self._request("plan", {"plans": np.ascontiguousarray(plans, np.float32)}, {"imagined": imagined})
        self._memory(reply)  # a decision may rehearse the memory first (replay)
        scores = reply.arrays.get("scores")
        if scores is None or scores.shape != (len(plans),) or not np.isfinite(scores).all():
            raise UsageError(f"the planner node's scores are {None if scores is None else scores.shape}, expected "
                             f"({len(plans)},) finite values")
        frames = reply.arrays["imagined"] if imagined else np.zeros((0,), np.uint8)
        return Decision(int(np.argmax(scores)), scores, frames, time.perf_counter() - t0)

    def close(self) -> None:
        self.client.close()


@command("world_model.node")
def main(argv: Sequence[str] | None = None) -> int:
    cfg = compose(PlannerNodeConfig, "world_model/node", list(sys.argv[1:] if argv is None else argv),
                  "planner node", "run=RUN scorer=DIR")
    log_to_stderr()
    node = PlannerNode(cfg)
    return run_node(node, lambda: {"event": "ready", "node": "planner", "address": node.address,
                                   "memory": cfg.memory, "warmup_ms": round(node.warm_up(), 1)},
                    lambda _: node.stats("exit"))


if __name__ == "__main__":
    sys.exit(main())
