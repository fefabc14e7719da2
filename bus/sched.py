"""CPU scheduling for the processes of a control loop: real-time priority where the OS grants it, else a clear note.

A 250 Hz loop on a shared machine is late whenever the kernel lets another task (the slow node's inference, a
compiler, a browser) finish its time slice first. Robot control stacks therefore run their loops under the
``SCHED_FIFO`` policy: a runnable FIFO thread preempts every ordinary thread at once. That needs root,
``CAP_SYS_NICE`` or an ``rtprio`` limit (``/etc/security/limits.conf``, e.g. ``@robot - rtprio 95``); without them
:func:`set_fifo` reports why and the process keeps its ordinary priority.

Only loops that sleep most of each period may run FIFO: a FIFO thread that never sleeps starves everything else
on its core (the kernel's RT throttling leaves ordinary tasks 5 %). Callers use it in realtime mode only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

FIFO_MAX = 99


@dataclass(frozen=True)
class SchedResult:
    """What :func:`set_fifo` did: ``policy`` is "fifo" or "other"; ``note`` says why it is not FIFO, if so."""

    policy: str
    priority: int
    threads: int
    note: str = ""

    def record(self) -> dict[str, object]:
        return {"sched": self.policy, "rt_priority": self.priority, **({"sched_note": self.note} if self.note else {})}


def sched_fields(record: dict[str, object]) -> dict[str, object]:
    """The scheduling part of a node's record (what :meth:`SchedResult.record` put there), for reports."""
    return {k: record[k] for k in ("sched", "rt_priority", "sched_note") if k in record}


def _threads() -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:  # no procfs: the calling thread only
        return [0]


def set_fifo(priority: int | None) -> SchedResult:
    """Put every thread of this process under ``SCHED_FIFO`` at ``priority`` (1-99; threads started later inherit
    the policy, so call it before sockets and worker pools exist). ``None`` or 0: leave the scheduling alone.

    Never raises for a refusal: the result's ``note`` names the missing privilege and the process keeps running at
    its ordinary priority, so a laptop without rights still runs the stack, only with a looser tail."""
    if not priority:
        return SchedResult("other", 0, 0, "not requested")
    if not 1 <= priority <= FIFO_MAX:
        raise ValueError(f"real-time priority {priority} must be in [1, {FIFO_MAX}] (or 0/null for none)")
    if not hasattr(os, "sched_setscheduler"):
        return SchedResult("other", 0, 0, "this OS has no SCHED_FIFO (os.sched_setscheduler missing)")
    done = 0
    param = os.sched_param(priority)
    for tid in _threads():
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, param)
            done += 1
        except PermissionError:
            return SchedResult("other", 0, done, "SCHED_FIFO refused: needs root, CAP_SYS_NICE or an rtprio limit "
                                                 "(limits.conf); running at normal priority")
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except OSError as exc:
            return SchedResult("other", 0, done, f"SCHED_FIFO refused: {exc}")
    return SchedResult("fifo", priority, done)


def current_policy() -> str:
    """"fifo", "rr" or "other" for the calling thread."""
    if not hasattr(os, "sched_getscheduler"):
        return "other"
    return {getattr(os, "SCHED_FIFO", -1): "fifo", getattr(os, "SCHED_RR", -2): "rr"}.get(os.sched_getscheduler(0),
                                                                                          "other")


def set_normal() -> None:
    """Every thread of this process back to the ordinary policy (``SCHED_OTHER``); for a process that ran one
    loop under :func:`set_fifo` and goes on with other work."""
    if not hasattr(os, "sched_setscheduler"):
        return
    for tid in _threads():
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except (ProcessLookupError, PermissionError):
            continue
