"""bus.sched: SCHED_FIFO for every thread of a process where the OS grants it, a clear note where it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bus import sched
from rdp.runtime.process import ROOT


def test_not_requested_leaves_scheduling_alone() -> None:
    before = os.sched_getscheduler(0)
    for priority in (None, 0):
        result = sched.set_fifo(priority)
        assert result.policy == "other" and result.note == "not requested" and result.threads == 0
    assert os.sched_getscheduler(0) == before


@pytest.mark.parametrize("priority", [-1, 100])
def test_out_of_range_priority_is_an_error(priority: int) -> None:
    with pytest.raises(ValueError, match=r"\[1, 99\]"):
        sched.set_fifo(priority)


def test_refusal_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    result = sched.set_fifo(50)
    assert result.policy == "other" and result.priority == 0
    assert "CAP_SYS_NICE" in result.note and result.record()["sched_note"] == result.note


_CHILD = """
import json, os, threading, time
from bus import sched
stop = threading.Event()
early = threading.Thread(target=stop.wait); early.start()
result = sched.set_fifo(7)
late = threading.Thread(target=stop.wait); late.start()
pol = lambda: sorted({os.sched_getscheduler(int(t)) for t in os.listdir('/proc/self/task')})
fifo = pol()
sched.set_normal()
normal = pol()
stop.set()
print(json.dumps({"result": result.record(), "threads": result.threads, "fifo": fifo, "normal": normal,
                  "FIFO": os.SCHED_FIFO, "OTHER": os.SCHED_OTHER, "current": sched.current_policy()}))
"""


def test_every_thread_runs_fifo_and_back() -> None:
    """In a child process (the test process keeps its own policy): a thread started before the call and one started
    after it both run FIFO; ``set_normal`` puts them all back."""
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["result"]["sched"] != "fifo":
        assert "refused" in r["result"]["sched_note"]
        pytest.skip(f"SCHED_FIFO not granted here: {r['result']['sched_note']}")
    assert r["result"]["rt_priority"] == 7 and r["threads"] >= 2
    assert r["fifo"] == [r["FIFO"]], "a thread kept the ordinary policy"
    assert r["normal"] == [r["OTHER"]] and r["current"] == "other"
