"""The launcher's children: the back-off a supervisor restarts a dying child with, and the robot node's arguments.

Children themselves are :class:`bus.process.Child` (re-exported here): ``python -m <module> key=value...``, JSON
lines on stdout (the first one a ready record), stderr to a log file, their own session, and
``PR_SET_PDEATHSIG`` = SIGTERM, so even a launcher killed with -9 leaves no orphans behind.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from bus.config import override
from bus.process import Child, ChildFailed

__all__ = ["ROOT", "Backoff", "Child", "ChildFailed", "robot_node_args"]

ROOT = Path(__file__).resolve().parents[2]  # the source tree, for tests and benchmarks; nodes run in the caller's cwd


class Backoff:
    """When to restart a child that died, or that it must not be: exponential back-off within a sliding window.

    The k-th restart within ``window_s`` waits ``initial_delay_s * 2**k`` (at most ``max_delay_s``), so a child that
    crashes as soon as it starts is not restarted in a tight loop, while one that died after running a while comes
    back at once. More than ``max_restarts`` deaths within ``window_s`` mean it will not stay up: give up."""

    def __init__(self, max_restarts: int, window_s: float, initial_delay_s: float, max_delay_s: float) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s
        self.initial_delay_s, self.max_delay_s = initial_delay_s, max_delay_s
        self._restarts: deque[float] = deque()  # times of the restarts granted within the window

    def in_window(self, now: float) -> int:
        """Restarts granted within the ``window_s`` before ``now``."""
        while self._restarts and self._restarts[0] <= now - self.window_s:
            self._restarts.popleft()
        return len(self._restarts)

    def on_death(self, now: float) -> float | None:
        """The delay before restarting a child that died at ``now``; None when the restart budget is spent."""
        k = self.in_window(now)
        if k >= self.max_restarts:
            return None
        self._restarts.append(now)
        return min(self.initial_delay_s * 2.0**k, self.max_delay_s)


def robot_node_args(task: str, mode: str, seed: int, perturb: bool, extra: dict[str, Any]) -> list[str]:
    """``python -m sim.node`` overrides for a runtime: random loopback ports, our robot settings."""
    values = {"task": task, "mode": mode, "seed": seed, "perturb": perturb, "addresses.pub": "tcp://127.0.0.1:*",
              "addresses.cmd": "tcp://127.0.0.1:*", "addresses.tick": "tcp://127.0.0.1:*", **extra}
    return [override(k, v) for k, v in values.items()]
