"""Fuzz the teleop node's operator socket: every malformed message is counted per kind and dropped, the node
keeps running and still accepts a valid operator sample afterwards."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from bus.message import Message, encode
from bus.transport import Publisher, Subscriber

ROOT = Path(__file__).resolve().parents[2]
ANY = "tcp://127.0.0.1:*"
TIMEOUT = 60.0


class _Child:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout], daemon=True).start()
        self.ready = json.loads(self.lines.get(timeout=TIMEOUT))

    def stop(self) -> dict | None:
        """SIGTERM, wait, return the last JSON line (the exit record) if there is one."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        last = None
        while not self.lines.empty():
            line = self.lines.get_nowait().strip()
            if line.startswith("{"):
                last = json.loads(line)
        return last


def _status(sub: Subscriber, predicate, timeout: float = TIMEOUT) -> Message:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        msg = sub.recv(timeout=max(0.05, end - time.monotonic()))
        if msg is not None and msg.topic == "teleop" and predicate(msg.meta):
            return msg
    raise AssertionError("the teleop node never reported the expected status")


@pytest.mark.timeout(180)
def test_operator_socket_fuzz_is_counted_and_survived(tmp_path: Path) -> None:
    robot = _Child(["sim.node", "task=wipe", "cameras=false", f"addresses.pub={ANY}", f"addresses.cmd={ANY}",
                    f"addresses.tick={ANY}"], tmp_path / "robot.log")
    teleop = None
    try:
        teleop = _Child(["teleop.node", f"robot.pub={robot.ready['pub']}", f"robot.cmd={robot.ready['cmd']}",
                         f"addresses.operator={ANY}", f"addresses.feedback={ANY}", "web.enabled=false"],
                        tmp_path / "teleop.log")
        rng = np.random.default_rng(0)
        good = {"pose": np.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]), "grip": np.zeros(1),
                "clutch": np.zeros(1, np.uint8)}
        with Subscriber(teleop.ready["feedback"], topics=("teleop",)) as sub, \
                Publisher(teleop.ready["operator"], bind=False) as op:
            assert op.wait_for_subscriber("operator", timeout=TIMEOUT)
            raw = op.socket
            frames = encode(Message("operator", 1.0, 0, good, {"frame": "robot"}))
            header = msgpack.unpackb(frames[1])
            nan = good["pose"].copy()
            nan[0, 0] = np.nan

            def send_bad() -> None:
                raw.send_multipart([b"operator" + rng.bytes(40)])  # frames
                raw.send_multipart([b"operator", rng.bytes(50), rng.bytes(8)])  # header
                raw.send_multipart([frames[0], msgpack.packb({**header, "v": 99}), *frames[2:]])  # version
                op.publish("operator", {**good, "pose": np.zeros((3, 7))}, {"frame": "robot"})  # shape
                op.publish("operator", {"pose": good["pose"]}, {"frame": "robot"})  # schema
                op.publish("operator", {**good, "pose": nan}, {"frame": "robot"})  # nonfinite
                op.publish("operator", good, {"frame": "mars"})  # frame
                raw.send_multipart([b"operator", b"x" * 2_000_000])  # size (last: it may cost the connection)

            # A batch can be lost while the connection (re)forms; the check is counting and surviving, so a
            # lost batch is sent again.
            status = None
            for _ in range(10):
                send_bad()
                try:
                    status = _status(sub, lambda m: m["rejects"] >= 7, timeout=5.0)
                    break
                except AssertionError:
                    continue
            assert status is not None, "the teleop node never counted the malformed operator messages"
            before = status.meta["op_samples"]
            for _ in range(60):
                op.publish("operator", good, {"frame": "robot"})
                try:
                    _status(sub, lambda m: m["op_samples"] > before, timeout=1.0)
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError("a valid operator sample was not accepted after the fuzzing")
            assert teleop.proc.poll() is None and robot.proc.poll() is None
    finally:
        exit_record = teleop.stop() if teleop is not None else None
        robot.stop()
    assert exit_record is not None and exit_record.get("event") == "exit", exit_record
    kinds = set(exit_record["rejects"])
    assert {"shape", "schema", "nonfinite", "frame"} <= kinds, exit_record["rejects"]
    assert kinds & {"frames", "header", "version", "size"}, exit_record["rejects"]
