"""bus.process.Child and bus.node.serve: events, stopping with grace, no orphans when the parent dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.node import serve
from bus.process import Child, ChildFailed

NODE = '''
import json, signal, sys, time
from bus.node import serve

class Sleeper:
    def __init__(self): self.done = False
    def stop(self, *_): self.done = True
    def run(self):
        print(json.dumps({"event": "tick", "n": 1}), flush=True)
        while not self.done:
            time.sleep(0.01)
        return 7
    def close(self): print("closed", file=sys.stderr, flush=True)

if "stubborn" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(json.dumps({"event": "ready"}), flush=True)
    time.sleep(60)
if "crash" in sys.argv:
    print("the last words", file=sys.stderr, flush=True)
    sys.exit(3)
node = Sleeper()
sys.exit(serve(node, lambda: {"event": "ready", "pid": 1}, lambda result: {"event": "exit", "result": result}))
'''


@pytest.fixture
def module(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sleeper_node.py").write_text(NODE)
    root = str(Path(__file__).resolve().parents[2])
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), root])}


def test_events_then_a_clean_stop(tmp_path: Path, module: dict[str, str]) -> None:
    child = Child("sleeper", "sleeper_node", [], tmp_path / "s.log", env=module)
    try:
        assert child.wait_ready(30.0) == {"event": "ready", "pid": 1}
        assert child.wait_event("tick", 10.0)["n"] == 1
        assert child.take("nothing") is None and child.alive()
    finally:
        code = child.stop(timeout=10.0)
    assert code == 0 and child.last == {"event": "exit", "result": 7}
    assert "closed" in child.tail()


def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path, module: dict[str, str]) -> None:
    child = Child("stubborn", "sleeper_node", ["stubborn"], tmp_path / "s.log", env=module)
    child.wait_ready(30.0)
    t0 = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5.0


def test_a_dead_child_fails_the_wait_naming_its_log(tmp_path: Path, module: dict[str, str]) -> None:
    child = Child("crash", "sleeper_node", ["crash"], tmp_path / "c.log", env=module)
    with pytest.raises(ChildFailed, match=r"crash gave no 'ready' record .*exit code 3.* ends: the last words$"):
        child.wait_ready(30.0)
    assert child.stop() == 3


def test_children_die_with_their_parent(tmp_path: Path, module: dict[str, str]) -> None:
    parent = (f"import json, sys, time; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
              "from pathlib import Path\nfrom bus.process import Child\n"
              f"c = Child('sleeper', 'sleeper_node', [], Path({str(tmp_path / 'p.log')!r}), env={module!r})\n"
              "c.wait_ready(30.0)\nprint(c.pid, flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        os.kill(pid, 0)  # the child runs
        proc.kill()  # SIGKILL: the parent gets no chance to clean up
        proc.wait()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the child outlived its parent")
    finally:
        proc.kill()
        proc.stdout.close()


def test_serve_prints_ready_and_exit_records_and_closes_on_a_stop(capsys) -> None:
    class Stopped(Exception):
        pass

    class Node:
        closed = False

        def stop(self, *_: object) -> None: ...

        def run(self) -> None:
            raise Stopped

        def close(self) -> None:
            Node.closed = True

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert serve(Node(), lambda: {"event": "ready"}, lambda r: {"event": "exit", "r": r}, stopped=(Stopped,)) == 0
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [{"event": "ready"}, {"event": "exit", "r": None}] and Node.closed
