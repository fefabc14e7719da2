"""A warm standby slow node: loaded, warmed up and following the robot's stream, silent until it takes over.

    python -m rdp.runtime.standby <the slow node's key=value arguments>

The launcher keeps one beside the running slow node (``restart.slow.standby``). A cold restart spends ~2 s on the
interpreter, torch, the checkpoint and the warm-up plan before it can plan (2 cores at load ~4; 3-11 s on a busier
machine); the fast node runs out its chunk (1.28 s on the shipped checkpoints) and holds the robot for the rest.
The standby has paid all of that in advance and keeps the observation history and episode a slow node would have,
but sends neither chunks nor heartbeats, so the fast node does not know it exists. SIGUSR1 (sent by the launcher
when the slow node died) makes it the slow node: it plans at once on the newest observation and from then on
behaves exactly as ``rdp.runtime.slow``.

stdout as the slow node's (the ready record says ``"standby": true``), plus an ``active`` record when it takes over.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence

from bus.cli import command
from rdp.runtime.config import RuntimeConfig
from rdp.runtime.slow import SlowNode, serve
from rdp.runtime.timing import emit

log = logging.getLogger("rdp.runtime.standby")


class StandbySlowNode(SlowNode):
    """A slow node whose planning and heartbeat wait for ``activate`` (everything else runs as usual)."""

    def __init__(self, cfg: RuntimeConfig) -> None:
        super().__init__(cfg)
        self.active = False
        self.announced = False

    def activate(self, *_: object) -> None:  # signal handler: only sets a flag
        self.active = True

    def _plan(self) -> None:
        if not self.active:
            return  # next_plan stays where it is: the first call after activate plans on the newest observation
        super()._plan()
        if not self.announced:
            self.announced = True
            emit({"event": "active", "node": "slow", "pid": os.getpid(), "episode": self.episode,
                  "obs_step": self.hist_step, "first_plan_wall": time.monotonic()})

    def _alive(self) -> None:
        if self.active:
            super()._alive()


@command("rdp.runtime.standby")
def main(argv: Sequence[str] | None = None) -> int:
    return serve(argv, StandbySlowNode, standby=True)


if __name__ == "__main__":
    sys.exit(main())
