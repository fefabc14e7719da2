"""Run many independent command lines at once: the shards of an evaluation or a demonstration sweep.

    from bus.sweep import module_command, run_commands

    cmds = [module_command("sim.eval", "task=wipe", f"seed={s}", "episodes=25", f"out=out/shards/{k}")
            for k, s in enumerate((0, 25))]
    for shard in run_commands(cmds, jobs=2):                      # launcher="ray": one Ray task per command
        print(shard.index, shard.returncode, shard.error_line())

Every command is a shell-free argument list (``[sys.executable, "-m", module, *args]``) run as its own process
with one BLAS / OpenMP / torch thread (``ONE_THREAD_ENV``): ``jobs`` processes use ``jobs`` cores, instead of each
starting a thread per core and all of them fighting over the same cores. Each finished command prints one progress
line on stderr and yields a :class:`ShardResult` (exit code, the tails of its stdout and stderr, wall time, host),
in the order of ``commands``.

Launchers:

* ``local`` (default): subprocesses on this machine, ``jobs`` at a time.
* ``ray``: each command is a Ray task (one CPU) that runs the same subprocess on whichever node Ray schedules it,
  ``jobs`` in flight at a time. With ``ray_address`` None, ``ray.init()`` joins the Ray running on this machine
  (``RAY_ADDRESS``, ``ray start``) or else starts one for the sweep; otherwise it joins the cluster at that address
  (``auto``, ``ray://head:10001``, ...). The nodes need the project installed in the same
  Python environment path or their own (the driver's interpreter in ``command[0]`` becomes the node's), and the
  paths the commands read and write (checkpoints, ``out``) on a shared file system. Ray is optional
  (``pip install 'ray>=2.50'``, the ``ray`` extra) and imported only here, when asked for.

Only text crosses a process boundary: a command goes out as a JSON list of strings, a result comes back as a
JSON object of strings and numbers. Nothing of ours is pickled (Ray ships the task function itself by reference).
An interrupt (Ctrl-C) or error in the caller ends every running command before it propagates.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

from bus.cli import CommandError, UsageError, choose, one_line
from bus.process import terminate

LAUNCHERS = ("local", "ray")
# One thread per process for every numeric library a worker may load (torch reads OMP_NUM_THREADS).
ONE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                         "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
# Settings a worker on another Ray node must see as the driver does: offscreen rendering, tracebacks.
FORWARDED_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "SLOWFAST_DEBUG")
RAY_REQUIREMENT = "ray>=2.50"
TAIL_LINES = 20
STOP_GRACE_S = 5.0
RAY_POLL_S = 0.5
# How often the driver looks for a Ctrl-C / SIGTERM while it waits for commands to finish.
POLL_S = 0.2


@dataclass(frozen=True)
class ShardResult:
    """How one command ended. ``stdout_tail`` / ``stderr_tail``: their last ``TAIL_LINES`` lines, each as a
    terminal shows it (the text after its last carriage return, so a progress bar is one line)."""

    index: int
    command: tuple[str, ...]
    returncode: int
    stdout_tail: str
    stderr_tail: str
    wall_s: float
    host: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_line(self) -> str:
        """The last non-empty stderr line (a project command's one-line error), else a line naming the exit code."""
        lines = [line for line in self.stderr_tail.splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit code {self.returncode} and nothing on stderr"


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter, as a shell-free argument list."""
    return [sys.executable, "-m", module, *args]


def split_range(start: int, count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` consecutive integers from ``start`` as at most ``parts`` contiguous ``(first, count)`` shards of
    near-equal size, the larger ones first: ``split_range(0, 5, 2) == [(0, 3), (3, 2)]``."""
    if count < 1 or parts < 1:
        raise UsageError(f"cannot split {count} items into {parts} shards: both must be >= 1")
    parts = min(parts, count)
    size, extra = divmod(count, parts)
    shards, first = [], start
    for k in range(parts):
        n = size + (k < extra)
        shards.append((first, n))
        first += n
    return shards


def check_launcher(launcher: str, jobs: int) -> None:
    """Refuse an unknown launcher or ``jobs < 1`` with one line naming it."""
    choose("launcher", launcher, LAUNCHERS, "launcher")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs={jobs}: expected an integer >= 1 (processes at a time)")


def run_commands(
    commands: Sequence[Sequence[str]],
    *,
    jobs: int = 1,
    launcher: str = "local",
    ray_address: str | None = None,
    env: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ShardResult]:
    """Run every command, ``jobs`` at a time, and return how each ended, in the order given.

    ``env``: variables set for every command on top of the worker's environment and ``ONE_THREAD_ENV``.
    ``labels``: how the progress lines name each command (default: ``shard K``). ``progress``: where the
    progress lines go (default: stderr). A command that fails is reported, not raised: check ``ok``.
    """
    check_launcher(launcher, jobs)
    cmds = [[str(a) for a in c] for c in commands]
    if not cmds:
        return []
    if any(not c for c in cmds):
        raise UsageError("an empty command: expected [program, args...]")
    names = list(labels) if labels is not None else [f"shard {k}" for k in range(len(cmds))]
    if len(names) != len(cmds):
        raise UsageError(f"{len(names)} labels for {len(cmds)} commands")
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    extra = {**ONE_THREAD_ENV, **(env or {})}
    runner = _run_local if launcher == "local" else _run_ray
    results: list[ShardResult | None] = [None] * len(cmds)
    t0 = time.monotonic()
    # closing(): an error here (in `say`) ends the running commands now, not when the traceback is freed.
    with _signals_stop_the_sweep() as interrupted, closing(runner(cmds, jobs, extra, ray_address, interrupted)
                                                            ) as finished:
        for done, result in enumerate(finished, start=1):
            results[result.index] = result
            state = "ok" if result.ok else f"FAILED (exit {result.returncode}): {result.error_line()}"
            say(f"[{done}/{len(cmds)}] {names[result.index]} {state} in {result.wall_s:.1f} s on {result.host}"
                f" ({time.monotonic() - t0:.0f} s elapsed)")
    return [r for r in results if r is not None]


@contextmanager
def _signals_stop_the_sweep() -> Iterator[threading.Event]:
    """While a sweep runs, Ctrl-C (SIGINT) and SIGTERM (a scheduler or ``kill`` ending the caller) only set the
    event this yields; the runner checks it between its waits and raises ``KeyboardInterrupt`` there, so the
    running commands are stopped on the way out. Raising from the handler instead could land inside
    ``concurrent.futures.wait`` while it holds the futures' locks, and the worker threads would then never finish.
    Only the main thread can set handlers; a sweep started elsewhere keeps the process's own."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def note(_signum: int, _frame: object) -> None:
        interrupted.set()

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check(interrupted: threading.Event) -> None:
    if interrupted.is_set():
        raise KeyboardInterrupt("the sweep was interrupted (Ctrl-C or SIGTERM)")


# ----------------------------------------------------------------------------------------------- one command


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    shown = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in shown if line.strip()][-lines:])


def _run_one(spec_json: str, stop: threading.Event | None = None,
             started: Callable[[subprocess.Popen], None] | None = None) -> str:
    """Run the command of ``spec_json`` (``{"command": [...], "env": {...}, "cwd": str | None, "python": str}``)
    and return ``{"returncode", "stdout_tail", "stderr_tail", "wall_s", "host"}`` as JSON text. Runs in the caller's
    thread (local) or in a Ray worker; the driver's interpreter in ``command[0]`` becomes this process's."""
    spec = json.loads(spec_json)
    cmd = list(spec["command"])
    if cmd[0] == spec.get("python"):
        cmd[0] = sys.executable
    host = socket.gethostname()
    cwd = spec.get("cwd")
    t0 = time.monotonic()

    def ended(code: int, out: str, err: str) -> str:
        return json.dumps({"returncode": code, "stdout_tail": _tail(out), "stderr_tail": _tail(err),
                           "wall_s": time.monotonic() - t0, "host": host})

    if cwd is not None and not os.path.isdir(cwd):
        return ended(127, "", f"working directory {cwd} does not exist on {host}: the nodes of a sweep need the "
                              "driver's paths (a shared file system)")
    if stop is not None and stop.is_set():
        return ended(-1, "", "not started: the sweep was stopped")
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", cwd=cwd, env={**os.environ, **spec["env"]})
    except OSError as exc:
        return ended(127, "", f"cannot start {cmd[0]}: {exc.strerror or exc}")
    try:
        if started is not None:
            started(proc)
        out, err = proc.communicate()
    except BaseException:  # Ray cancels a task with KeyboardInterrupt: the command goes with it
        _stop(proc)
        raise
    return ended(proc.returncode, out, err)


def _stop(proc: subprocess.Popen) -> None:
    """End a running command: SIGTERM, then SIGKILL after ``STOP_GRACE_S``."""
    terminate(proc, STOP_GRACE_S)


def _spec(cmd: list[str], env: Mapping[str, str]) -> str:
    return json.dumps({"command": cmd, "env": dict(env), "cwd": os.getcwd(), "python": sys.executable})


def _result(index: int, cmd: list[str], reply: str) -> ShardResult:
    r = json.loads(reply)
    return ShardResult(index=index, command=tuple(cmd), returncode=int(r["returncode"]),
                       stdout_tail=str(r["stdout_tail"]), stderr_tail=str(r["stderr_tail"]),
                       wall_s=float(r["wall_s"]), host=str(r["host"]))


# ----------------------------------------------------------------------------------------------- local


def _run_local(cmds: list[list[str]], jobs: int, env: Mapping[str, str], _address: str | None,
               interrupted: threading.Event) -> Iterator[ShardResult]:
    """Subprocesses on this machine, ``jobs`` at a time (a thread waits on each); results as they finish."""
    stop = threading.Event()
    live: set[subprocess.Popen] = set()
    lock = threading.Lock()

    def started(proc: subprocess.Popen) -> None:
        with lock:
            live.add(proc)
        if stop.is_set():  # stopped between the check in _run_one and Popen: end it now
            _stop(proc)

    def work(k: int) -> ShardResult:
        reply = _run_one(_spec(cmds[k], env), stop, started)
        return _result(k, cmds[k], reply)

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sweep")
    futures: set[Future[ShardResult]] = {pool.submit(work, k) for k in range(len(cmds))}
    try:
        while futures:
            finished, futures = wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)
            _check(interrupted)
            for fut in finished:
                yield fut.result()
    finally:
        stop.set()
        for fut in futures:
            fut.cancel()
        with lock:
            running = list(live)
        for proc in running:
            _stop(proc)
        pool.shutdown(wait=True)


# ----------------------------------------------------------------------------------------------- ray


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CommandError(f"launcher=ray needs Ray, which is not installed: pip install '{RAY_REQUIREMENT}'"
                           " (or the project's extra: pip install -e '.[ray]')") from None
    return ray


def _run_ray(cmds: list[list[str]], jobs: int, env: Mapping[str, str], address: str | None,
             interrupted: threading.Event) -> Iterator[ShardResult]:
    """One Ray task (one CPU) per command, ``jobs`` in flight; results as they finish."""
    ray = import_ray()
    owned = not ray.is_initialized()
    if owned:
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 -- Ray raises several kinds for one cause: no cluster there
            where = "a local Ray" if address is None else f"the Ray cluster at ray_address={address}"
            raise CommandError(f"launcher=ray: cannot start or join {where}: {one_line(exc)}") from exc
    forwarded = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    task = ray.remote(num_cpus=1, max_retries=0)(_run_one)
    pending: dict[Any, int] = {}
    queue = list(range(len(cmds)))
    try:
        while queue or pending:
            while queue and len(pending) < jobs:
                k = queue.pop(0)
                pending[task.remote(_spec(cmds[k], {**forwarded, **env}))] = k
            # A timeout, so that Ctrl-C is seen: Python runs signal handlers only between Ray's blocking calls.
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=RAY_POLL_S)
            _check(interrupted)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    reply = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker or its node died
                    why = (str(exc).strip().splitlines() or [""])[-1]
                    reply = json.dumps({"returncode": -1, "stdout_tail": "", "host": "?", "wall_s": 0.0,
                                        "stderr_tail": f"Ray task failed: {type(exc).__name__}: {why}"})
                yield _result(k, cmds[k], reply)
    finally:
        for ref in pending:
            ray.cancel(ref)  # KeyboardInterrupt in the task: _run_one stops its command
        if pending:  # let them stop it before a shutdown kills the workers (it would orphan the commands)
            ray.wait(list(pending), num_returns=len(pending), timeout=STOP_GRACE_S + 5.0)
        if owned:
            ray.shutdown()
