"""The planning slow node's warm standby (``world_model.runtime.PlanningStandbyNode``): what
``rdp.runtime.standby`` is to ``rdp.runtime.slow``, started by ``rdp.run`` when ``planning.enabled``.

    python -m world_model.runtime_standby <the planning slow node's key=value arguments>
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bus.cli import command
from rdp.runtime.slow import serve
from world_model.runtime import PlanningStandbyNode


@command("world_model.runtime_standby")
def main(argv: Sequence[str] | None = None) -> int:
    return serve(argv, PlanningStandbyNode, standby=True, planning=True)


if __name__ == "__main__":
    sys.exit(main())
