"""Chunks on the wire and the small timing rules both nodes share; pure, no sockets.

Time base: the robot node's ``sim_time`` (meta of every stream message), which is wall-clock-paced in realtime and
exact in lockstep. Training-rate step ``k`` of an episode covers sim time ``[k / rate, (k + 1) / rate)``; the
observation of step ``k`` is the first one published in it. A chunk planned on step ``k``'s observation holds
actions for steps ``k, k + 1, ... k + T - 1`` (``rdp.data``: the action at the last observed step comes first), so
a chunk is *absolute in time*: whoever executes it at step ``s`` uses index ``s - k`` and skips the actions whose
step has passed (latency matching). It may take over no earlier than its ``start_step`` (= ``k + handover``).

Wire format of topic ``chunk`` (slow -> fast)::

    arrays  chunk (Ta, Da) <f4    the latent (L, C) for rdp, the action chunk (T, Da) for dp
            anchor (10 A,) <f4    proprio features of that observation (relative actions are offsets from it)
    meta    episode int           the robot node's episode counter the observation came from
            obs_step int          k
            start_step int        the step it may take over at (>= obs_step)
            obs_stamp float       the robot node's stamp of that observation
            plan int              the slow node's plan counter (per process)
            infer_ms float        predict() wall time
            image_age_ms float    image policies only: sim-time age of the camera frame that observation held
            revision int          optional (0 if absent): a later chunk for the same observation replaces an
                                  earlier one when its revision is higher (a planner's late pick replacing the
                                  policy's own plan, sent first so the fast node never waits for the planner)

Topic ``alive`` (slow -> fast, ``heartbeat_hz`` and at every episode change): meta episode, plans, rejects, pid, robot
(bool: the slow node has received the robot node's stream; the fast node's first reset waits for it in realtime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bus.message import Message, MetaValue

STEP_EPS = 1e-4  # of a step: sim_time accumulates 2 ms physics steps, k / rate can land a hair below k


def policy_step(sim_time: float, rate_hz: float) -> int:
    """Training-rate step that ``sim_time`` (seconds since the episode's reset) falls in."""
    return math.floor(sim_time * rate_hz + STEP_EPS)


class ChunkRejected(ValueError):
    """A chunk message that must not be executed; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind


@dataclass(frozen=True)
class Chunk:
    """A validated chunk; ``data`` (Ta, Da) and ``anchor`` (10 A,) float32, owned (copied out of the message)."""

    data: np.ndarray
    anchor: np.ndarray
    episode: int
    obs_step: int
    start_step: int
    obs_stamp: float
    plan: int
    infer_ms: float
    received: float  # receiver's monotonic time
    revision: int = 0  # a higher one replaces a chunk of the same observation

    def meta(self) -> dict[str, MetaValue]:
        return {"episode": self.episode, "obs_step": self.obs_step, "start_step": self.start_step,
                "obs_stamp": self.obs_stamp, "plan": self.plan, "infer_ms": self.infer_ms}


def parse_chunk(msg: Message, shape: tuple[int, int], anchor_dim: int, received: float) -> Chunk:
    """A decoded ``chunk`` message -> :class:`Chunk`, or ``ChunkRejected`` naming what is wrong."""
    if set(msg.arrays) != {"chunk", "anchor"}:
        raise ChunkRejected("schema", f"arrays {sorted(msg.arrays)}, expected exactly ['anchor', 'chunk']")
    data, anchor = msg.arrays["chunk"], msg.arrays["anchor"]
    for name, a, want in (("chunk", data, shape), ("anchor", anchor, (anchor_dim,))):
        if a.dtype != np.float32:
            raise ChunkRejected("dtype", f"{name} dtype {a.dtype.str}, expected <f4")
        if a.shape != want:
            raise ChunkRejected("shape", f"{name} shape {a.shape}, expected {want}")
        if not np.isfinite(a).all():
            raise ChunkRejected("nonfinite", f"{name} holds NaN/inf")
    m = msg.meta
    ints = {k: m.get(k) for k in ("episode", "obs_step", "start_step", "plan")}
    if any(type(v) is not int or v < 0 for v in ints.values()):
        raise ChunkRejected("meta", f"meta {ints} must be ints >= 0")
    if ints["start_step"] < ints["obs_step"]:
        raise ChunkRejected("meta", f"start_step {ints['start_step']} < obs_step {ints['obs_step']}")
    floats = {k: m.get(k) for k in ("obs_stamp", "infer_ms")}
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in floats.values()):
        raise ChunkRejected("meta", f"meta {floats} must be finite numbers")
    revision = m.get("revision", 0)
    if type(revision) is not int or revision < 0:
        raise ChunkRejected("meta", f"meta revision {revision!r:.40} must be an int >= 0")
    return Chunk(data.copy(), anchor.copy(), ints["episode"], ints["obs_step"], ints["start_step"],
                 float(floats["obs_stamp"]), ints["plan"], float(floats["infer_ms"]), received, revision)


class StepRing:
    """The last ``size`` steps' features (whatever the caller stores per step): the fast node's history for
    catching the decoder up over steps it skipped. ``get(k)`` returns step ``k``'s entry, or the nearest older one
    held (a step the loop did not see), or None."""

    def __init__(self, size: int) -> None:
        self._items: list[object] = [None] * size
        self._steps = [-1] * size
        self.size = size

    def clear(self) -> None:
        self._steps = [-1] * self.size

    def put(self, step: int, value: object) -> None:
        i = step % self.size
        self._items[i] = value
        self._steps[i] = step

    def get(self, step: int) -> object | None:
        for k in range(step, max(step - self.size, -1), -1):
            i = k % self.size
            if self._steps[i] == k:
                return self._items[i]
        return None


@dataclass
class ChunkSlot:
    """Latest-wins hand-over: ``pending`` is replaced by any newer plan; ``take(step)`` promotes it when due."""

    pending: Chunk | None = None
    current: Chunk | None = None

    def clear(self) -> None:
        self.pending = self.current = None

    def offer(self, chunk: Chunk) -> bool:
        """Keep ``chunk`` if it is newer than what is pending or running (a later observation, or a higher revision
        of the same one); False when it is outdated."""
        newest = self.pending or self.current
        if newest is not None and chunk.episode == newest.episode and \
                (chunk.obs_step, chunk.revision) <= (newest.obs_step, newest.revision):
            return False
        self.pending = chunk
        return True

    def take(self, step: int) -> Chunk | None:
        """The pending chunk if it may take over at ``step`` (it becomes ``current``), else None."""
        if self.pending is None or step < self.pending.start_step:
            return None
        self.current, self.pending = self.pending, None
        return self.current
