"""How every node process runs, once its config is parsed (:func:`bus.config.compose`):

    @command("sim.node")
    def main(argv: Sequence[str] | None = None) -> int:
        cfg = compose(RobotNodeConfig, "robot_node/default", node_args(argv), "robot node", "task=wipe")
        log_to_stderr()
        node = RobotNode(cfg)
        return serve(node, node.ready_record, lambda _: node.summary())

SIGINT and SIGTERM call ``node.stop`` (the loop ends at its next check and the node closes normally), the first
stdout line is the JSON ready record a launcher waits for (:class:`bus.process.Child`), the last one the exit
record with the node's counters; ``close`` runs whatever ended the loop. One shape for the robot, teleop,
recorder, slow, fast and relay nodes, so a launcher treats them all alike.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class Node(Protocol):
    def stop(self, *_: object) -> None: ...

    def run(self) -> Any: ...

    def close(self) -> None: ...


def node_args(argv: Sequence[str] | None) -> list[str]:
    """The command line's arguments: ``argv``, or ``sys.argv[1:]`` when None (called as a module)."""
    return list(sys.argv[1:] if argv is None else argv)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Nodes log to stderr (a launcher sends it to the child's log file); stdout carries JSON records only."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


def emit(record: Mapping[str, Any]) -> None:
    """One JSON line on stdout, flushed at once (a launcher reads these)."""
    print(json.dumps(record), flush=True)


def serve(node: Node, ready: Callable[[], Mapping[str, Any]], exit_record: Callable[[Any], Mapping[str, Any]], *,
          signals: Mapping[int, Callable[..., Any]] | None = None, stopped: tuple[type[BaseException], ...] = (),
          close: Callable[[], None] | None = None) -> int:
    """Run ``node``: SIGINT/SIGTERM -> ``node.stop`` (plus ``signals``, installed before the ready line), emit
    ``ready()`` (it may do start-up work first: a warm-up, waiting for peers), ``node.run()``, then always
    ``close`` (default ``node.close``) and emit ``exit_record(result of run, None if it raised)``. An exception of
    a ``stopped`` type ends the run as a normal stop. Returns the exit code (0)."""
    handlers: dict[int, Callable[..., Any]] = {signal.SIGINT: node.stop, signal.SIGTERM: node.stop, **(signals or {})}
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    result = None
    try:
        emit(ready())
        try:
            result = node.run()
        except stopped:
            pass
    finally:
        (close or node.close)()
        emit(exit_record(result))
    return 0
