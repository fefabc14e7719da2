"""The launcher as a supervisor: a killed slow node is restarted (cold or from its warm standby) while the fast node
holds; a dead fast node, or a slow node that keeps dying, stops the run; once a stop is decided the robot node
latches a hold and accepts no further command. Real ``python -m rdp.run`` processes with the tiny checkpoint
(``benchmarks/slow_restart.py`` measures restart times with a shipped one)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bus.message import Message
from bus.transport import Client, Publisher, Subscriber
from rdp.runtime.config import load_config
from rdp.runtime.process import ROOT, Backoff, Child, robot_node_args

TIMEOUT = 120.0  # any one wait below; each returns as soon as its condition holds (a loaded 2-core machine is slow)


# ----------------------------------------------------------------------------------------------- policy


def test_backoff_doubles_within_the_window_and_gives_up_past_max_restarts() -> None:
    b = Backoff(max_restarts=3, window_s=10.0, initial_delay_s=0.5, max_delay_s=1.5)
    assert [b.on_death(t) for t in (0.0, 1.0, 2.0)] == [0.5, 1.0, 1.5]  # doubled, then capped
    assert b.on_death(3.0) is None  # a fourth death within 10 s: give up
    assert b.in_window(10.5) == 2  # the restart at 0 s has left the window...
    assert b.on_death(10.5) == 1.5 and b.in_window(10.5) == 3  # ...so one more is granted (the third in it)
    fresh = Backoff(max_restarts=2, window_s=10.0, initial_delay_s=0.5, max_delay_s=5.0)
    assert fresh.on_death(0.0) == 0.5 and fresh.on_death(20.0) == 0.5  # a child that ran a while comes back at once
    assert Backoff(0, 10.0, 0.1, 1.0).on_death(0.0) is None  # max_restarts=0: never restart


def test_restart_policy_is_per_child_and_checked() -> None:
    cfg = load_config(["restart.slow.max_restarts=2", "restart.slow.standby=false"])
    assert cfg.restart["slow"].max_restarts == 2 and not cfg.restart["slow"].standby
    assert load_config([]).restart["slow"].standby  # the shipped default keeps a warm standby
    with pytest.raises(ValueError, match="only \\['slow'\\] can be restarted"):
        load_config(["restart.fast.max_restarts=1"])
    with pytest.raises(ValueError, match="initial_delay_s"):
        load_config(["restart.slow.initial_delay_s=9", "restart.slow.max_delay_s=1"])


# ----------------------------------------------------------------------------------------------- robot latch


@pytest.mark.timeout(180)
def test_robot_node_latched_hold_refuses_every_later_command(tmp_path: Path) -> None:
    robot = Child("robot", "sim.node", robot_node_args("wipe", "realtime", 0, False, {"watchdog_ms": 50.0,
                                                                                     "cameras": False}),
                  tmp_path / "robot.log")
    try:
        ready = robot.wait_ready(timeout=TIMEOUT)
        with Publisher(ready["cmd"], bind=False) as cmd, \
                Subscriber(ready["pub"], topics=("status", "applied", "state")) as sub:
            assert cmd.wait_for_subscriber("hold", timeout=TIMEOUT)
            state = _next_topic(sub, "state")
            target = np.concatenate([state.arrays["tcp_pos"], [[np.pi, 0.0, 0.0]],
                                     state.arrays["gripper_width"][:, None]], axis=1)
            for _ in range(40):  # followed: commands accepted
                cmd.publish("cmd", {"target": target})
                time.sleep(0.004)
            cmd.publish("hold")
            latched = None
            while latched is None:
                cmd.publish("cmd", {"target": target})  # the commands go on: a fast node that does not know yet
                msg = _next_topic(sub, "status", timeout=0.05, required=False)
                if msg is not None and msg.meta["reason"] == "latched":
                    latched = msg
            assert latched.meta["accepted"] > 0
            cmd.publish("reset", meta={"seed": 3})  # a reset does not end a latched hold
            seen: list[Message] = []
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                cmd.publish("cmd", {"target": target})
                while (msg := sub.recv(timeout=0.004)) is not None:
                    seen.append(msg)
            statuses = [m for m in seen if m.topic == "status"]
            assert statuses and all(m.meta["accepted"] == latched.meta["accepted"] for m in statuses)
            assert statuses[-1].meta["reason"] == "latched" and statuses[-1].meta["rej_latched"] > 0
            assert all(m.meta["reason"] is not None for m in seen if m.topic == "applied")  # never followed again
    finally:
        robot.stop(timeout=10.0)


@pytest.mark.timeout(180)
def test_lockstep_robot_node_answers_a_hold_request_and_refuses_tick_commands(tmp_path: Path) -> None:
    robot = Child("robot", "sim.node", robot_node_args("wipe", "lockstep", 0, False, {"cameras": False}),
                  tmp_path / "robot.log")
    try:
        ready = robot.wait_ready(timeout=TIMEOUT)
        with Client(ready["tick"]) as client:
            state = client.request("tick", timeout=TIMEOUT)
            target = np.concatenate([state.arrays["tcp_pos"], [[np.pi, 0.0, 0.0]],
                                     state.arrays["gripper_width"][:, None]], axis=1)
            assert client.request("tick", {"target": target}, timeout=TIMEOUT).meta["cmd_accepted"] is True
            assert client.request("hold", timeout=TIMEOUT).meta["accepted"] == 1
            reply = client.request("tick", {"target": target}, timeout=TIMEOUT)
            assert reply.meta["cmd_accepted"] is False and reply.meta["reason"] == "latched"
    finally:
        robot.stop(timeout=10.0)


def _next_topic(sub: Subscriber, topic: str, timeout: float = TIMEOUT, required: bool = True) -> Message | None:
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        msg = sub.recv(timeout=left)
        if msg is not None and msg.topic == topic:
            return msg
    assert not required, f"no {topic!r} message within {timeout} s"
    return None


# ----------------------------------------------------------------------------------------------- launcher runs


class LaunchedRun:
    """``python -m rdp.run`` as a subprocess: its live lines, the pids of its children (to kill them), its result."""

    def __init__(self, out: Path, *args: str) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._err = open(out / "launcher.stderr", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "rdp.run", *args, f"out={out}"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self.descendants: set[int] = set()  # every child of the launcher seen: none may outlive the run
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _scan(self) -> None:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                        self.descendants.add(int(d))
                except (OSError, IndexError, ValueError):
                    continue

    def wait_line(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        """The next live line matching ``pattern`` (regex)."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            self._scan()
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"rdp.run ended before a line matching {pattern!r}:\n" + "\n".join(self.log[-40:])
                                     + "\n" + self.stderr())
            self.log.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "\n".join(self.log[-40:]))

    def fast_stats_until(self, predicate, timeout: float = TIMEOUT) -> dict[str, int]:
        """A live ``[fast] ep`` line's numbers satisfying ``predicate``."""
        end = time.monotonic() + timeout
        while True:
            m = self.wait_line(r"^\[fast\] ep (\d+) step (-?\d+) .* chunks (\d+) .* exhausted (\d+) holding (\w+)",
                               timeout=max(0.1, end - time.monotonic()))
            stats = {"episode": int(m[1]), "step": int(m[2]), "chunks": int(m[3]), "exhausted": int(m[4]),
                     "holding": m[5] == "True"}
            if predicate(stats):
                return stats

    def result(self, timeout: float = TIMEOUT * 2) -> tuple[int, dict]:
        """Exit code and results.json once the run ends by itself."""
        end = time.monotonic() + timeout
        while (line := self.lines.get(timeout=max(0.1, end - time.monotonic()))) is not None:
            self.log.append(line)
        code = self.proc.wait(timeout=max(1.0, end - time.monotonic()))
        return code, json.loads((self.out / "results.json").read_text())

    def stderr(self) -> str:
        self._err.flush()
        return (self.out / "launcher.stderr").read_text()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:  # a failed test: the launcher stops its children on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
                self.proc.wait()
        self._err.close()
        end = time.monotonic() + 30.0
        while (alive := [p for p in self.descendants if _alive(p)]) and time.monotonic() < end:
            time.sleep(0.1)
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, f"processes outlived the launcher: {alive}"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextmanager
def _launch(tiny_run: Path, out: Path, *extra: str) -> Iterator[LaunchedRun]:
    run = LaunchedRun(out, f"checkpoint={tiny_run}", "slow.replan_every=4", "stats_hz=10", "fast.start_timeout_s=60",
                      "perturb=false", "video=false", "robot.cameras=false", "seed=0", *extra)
    try:
        yield run
    finally:
        run.close()


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.mark.heavy
@pytest.mark.timeout(400)
def test_killed_slow_node_is_restarted_cold_while_the_fast_node_holds(tiny_run: Path, tmp_path: Path) -> None:
    """No standby: a cold start (seconds) outlasts the running chunk (0.64 s here), so the fast node holds."""
    with _launch(tiny_run, tmp_path / "run", "episodes=2", "max_episode_s=4", "restart.slow.standby=false") as run:
        slow = int(run.wait_line(r"^\[slow\] pid (\d+) ready")[1])
        before = run.fast_stats_until(lambda s: s["chunks"] >= 2)
        _kill(slow)
        run.wait_line(rf"^\[supervisor\] slow pid {slow} died \(exit -9\).*restart 1 of 5.*\(cold start\)")
        new = int(run.wait_line(r"^\[slow\] pid (\d+) ready \(cold start")[1])
        assert new != slow
        code, result = run.result()
    assert code == 0 and result["error"] is None, run.stderr()
    assert result["episodes"] == 2 and result["exit_codes"] == {"fast": 0, "slow": 0, "robot": 0}
    sup = result["supervision"]["slow"]
    assert sup["restarts"] == 1 and sup["standby_deaths"] == []
    (r,) = sup["detail"]
    assert r["died_pid"] == slow and r["pid"] == new and r["exit_code"] == -9 and r["via"] == "cold"
    assert r["backoff_s"] == 0.1 and r["robot_episode"] == before["episode"]
    assert r["ready_s"] > 0 and r["first_chunk_s"] is not None and r["first_chunk_s"] > r["ready_s"]
    assert r["fast_held_s"] > 0  # the chunk ran out before the new node's first one: the fast node held
    assert result["fast_holds"]["count"] >= 1 and result["fast_holds"]["held_s"] >= r["fast_held_s"]
    assert (tmp_path / "run" / "slow.2.log").is_file()


@pytest.mark.heavy
@pytest.mark.timeout(400)
def test_standby_takes_over_and_a_slow_node_that_keeps_dying_stops_the_run_without_a_late_command(
        tiny_run: Path, tmp_path: Path) -> None:
    with _launch(tiny_run, tmp_path / "run", "episodes=3", "max_episode_s=10", "restart.slow.max_restarts=1") as run:
        slow = int(run.wait_line(r"^\[slow\] pid (\d+) ready")[1])
        spare = int(run.wait_line(r"^\[supervisor\] slow standby pid (\d+) ready")[1])
        run.fast_stats_until(lambda s: s["chunks"] >= 2)
        _kill(slow)
        run.wait_line(rf"^\[supervisor\] slow pid {slow} died .*\(warm standby\)")
        assert int(run.wait_line(r"^\[slow\] pid (\d+) ready \(warm standby")[1]) == spare
        _kill(spare)
        code, result = run.result()
    assert code == 1
    assert result["error"].startswith("slow died 2 times within 60 s, more than restart.slow.max_restarts=1 allows")
    assert result["supervision"]["slow"]["detail"][0]["via"] == "standby"
    stop = result["stop"]
    # The stop froze the running fast node, the robot latched its hold, and the robot accepted nothing after that
    # (the fast node, resumed to write its statistics, had its late commands refused).
    assert stop["fast_frozen"] is True and stop["robot_latch"] is not None, stop
    assert stop["accepted_after_latch"] == 0, stop
    assert result["loop"]["robot"]["latch_requests"] == 1
    assert result["exit_codes"]["fast"] == 0 and result["exit_codes"]["robot"] == 0


@pytest.mark.heavy
@pytest.mark.timeout(400)
def test_dead_fast_node_stops_the_run_and_the_robot_holds_with_no_command_accepted_after(
        tiny_run: Path, tmp_path: Path) -> None:
    with _launch(tiny_run, tmp_path / "run", "episodes=2", "max_episode_s=10") as run:
        pub = run.wait_line(r"^\[robot\] pid \d+ ready \(pub (\S+), cmd")[1]
        with Subscriber(pub, topics=("status", "watchdog", "applied"), hwm=100_000) as sub:
            fast = int(run.wait_line(r"^\[fast\] pid (\d+) ready")[1])
            run.fast_stats_until(lambda s: s["chunks"] >= 2 and not s["holding"])
            _kill(fast)
            killed = time.monotonic()
            code, result = run.result()
            seen = list(iter(lambda: sub.recv(timeout=0.5), None))
    assert code == 1 and result["error"].startswith(f"fast (pid {fast}) exited with code -9")
    stop = result["stop"]
    assert stop["fast_frozen"] is False and stop["robot_latch"] is not None and stop["accepted_after_latch"] == 0
    after = [m for m in seen if m.stamp >= killed]
    holds = [m for m in after if m.topic == "watchdog" and m.meta["engaged"]]
    assert holds and holds[-1].meta["reason"] == "latched", [m.meta for m in after if m.topic == "watchdog"]
    latched_at = holds[-1].stamp
    # From the latch on: the status counter of accepted commands stands still; no target but the hold is applied.
    counts = [m.meta.get("accepted", 0) for m in after if m.topic == "status" and m.stamp >= latched_at]
    assert counts and len(set(counts)) == 1 and counts[0] == stop["robot_latch"]["accepted"]
    assert all(m.meta["reason"] is not None for m in after if m.topic == "applied" and m.stamp >= latched_at)
    assert result["exit_codes"]["robot"] == 0


@pytest.mark.heavy
@pytest.mark.timeout(400)
def test_lockstep_run_picks_up_a_restarted_slow_node_without_waiting_out_the_plan_timeout(
        tiny_run: Path, tmp_path: Path) -> None:
    """Lockstep: the fast node waits for each due plan; the dead node's never comes, and a new node cannot plan on
    an observation published before it subscribed. The new node's heartbeat (or the standby's plan) ends the
    wait, so the run goes on instead of sitting out fast.lockstep_wait_s."""
    with _launch(tiny_run, tmp_path / "run", "mode=lockstep", "episodes=2", "max_episode_s=3",
                 "fast.lockstep_wait_s=600") as run:
        slow = int(run.wait_line(r"^\[slow\] pid (\d+) ready")[1])
        run.fast_stats_until(lambda s: s["chunks"] >= 2)
        _kill(slow)
        run.wait_line(rf"^\[supervisor\] slow pid {slow} died \(exit -9\)")
        code, result = run.result()
    assert code == 0 and result["error"] is None, run.stderr()
    assert result["episodes"] == 2 and result["supervision"]["slow"]["restarts"] == 1
    assert result["supervision"]["slow"]["detail"][0]["first_chunk_s"] is not None
    assert result["loop"]["fast"].get("slow_late", 0) == 0  # never waited out the (here 600 s) plan timeout
    assert result["stop"]["robot_latch"] is not None and result["stop"]["accepted_after_latch"] == 0
