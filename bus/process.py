"""Child processes of launchers, tests and benchmarks: start a module, read its JSON event lines, stop it without
leaving orphans.

    child = Child("robot", "sim.node", ["task=wipe", "addresses.pub=tcp://127.0.0.1:*"], Path("robot.log"))
    ready = child.wait_event("ready", timeout=60)
    ...
    child.stop()

Every child runs ``python -m <module> <args>``, prints JSON lines on stdout (``{"event": "ready", ...}`` first,
as :func:`bus.node.serve` does) and logs its stderr to a file. ``PR_SET_PDEATHSIG`` = SIGTERM makes it die with
its parent, so even a launcher killed with -9 leaves no orphans behind. ``session=True`` gives it its own session:
a terminal's Ctrl-C then reaches only the launcher, which stops its children in order.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bus.cli import CommandError

_PR_SET_PDEATHSIG = 1


def terminate(proc: subprocess.Popen, timeout: float) -> int:
    """End ``proc``: SIGTERM (and SIGCONT: a stopped process handles its SIGTERM only once it runs again), wait up
    to ``timeout`` s, then SIGKILL; reaps it and returns its exit code. A process that has already ended is only
    reaped."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:  # it ended in between
                break
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class ChildFailed(CommandError, RuntimeError):
    """A child died or gave no awaited event in time (exit 1 under :func:`bus.cli.command`); the message names its
    log and the log's last line."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup still applies
        pass


class Child:
    """One ``python -m module args...`` process.

    ``lines`` receives ``(name, record)`` for every stdout line, the record parsed from JSON (a line that is not
    JSON becomes ``{"text": line}``); ``(name, None)`` marks the end of output. Several children may share one
    queue (a launcher watching them all); :meth:`wait_event` / :meth:`take` are for a child with its own.
    ``ready_at`` / ``ended_at``: the monotonic time the reader thread saw the ready record / the end of output.
    ``last``: the newest record (an exiting node's last line is its summary)."""

    def __init__(self, name: str, module: str, args: Sequence[str], log_path: Path,
                 lines: queue.Queue | None = None, *, env: dict[str, str] | None = None, session: bool = True) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.lines: queue.Queue = lines if lines is not None else queue.Queue()
        self.records: list[dict[str, Any]] = []  # what wait_event / take read past
        self.last: dict[str, Any] | None = None
        self.ready_at: float | None = None
        self.ended_at: float | None = None
        full_env = {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", **os.environ, "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        self._log = open(self.log_path, "w")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=full_env, stdout=subprocess.PIPE, stderr=self._log,
            text=True, start_new_session=session, preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"text": line.rstrip()}
            if not isinstance(record, dict):
                record = {"value": record}
            if self.ready_at is None and record.get("event") == "ready":
                self.ready_at = time.monotonic()
            self.last = record
            self.lines.put((self.name, record))
        self.ended_at = time.monotonic()
        self.lines.put((self.name, None))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next stdout record whose ``event`` is ``event`` (those before it go to ``records``). Raises
        :class:`ChildFailed` naming the exit code and the log's last line when the child ends or stays silent."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                _, record = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if record is None:
                self.lines.put((self.name, None))  # the end stays visible to the next reader
                break
            self.records.append(record)
            if record.get("event") == event:
                return record
        raise ChildFailed(f"{self.name} gave no {event!r} record within {timeout:g} s (exit code "
                          f"{self._exit_code()}); its log {self.log_path} ends: {self.last_log_line()}")

    def _exit_code(self, grace_s: float = 5.0) -> int | None:
        """The exit code, waiting up to ``grace_s`` for it once stdout has closed (a child's stdout reaches its end
        a moment before the child can be reaped); None for a child that still runs."""
        if self.proc.poll() is None and self.ended_at is not None:
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.poll()

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """The ready record (:meth:`wait_event`)."""
        return self.wait_event("ready", timeout)

    def take(self, event: str) -> dict[str, Any] | None:
        """The next record whose ``event`` is ``event`` if it has arrived (those before it go to ``records``)."""
        while True:
            try:
                _, record = self.lines.get_nowait()
            except queue.Empty:
                return None
            if record is None:
                self.lines.put((self.name, None))
                return None
            self.records.append(record)
            if record.get("event") == event:
                return record

    def tail(self, chars: int = 3000) -> str:
        """The end of the child's log (its stderr)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def last_log_line(self) -> str:
        lines = [line.strip() for line in self.tail().splitlines() if line.strip()]
        return lines[-1] if lines else "(empty)"

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the process still runs; False if it had already exited."""
        if not self.alive():
            return False
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def freeze(self) -> bool:
        """SIGSTOP: from the moment this returns the process runs no more code (it sends nothing more) until
        ``stop`` or SIGCONT; its open sockets stay as they are."""
        return self.signal(signal.SIGSTOP)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10.0, grace: float = 0.0) -> int:
        """SIGTERM, wait ``timeout``, SIGKILL if it does not go; reaps the process and closes its pipes. Returns the
        exit code.

        ``grace``: seconds to let a child that is already ending (it printed its exit record) finish on its own
        first. Python restores the default SIGTERM action while it shuts down, so a SIGTERM that lands then
        kills the child (exit code -15) although it finished cleanly."""
        if grace > 0:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        code = terminate(self.proc, timeout)
        self._reader.join(timeout=2.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return code
