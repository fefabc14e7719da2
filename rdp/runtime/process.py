"""Child processes of the launcher (and of tests and benchmarks): start, read JSON lines, stop without orphans;
the back-off a supervisor restarts a dying child with.

Every child runs ``python -m <module> key=value...``, prints JSON lines on stdout (the first one a ready record)
and logs to a file. Children get their own session (a terminal's Ctrl-C reaches only the launcher, which stops
them in order) and ``PR_SET_PDEATHSIG`` = SIGTERM, so even a launcher killed with -9 leaves no orphans behind.
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
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the source tree, for tests and benchmarks; nodes run in the caller's cwd
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup still applies
        pass


class Child:
    """One node process. ``lines`` receives (name, parsed JSON) for every stdout line (non-JSON lines are kept as
    {"text": line}); ``None`` as the record marks end of output. ``ready_at`` / ``ended_at``: monotonic time the
    reader thread saw the ready record / the end of output (not delayed by whoever reads ``lines``)."""

    def __init__(self, name: str, module: str, args: list[str], log_path: Path,
                 lines: queue.Queue | None = None) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.lines: queue.Queue = lines if lines is not None else queue.Queue()
        env = {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", **os.environ}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, stdout=subprocess.PIPE, stderr=self._log,
            text=True, start_new_session=True, preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.ended_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.records: list[dict[str, Any]] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"text": line.rstrip()}
            if self.ready_at is None and isinstance(record, dict) and record.get("event") == "ready":
                self.ready_at = time.monotonic()
            self.lines.put((self.name, record))
        self.ended_at = time.monotonic()
        self.lines.put((self.name, None))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """The ready record; raises with the log's tail if the child dies or stays silent. Only for a child with its
        own queue (the launcher reads a shared one itself)."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                name, record = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if record is None:
                break
            self.records.append(record)
            if record.get("event") == "ready":
                return record
        raise RuntimeError(f"{self.name} gave no ready line (exit code {self.proc.poll()}); log "
                           f"{self.log_path}:\n{self.tail()}")

    def next_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next stdout record with this ``event`` (others are kept in ``records``)."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                _, record = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if record is None:
                break
            self.records.append(record)
            if record.get("event") == event:
                return record
        raise TimeoutError(f"{self.name}: no {event!r} record within {timeout} s; log tail:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

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

    def stop(self, timeout: float = 10.0, grace: float = 0.0) -> int:
        """SIGTERM, wait, SIGKILL if it does not go; reaps the process and closes its pipes. Returns the exit code.

        ``grace``: seconds to let a child that is already ending (it printed its exit record) finish on its own
        first. Python restores the default SIGTERM action while it shuts down, so a SIGTERM that lands then
        kills the child (exit code -15) although it finished cleanly.
        """
        if grace > 0:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)  # a frozen child handles its SIGTERM only once it runs again
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=2.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return code


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
    args = [f"task={task}", f"mode={mode}", f"seed={seed}", f"perturb={str(perturb).lower()}",
            "addresses.pub=tcp://127.0.0.1:*", "addresses.cmd=tcp://127.0.0.1:*", "addresses.tick=tcp://127.0.0.1:*"]
    args += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in extra.items()]
    return args
