"""Hostile bytes on every socket kind of live nodes: nothing but counted rejects, no exits, streams keep flowing.

    python -m benchmarks.fuzz_nodes [messages=3000] [seconds=3] [seed=0] [checkpoint=RUN] [only=[KIND,...]]

Each socket kind is fuzzed against freshly started real processes on random loopback ports:

* ``robot_cmd``: the robot node's command SUB (realtime, cameras off); rate = its ``state`` messages per second.
* ``robot_tick``: the lockstep robot node's tick server (ROUTER); rate = valid tick round trips per second of a
  well-behaved client interleaved with the fuzz (one per 20 hostile requests).
* ``teleop_operator``: the teleop node's operator SUB, a realtime robot node behind it; rate = the teleop node's
  forwarded ``state`` messages per second.
* ``fast_chunk``: the fast node's chunk SUB (a fake robot in this process, a real slow node planning); rate = the fast
  node's commands per second arriving at the fake robot.
* ``slow_obs``: the observation stream itself (the fake robot's PUB, which the slow node's and the fast node's
  observation SUBs read); rate = the slow node's plans per second.

Per kind, ``messages`` messages sent within ``seconds``, mixing: random bytes (topic prefix kept so SUB filters
pass), structured-hostile headers (a valid header with one field made hostile: shapes with huge / zero / negative /
bool / float dims, wrong dtypes, duplicate or non-str names, meta with ints beyond int64, nested or binary values,
wrong version / stamp / seq / topic, keys dropped, added or reordered), mutations of valid messages (bit flips,
byte sets, truncation, extension, frames dropped or added), semantic hostility (well-formed messages the node must
refuse: wrong shapes, NaN, out-of-range seeds and counts...), and the known killers: a zero-byte array of shape
[2**63, 0]; a reset seed 2**64 - 1 and one of 2**63 - 1 each followed by a seedless reset; a frame one byte over the
socket's limit (counted "size") and frames over its ``ZMQ_MAXMSGSIZE`` (10 MB where that is over it; libzmq drops
the sender's connection, which must come back; the observation SUBs connect, set no such limit, and read them
whole). Valid resets stay out of the mix (each costs the robot node an env reset, ~0.1 s: it would measure resets,
not decoding) but for the killers' few.

Reported per kind: messages tried by family, node exits (must be 0), rejects counted by kind (the nodes' own
counters), rate before (2 s) / during (the fuzz) / after (2 s from 0.5 s after the fuzz; the slow node's plans over
3 s; ticks: 50 round trips each), the fuzzer's disconnects and whether it reconnected, and whether a valid input is
still obeyed afterwards (the TCP moves toward a command; the fast node adopts the slow node's chunks; the slow node
plans). Rates are wall-clock counts on a shared machine (the JSON keeps the load average): they show that streams
flow, not how fast. Prints a table; writes benchmarks/results/fuzz_nodes.json (``out``); the last stdout line is that
JSON.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from benchmarks.report import publish
from bus.cli import UsageError, choose, command
from bus.config import compose
from bus.message import ALLOWED_DTYPES, Message, encode
from bus.transport import Client, Publisher, Subscriber, recv_frame_limit
from rdp.runtime.process import Child, robot_node_args
from sensors.types import MARKER_GRID
from sim.node import hold_command

ANY = "tcp://127.0.0.1:*"
NODE_HZ = 250.0
CMD_LIMIT = 65536  # the robot node's and the teleop node's command / operator frame limit
BIG_LIMIT = 32 * 1024 * 1024  # every other socket's (bus.message.DEFAULT_MAX_FRAME_BYTES)
TEN_MB = 10 * 1024 * 1024

# ------------------------------------------------------------------------------------------------ hostile messages
HOSTILE_DIMS = [0, 0, 1, 3, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1, -1, -(2**63), True, 1.5, None, "3"]
HOSTILE_META = [2**63, 2**64 - 1, 2**63 - 1, -(2**63), -1, 0, [1, 2], {"a": {"b": 1}}, b"", b"x", 1e308, math.inf,
                -math.inf, math.nan, "x" * 1000, None, True]
BAD_DTYPES = [">f4", "|O", "<c8", "f4", "<U3", "|V8", "<M8", 7, None, ["<f4"]]
HOSTILE_FIELDS = {
    "v": [2, 0, "1", None, 1.0, True, [1], 2**64 - 1],
    "t": [math.nan, math.inf, -math.inf, "now", 5, None, [1.0]],
    "seq": [-1, 2**64 - 1, True, 1.5, None, "1", -(2**63)],
    "topic": ["", 7, None, "x" * 300, ["cmd"]],
    "bufs": [{}, None, "x", [], [[]], [None], 5],
    "meta": [[], None, 1, "x", [["a", 1]]],
}


def wire(msg: Message) -> list[bytes]:
    """What a socket delivers for ``msg``: one bytes object per frame."""
    return [bytes(memoryview(f)) for f in encode(msg)]


def raw_message(topic: str, bufs: list[dict], meta: dict, frames: list[bytes], seq: int = 0) -> list[bytes]:
    """A message built by hand (``encode`` would refuse it): header map in wire order, any values msgpack holds."""
    header = {"v": 1, "topic": topic, "t": 1.0, "seq": seq, "bufs": bufs, "meta": meta}
    return [topic.encode(), msgpack.packb(header, use_bin_type=True), *frames]


class HostileStream:
    """Seeded hostile multipart messages for one socket.

    ``good``: valid messages of the socket's protocol (the base of header and mutation families); ``semantic``:
    well-formed messages the node must refuse; ``topics``: prefixes the socket subscribes to (random frames keep
    one, so a SUB filter does not drop them before the node sees them).
    """

    def __init__(self, seed: int, good: list[Message], semantic: list[list[bytes]], topics: tuple[str, ...],
                 max_frame_bytes: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.good = [wire(m) for m in good]
        self.semantic = semantic
        self.topics = topics
        self.max_frame_bytes = max_frame_bytes

    def next(self) -> tuple[str, list[bytes]]:
        r = self.rng.random()
        if r < 0.2:
            return "random", self._random()
        if r < 0.6:
            return "header", self._header()
        if r < 0.85:
            return "mutation", self._mutation()
        return "semantic", self.semantic[int(self.rng.integers(len(self.semantic)))]

    def killers(self, extra: list[list[bytes]] = ()) -> list[tuple[str, list[bytes]]]:
        """The known killers of any socket, plus ``extra`` ones of this node's protocol."""
        good = self.good[0]
        header = msgpack.unpackb(good[1])
        out = []
        if header["bufs"]:
            bufs = [dict(b) for b in header["bufs"]]
            bufs[0]["shape"] = [2**63, 0]
            out.append(raw_message(header["topic"], bufs, header["meta"], [b"", *good[3:]]))
        out.append(raw_message(header["topic"], header["bufs"], {**header["meta"], "seed": 2**64 - 1}, good[2:]))
        out.append([good[0], bytes(self.max_frame_bytes + 1)])  # a frame one byte over the limit: counted "size"
        return [("killer", f) for f in [*out, *extra]]

    def oversized(self) -> list[tuple[str, list[bytes]]]:
        """Frames over the socket's ``ZMQ_MAXMSGSIZE``: libzmq drops the sender's connection, never buffers them."""
        cut = recv_frame_limit(self.max_frame_bytes) + 1
        sizes = sorted({cut, max(cut, TEN_MB)})
        return [("oversized", [self.good[0][0], bytes(n)]) for n in sizes]

    # -------------------------------------------------------------------------------------------- families
    def _topic(self) -> bytes:
        return self.topics[int(self.rng.integers(len(self.topics)))].encode()

    def _random(self) -> list[bytes]:
        rng = self.rng
        frames = [self._topic() + rng.bytes(int(rng.integers(0, 8)))]
        for _ in range(int(rng.integers(0, 5))):
            n = int(rng.integers(0, 200)) if rng.random() < 0.97 else int(rng.integers(0, 2 * self.max_frame_bytes
                                                                                       if self.max_frame_bytes < 2**20
                                                                                       else 200_000))
            frames.append(rng.bytes(n))
        return frames

    def _header(self) -> list[bytes]:
        rng = self.rng
        good = self.good[int(rng.integers(len(self.good)))]
        header = msgpack.unpackb(good[1])
        frames = list(good[2:])
        what = rng.choice(["shape", "shape", "shape", "dtype", "name", "spec", "meta_value", "meta_value", "field",
                           "keys", "order"])
        bufs = header["bufs"]
        j = int(rng.integers(len(bufs))) if bufs else None
        if what == "shape" and j is not None:
            shape = [HOSTILE_DIMS[int(k)] for k in rng.integers(len(HOSTILE_DIMS), size=int(rng.integers(0, 5)))]
            if rng.random() < 0.5:
                shape.insert(int(rng.integers(len(shape) + 1)), 0)
            bufs[j]["shape"] = shape
            frames[j] = self._frame_for(bufs[j], frames[j])
        elif what == "dtype" and j is not None:
            bufs[j]["dtype"] = [*BAD_DTYPES, *sorted(ALLOWED_DTYPES)][int(rng.integers(len(BAD_DTYPES) + 12))]
            frames[j] = self._frame_for(bufs[j], frames[j])
        elif what == "name" and j is not None:
            bufs[j]["name"] = ["", 7, None, bufs[0]["name"], "x" * 300][int(rng.integers(5))]
        elif what == "spec" and j is not None:
            bufs[j] = [{}, [], None, {"name": "a"}, {**bufs[j], "x": 1}][int(rng.integers(5))]
        elif what == "meta_value":
            header["meta"]["k" + str(int(rng.integers(3)))] = HOSTILE_META[int(rng.integers(len(HOSTILE_META)))]
        elif what == "field":
            key = list(HOSTILE_FIELDS)[int(rng.integers(len(HOSTILE_FIELDS)))]
            header[key] = HOSTILE_FIELDS[key][int(rng.integers(len(HOSTILE_FIELDS[key])))]
        elif what == "keys":
            if rng.random() < 0.5:
                header.pop(list(header)[int(rng.integers(len(header)))])
            else:
                header["x"] = 1
        else:  # keys reordered: a valid header the fast path does not know (the complete parse takes it)
            header = dict(reversed(list(header.items())))
        topic = header.get("topic")
        topic_frame = topic.encode() if isinstance(topic, str) and topic and rng.random() < 0.9 else good[0]
        return [topic_frame, msgpack.packb(header, use_bin_type=True), *frames]

    def _frame_for(self, spec: dict, frame: bytes) -> bytes:
        """A frame matching what ``spec`` announces when that is small (so the deep checks run), else ``frame``."""
        shape, dtype = spec.get("shape"), spec.get("dtype")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
            and isinstance(dtype, str) and dtype in ALLOWED_DTYPES):
            return frame  # (math.prod of a str and an int would build that string)
        n = math.prod(shape) * np.dtype(dtype).itemsize
        return bytes(n) if n <= 4096 else frame

    def _mutation(self) -> list[bytes]:
        rng = self.rng
        frames = [bytearray(f) for f in self.good[int(rng.integers(len(self.good)))]]
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(1, len(frames))) if len(frames) > 1 and rng.random() < 0.8 else 0
            frame = frames[i]
            op = rng.choice(["flip", "set", "truncate", "extend", "drop", "add"])
            if op == "flip" and frame:
                frame[int(rng.integers(len(frame)))] ^= 1 << int(rng.integers(8))
            elif op == "set" and frame:
                frame[int(rng.integers(len(frame)))] = int(rng.integers(256))
            elif op == "truncate":
                del frame[int(rng.integers(len(frame) + 1)):]
            elif op == "extend":
                frame.extend(rng.bytes(int(rng.integers(1, 32))))
            elif op == "drop" and len(frames) > 2:
                frames.pop(i)
            elif op == "add":
                frames.insert(i + 1, bytearray(rng.bytes(int(rng.integers(0, 32)))))
        if not frames[0].startswith(tuple(t.encode() for t in self.topics)):
            frames[0] = bytearray(self._topic()) + frames[0]
        return [bytes(f) for f in frames]


def fuzz(stream: HostileStream, send: Callable[[str, list[bytes]], None], n: int, seconds: float,
         extra_killers: list[list[bytes]] = (), between: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Send ``n`` hostile messages paced evenly over ``seconds`` (``send(family, frames)``): the killers and the
    oversized frames spread among them. ``between(i)`` runs after message ``i`` (a well-behaved client's turn)."""
    special = [*stream.killers(list(extra_killers)), *stream.oversized()]
    plan = [stream.next() for _ in range(max(0, n - len(special)))]
    for k, item in enumerate(special):
        plan.insert(int((k + 1) * len(plan) / (len(special) + 1)), item)
    families: Counter[str] = Counter()
    dt = seconds / max(1, len(plan))
    t0 = time.monotonic()
    for i, (family, frames) in enumerate(plan):
        wait = t0 + i * dt - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        send(family, frames)
        families[family] += 1
        if between is not None:
            between(i)
    return {"tried": len(plan), "families": dict(families), "t0": t0, "t1": time.monotonic()}


# ------------------------------------------------------------------------------------------------ measuring
class StreamRate:
    """Arrival times of the messages of ``topics`` at ``address``, taken by a thread with its own subscriber (the
    fuzzing loop's pace never shows up as a lower rate)."""

    def __init__(self, address: str, topics: tuple[str, ...]) -> None:
        self.times: list[float] = []
        self._stop = threading.Event()
        self._sub = Subscriber(address, topics=topics, hwm=100_000)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sub.recv(timeout=0.05) is not None:
                self.times.append(time.monotonic())

    def hz(self, t0: float, t1: float) -> float:
        return _rate(self.times, t0, t1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._sub.close()


def _rate(times: list[float], t0: float, t1: float) -> float:
    n = bisect.bisect_right(times, t1) - bisect.bisect_left(times, t0)
    return round(n / max(t1 - t0, 1e-9), 1)


def _window(seconds: float, settle: float = 0.0) -> tuple[float, float]:
    """(start, end) of a measuring window of ``seconds``, begun after ``settle`` s (a backlog drains first)."""
    time.sleep(settle)
    t0 = time.monotonic()
    time.sleep(seconds)
    return t0, time.monotonic()


class Watched:
    """A raw socket of the fuzzer with a monitor: how often libzmq cut its connection and whether it came back."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)

    def summary(self, settle_s: float = 2.0) -> dict[str, Any]:
        """Disconnects so far, and whether the last one was followed by a new handshake within ``settle_s``."""
        events: list[int] = []
        end = time.monotonic() + settle_s
        while True:
            while self._mon.poll(0):
                events.append(int(recv_monitor_message(self._mon)["event"]))
            dropped = events.count(zmq.EVENT_DISCONNECTED)
            back = not dropped or events[-1] == zmq.EVENT_HANDSHAKE_SUCCEEDED
            if back or time.monotonic() > end:
                return {"disconnects": dropped, "reconnected": back}
            time.sleep(0.05)

    def close(self) -> None:
        self.sock.disable_monitor()
        self._mon.close(linger=0)


def _exit_record(child: Child) -> dict[str, Any]:
    """The exit record a stopped child printed."""
    while not child.lines.empty():
        _, record = child.lines.get_nowait()
        if record is not None and record.get("event") == "exit":
            return record
    for record in reversed(child.records):
        if record.get("event") == "exit":
            return record
    return {}


def _stop(children: list[Child]) -> dict[str, dict[str, Any]]:
    """Stop every child (last started first); per child: alive until now, exit code, exit record."""
    out = {}
    for child in reversed(children):
        alive = child.alive()
        code = child.stop(timeout=15.0)
        out[child.name] = {"alive_until_stopped": alive, "exit_code": code, "record": _exit_record(child)}
    return out




def _command_moves_tcp(pub_address: str, send: Callable[[np.ndarray], None], rise: float = 0.04,
                       timeout: float = 20.0) -> dict[str, Any]:
    """Command ``rise`` m up from where the TCP is, at 100 Hz for 0.8 s of sim time; how far it went."""
    with Subscriber(pub_address, topics=("state",), conflate=True) as states:
        start = states.recv(timeout=timeout)
        if start is None:
            return {"obeyed": False, "why": "no state"}
        target = hold_command(start)
        target[0, 2] += rise
        t_end, deadline = start.meta["sim_time"] + 0.8, time.monotonic() + timeout
        now = start
        while now.meta["sim_time"] < t_end and time.monotonic() < deadline:
            send(target)
            time.sleep(0.01)
            now = states.recv(timeout=0) or now
        end = states.recv(timeout=2.0) or now
    moved = float(end.arrays["tcp_pos"][0, 2] - start.arrays["tcp_pos"][0, 2])
    return {"obeyed": moved > 0.6 * rise, "moved_z_m": round(moved, 4), "commanded_z_m": rise}


def robot_semantic_cmds(arms: int = 1) -> list[list[bytes]]:
    """Well-formed "cmd" / "reset" messages the robot node must refuse (or clip) without moving wrongly."""
    good = np.zeros((arms, 7))
    good[:, :3] = [0.5, 0.0, 0.3]
    nan, rot, far = good.copy(), good.copy(), good.copy()
    nan[0, 1] = np.nan
    rot[0, 3] = 10.0
    far[0, 0] = 1e300
    msgs = [Message("cmd", 1.0, 0, {"target": a}) for a in (
        np.zeros((arms + 1, 7)), np.zeros((arms, 6)), np.zeros(()), good.astype(np.int32), nan, rot, far,
        np.full((arms, 7), np.inf), np.zeros((0, 7)))]
    msgs += [Message("cmd", 1.0, 0, {"pose": good}), Message("cmd", 1.0, 0, {}),
             Message("cmdx", 1.0, 0, {"target": good})]
    msgs += [Message("reset", 1.0, 0, meta={"seed": s}) for s in (-1, 2**63 - 1, 2**32, 1.5, "x", True)]
    return [wire(m) for m in msgs]


def seed_killers(topic: str = "reset") -> list[list[bytes]]:
    """A seed beyond int64 (refused by the bus), int64's largest (refused by the robot node), the largest seed the
    node takes; each followed by a seedless reset (the node's seed + 1 must stay in range)."""
    return [raw_message(topic, [], {"seed": 2**64 - 1}, []), wire(Message(topic, 1.0)),
            wire(Message(topic, 1.0, meta={"seed": 2**63 - 1})), wire(Message(topic, 1.0)),
            wire(Message(topic, 1.0, meta={"seed": 2**32 - 1})), wire(Message(topic, 1.0))]


def _rejects(record: dict[str, Any], key: str = "rejects") -> dict[str, int]:
    value = record.get(key, {})
    return dict(value) if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------------ socket kinds
def fuzz_robot_cmd(n: int, seconds: float, seed: int, tmp: Path) -> dict[str, Any]:
    children = [Child("robot", "sim.node", robot_node_args("wipe", "realtime", 0, False, {"cameras": False}),
                      tmp / "robot_cmd.log")]
    result: dict[str, Any] = {}
    try:
        ready = children[0].wait_ready()
        rate = StreamRate(ready["pub"], ("state",))
        cmd = Publisher(ready["cmd"], bind=False)
        watched = Watched(cmd.socket)
        try:
            if not cmd.wait_for_subscriber("cmd", timeout=30.0):
                raise RuntimeError("the robot node never subscribed to its commands")
            before = _window(2.0)
            stream = HostileStream(seed, [Message("cmd", 1.0, 0, {"target": np.zeros((1, 7))})],
                                   robot_semantic_cmds(), ("cmd", "reset"), CMD_LIMIT)
            sock = cmd.socket
            run = fuzz(stream, lambda _, f: sock.send_multipart(f, copy=False), n, seconds, seed_killers())
            after = _window(2.0, settle=0.5)
            result["fuzzer"] = watched.summary()
            result["valid_after"] = _command_moves_tcp(ready["pub"], lambda t: cmd.publish("cmd", {"target": t}))
            result.update(run_summary(run, rate.hz(*before), rate.hz(run["t0"], run["t1"]), rate.hz(*after)))
        finally:
            watched.close()
            cmd.close()
            rate.close()
    finally:
        stopped = _stop(children)
    record = stopped["robot"]["record"]
    result.update(_exits(stopped), rejects=_rejects(record),
                  counters={k: record.get(k) for k in ("accepted", "clipped", "ticks")})
    return result


def fuzz_robot_tick(n: int, seconds: float, seed: int, tmp: Path) -> dict[str, Any]:
    children = [Child("robot", "sim.node", robot_node_args("wipe", "lockstep", 0, False, {"cameras": False}),
                      tmp / "robot_tick.log")]
    result: dict[str, Any] = {}
    try:
        ready = children[0].wait_ready()
        client = Client(ready["tick"])
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(ready["tick"])
        watched = Watched(raw)
        ticks: list[float] = []
        replies = Counter()

        def tick(arrays: dict | None = None) -> Message:
            reply = client.request("tick", arrays, timeout=30.0)
            ticks.append(time.monotonic())
            return reply

        def between(i: int) -> None:
            while raw.poll(0):  # answers to hostile requests that were valid enough to be answered
                replies[raw.recv_multipart()[1][:16].decode(errors="replace")] += 1
            if i % 20 == 19:
                tick()

        try:
            t0 = time.monotonic()
            for _ in range(50):
                tick()
            before = (t0, time.monotonic())
            good_tick = Message("tick", 1.0, 0, {"target": np.zeros((1, 7))})
            semantic = [wire(Message("tick", 1.0, 0, meta={"node_ticks": v})) for v in (0, -1, 6, 2**63 - 1, True,
                                                                                          1.5, "x")]
            semantic += [f for f in robot_semantic_cmds() if f[0] != b"cmdx"]
            semantic += [wire(Message("ping", 1.0, meta={"topic": t})) for t in (7, "", "x" * 300)]
            semantic += [wire(Message("tock", 1.0)), [b"tick"]]
            stream = HostileStream(seed, [good_tick, Message("ping", 1.0)], semantic, ("tick", "reset", "ping"),
                                   CMD_LIMIT)
            rng = np.random.default_rng(seed + 1)

            def send(family: str, frames: list[bytes]) -> None:
                """In the request envelope (an 8-byte request id; the ROUTER adds our identity); now and then
                without it or with an id of another length, which the server must refuse too."""
                r = rng.random()
                if family in ("killer", "oversized") or r < 0.9:
                    raw.send_multipart([rng.bytes(8), *frames], copy=False)
                elif r < 0.95:
                    raw.send_multipart(frames, copy=False)
                else:
                    raw.send_multipart([rng.bytes(int(rng.integers(0, 16))), *frames], copy=False)

            run = fuzz(stream, send, n, seconds, seed_killers(), between)
            t0 = time.monotonic()
            for _ in range(50):
                tick()
            after = (t0, time.monotonic())
            result["fuzzer"] = watched.summary()
            client.request("reset", meta={"seed": 0}, timeout=30.0)
            start = tick()
            target = hold_command(start)
            target[0, 2] += 0.04
            for _ in range(40):
                end = tick({"target": target})
            moved = float(end.arrays["tcp_pos"][0, 2] - start.arrays["tcp_pos"][0, 2])
            result["valid_after"] = {"obeyed": moved > 0.024, "moved_z_m": round(moved, 4), "commanded_z_m": 0.04}
            result["answers_to_hostile_requests"] = dict(replies)
            result.update(run_summary(run, _rate(ticks, *before), _rate(ticks, run["t0"], run["t1"]),
                                      _rate(ticks, *after), unit="valid ticks/s"))
        finally:
            watched.close()
            raw.close(linger=0)
            client.close()
    finally:
        stopped = _stop(children)
    record = stopped["robot"]["record"]
    result.update(_exits(stopped), rejects=_rejects(record), counters={"accepted": record.get("accepted")})
    return result


def fuzz_teleop_operator(n: int, seconds: float, seed: int, tmp: Path) -> dict[str, Any]:
    children = [Child("robot", "sim.node", robot_node_args("wipe", "realtime", 0, False, {"cameras": False}),
                      tmp / "teleop_robot.log")]
    result: dict[str, Any] = {}
    try:
        robot = children[0].wait_ready()
        children.append(Child("teleop", "teleop.node", [f"robot.pub={robot['pub']}", f"robot.cmd={robot['cmd']}",
                                                         f"addresses.operator={ANY}", f"addresses.feedback={ANY}",
                                                         "web.enabled=false"], tmp / "teleop.log"))
        teleop = children[1].wait_ready()
        rate = StreamRate(teleop["feedback"], ("state",))
        op = Publisher(teleop["operator"], bind=False)
        watched = Watched(op.socket)
        try:
            if not op.wait_for_subscriber("operator", timeout=30.0):
                raise RuntimeError("the teleop node never subscribed to operator messages")
            time.sleep(0.5)  # the teleop node has the robot's state (operator samples before it are only counted)
            before = _window(2.0)
            pose = np.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
            good = {"pose": pose, "grip": np.zeros(1), "clutch": np.ones(1, np.uint8)}
            semantic = [wire(Message("operator", 1.0, 0, {**good, **change}, meta)) for change, meta in (
                ({"pose": np.zeros((3, 7))}, {}), ({"pose": np.full((1, 7), np.nan)}, {}),
                ({"pose": np.zeros((1, 7))}, {}), ({"pose": pose * 10}, {}), ({"grip": np.full(1, 1e300)}, {}),
                ({"clutch": np.ones(1, np.int64)}, {}), ({}, {"frame": "mars"}), ({}, {"frame": 7}),
                ({}, {"sent": math.inf}), ({}, {"sent": math.nan}), ({}, {"sent": 2**63 - 1}), ({}, {"sent": "x"}))]
            semantic += [wire(Message("operator", 1.0, 0, {"pose": pose}))]
            semantic += [wire(Message("reset", 1.0, meta={"seed": s})) for s in (-1, 2**63 - 1, 2**32, 1.5)]
            stream = HostileStream(seed, [Message("operator", 1.0, 0, good, {"frame": "robot", "sent": 1.0})],
                                   semantic, ("operator", "reset"), CMD_LIMIT)
            sock = op.socket
            run = fuzz(stream, lambda _, f: sock.send_multipart(f, copy=False), n, seconds, seed_killers())
            after = _window(2.0, settle=0.5)
            result["fuzzer"] = watched.summary()
            result["valid_after"] = _operator_moves_tcp(robot["pub"], op)
            result.update(run_summary(run, rate.hz(*before), rate.hz(run["t0"], run["t1"]), rate.hz(*after),
                                      unit="forwarded states/s"))
        finally:
            watched.close()
            op.close()
            rate.close()
    finally:
        stopped = _stop(children)
    result.update(_exits(stopped), rejects=_rejects(stopped.get("teleop", {}).get("record", {})),
                  robot_rejects=_rejects(stopped["robot"]["record"]))
    return result


def _operator_moves_tcp(robot_pub: str, op: Publisher, rise: float = 0.04) -> dict[str, Any]:
    """Release, press and hold the clutch, raise the hand ``rise`` m in 3 mm samples at 50 Hz: the TCP follows."""
    with Subscriber(robot_pub, topics=("state",), conflate=True) as states:
        start = states.recv(timeout=20.0)
        if start is None:
            return {"obeyed": False, "why": "no state"}
        pose = np.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])

        def sample(clutch: int, z: float) -> None:
            p = pose.copy()
            p[0, 2] = z
            op.publish("operator", {"pose": p, "grip": np.zeros(1), "clutch": np.full(1, clutch, np.uint8)},
                       {"frame": "robot", "sent": time.monotonic()})
            time.sleep(0.02)

        for _ in range(10):
            sample(0, 0.0)
        for _ in range(5):
            sample(1, 0.0)
        z = 0.0
        while z < rise:
            z = min(rise, z + 0.003)
            sample(1, z)
        for _ in range(50):
            sample(1, rise)
        end = states.recv(timeout=2.0) or start
    moved = float(end.arrays["tcp_pos"][0, 2] - start.arrays["tcp_pos"][0, 2])
    return {"obeyed": moved > 0.6 * rise, "moved_z_m": round(moved, 4), "commanded_z_m": rise}


class FakeRobot:
    """The robot node's streams at 250 Hz from a thread (as ``benchmarks.runtime_loop``): observations, status at
    10 Hz, episode reset events answering resets; counts the commands that arrive. Hostile frames put on ``hostile``
    go out on the same PUB socket, between two ticks (one thread owns the sockets)."""

    def __init__(self) -> None:
        self.pub = Publisher(ANY, hwm=100_000)
        self.cmd = Subscriber(ANY, topics=("cmd", "reset"), bind=True, hwm=100_000)
        self.hostile: queue.Queue[list[bytes]] = queue.Queue()
        self.commands: list[float] = []
        self.episode = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _observation(self, seq: int, sim_time: float, stamp: float) -> list[Message]:
        meta = {"sim_time": sim_time}
        rng = np.random.default_rng(seq)
        state = {"tcp_pos": np.array([[0.5, 0.0, 0.3]]), "tcp_quat": np.array([[0, 1.0, 0, 0]]),
                 "joint_pos": np.zeros((1, 7)), "joint_vel": np.zeros((1, 7)), "gripper_width": np.full(1, 0.02)}
        tactile = {"marker_offset": rng.normal(scale=1e-4, size=(3, *MARKER_GRID, 2)).astype(np.float32),
                   "marker_depth": np.zeros((3, 14, 18), np.float32), "marker_slip": np.zeros((3, 2), np.float32)}
        return [Message("state", stamp, seq, state, meta), Message("tactile", stamp, seq, tactile, meta),
                Message("wrench", stamp, seq, {"wrench": np.zeros((1, 6))}, meta)]

    def _run(self) -> None:
        seq = tick = 0
        next_tick = time.monotonic()
        raw = self.pub.socket
        while not self._stop.is_set():
            while (left := next_tick - time.monotonic()) > 0:
                msg = self.cmd.recv(timeout=left)
                if msg is None:
                    break
                if msg.topic == "reset":
                    self.episode, tick = self.episode + 1, 0
                    self.pub.publish("episode", meta={"event": "reset", "episode": self.episode,
                                                      "seed": msg.meta.get("seed")})
                else:
                    self.commands.append(time.monotonic())
            now = time.monotonic()
            for m in self._observation(seq, tick / NODE_HZ, now):
                raw.send_multipart(encode(m), copy=False)
            if seq % 25 == 0:
                self.pub.publish("status", meta={"episode": self.episode, "held": False, "sim_time": tick / NODE_HZ})
            for _ in range(100):
                try:
                    raw.send_multipart(self.hostile.get_nowait(), copy=False)
                except queue.Empty:
                    break
            seq, tick = seq + 1, tick + 1
            next_tick += 1.0 / NODE_HZ
            if now - next_tick > 1.0 / NODE_HZ:
                next_tick = now + 1.0 / NODE_HZ

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.pub.close()
        self.cmd.close()


class StatsLog:
    """Each child's stats records (``stats_hz`` lines per second), stamped by a thread as they arrive."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.records: dict[str, list[tuple[float, dict]]] = {c.name: [] for c in children}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for child in self.children:
                while not child.lines.empty():
                    _, record = child.lines.get_nowait()
                    if record is not None:
                        child.records.append(record)  # where _exit_record finds it
                        if record.get("event") == "stats":
                            self.records[child.name].append((time.monotonic(), record))
            time.sleep(0.02)

    def latest(self, name: str) -> dict:
        return self.records[name][-1][1] if self.records[name] else {}

    def rate(self, name: str, key: str, t0: float, t1: float) -> float:
        """Growth per second of the counter ``key`` over the records that arrived within [t0, t1]."""
        recs = [(t, r.get(key, 0)) for t, r in list(self.records[name]) if t0 <= t <= t1]
        if len(recs) < 2:
            return 0.0
        (ta, a), (tb, b) = recs[0], recs[-1]
        return round((b - a) / max(tb - ta, 1e-9), 1)

    def wait(self, name: str, predicate: Callable[[dict], bool], timeout: float) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            record = self.latest(name)
            if record and predicate(record):
                return record
            time.sleep(0.05)
        raise TimeoutError(f"{name}: stats never met the condition; last {self.latest(name)}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def fuzz_runtime(n: int, seconds: float, seed: int, tmp: Path, run: Path) -> dict[str, dict[str, Any]]:
    """``fast_chunk`` and ``slow_obs`` on one fast + slow node pair fed by a fake robot."""
    robot = FakeRobot()
    children: list[Child] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        args = [f"checkpoint={run}", "stats_hz=10", "episodes=100000", "perturb=false", "slow.replan_every=4",
                "fast.rt_priority=0", "fast.hold=pose", "fast.start_timeout_s=60"]
        children.append(Child("fast", "rdp.runtime.fast", [*args, f"addresses.robot_pub={robot.pub.address}",
                                                           f"addresses.robot_cmd={robot.cmd.address}"],
                              tmp / "fast.log"))
        fast = children[0].wait_ready()
        children.append(Child("slow", "rdp.runtime.slow", [*args, f"addresses.obs={robot.pub.address}",
                                                           f"addresses.chunk={fast['chunk']}"], tmp / "slow.log"))
        slow = children[1].wait_ready()
        stats = StatsLog(children)
        try:
            stats.wait("fast", lambda r: r.get("chunks", 0) >= 3, timeout=120.0)
            run_json = json.loads((run / "run.json").read_text())
            chunk_shape, anchor_dim = tuple(slow["chunk_shape"]), int(run_json["action_dim"])
            results["fast_chunk"] = _fuzz_fast_chunk(n, seconds, seed, robot, stats, fast["chunk"], chunk_shape,
                                                     anchor_dim)
            results["slow_obs"] = _fuzz_slow_obs(n, seconds, seed + 7, robot, stats)
        finally:
            stats.close()
    finally:
        stopped = _stop(children)
        robot.close()
    exits = _exits(stopped)
    for r in results.values():
        r.update(exits, fast_rejects_whole_run=_rejects(stopped["fast"]["record"]),
                 slow_rejects_whole_run=_rejects(stopped["slow"]["record"]))
    return results


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def _fuzz_fast_chunk(n: int, seconds: float, seed: int, robot: FakeRobot, stats: StatsLog, chunk_address: str,
                     chunk_shape: tuple[int, ...], anchor_dim: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    rogue = Publisher(chunk_address, bind=False)
    watched = Watched(rogue.socket)
    try:
        if not rogue.wait_for_subscriber("chunk", timeout=30.0):
            raise RuntimeError("the fast node's chunk socket never subscribed")
        rejects_before = _rejects(stats.latest("fast"))
        before = _window(2.0)
        chunk = np.zeros(chunk_shape, np.float32)
        anchor = np.zeros(anchor_dim, np.float32)
        stale = 10**6  # an episode the fast node is not in: a well-formed chunk of its own episode would be
        # adopted (the chunk socket trusts its peers; CURVE keeps strangers off remote links)
        meta = {"episode": stale, "obs_step": 8, "start_step": 9, "obs_stamp": 1.0, "plan": 1, "infer_ms": 1.0}
        good = [Message("chunk", 1.0, 0, {"chunk": chunk, "anchor": anchor}, meta),
                Message("alive", 1.0, 0, meta={"episode": stale, "plans": 1, "rejects": 0, "pid": 1, "robot": True})]
        semantic = [wire(Message("chunk", 1.0, 0, {"chunk": chunk, "anchor": anchor}, {**meta, **change}))
                    for change in ({"obs_step": 2**63 - 1, "start_step": 2**63 - 1}, {"episode": -1},
                                   {"obs_step": 5, "start_step": 2}, {"infer_ms": math.inf}, {"obs_stamp": math.nan},
                                   {"plan": "x"}, {"episode": 2**63 - 1})]
        semantic += [wire(Message("chunk", 1.0, 0, arrays, meta)) for arrays in (
            {"chunk": chunk}, {"chunk": np.zeros((3, 3), np.float32), "anchor": anchor},
            {"chunk": chunk.astype(np.float64), "anchor": anchor},
            {"chunk": np.full(chunk_shape, np.nan, np.float32), "anchor": anchor})]
        semantic += [wire(Message("alive", 1.0, meta={"episode": e, "robot": r})) for e, r in
                     ((2**63 - 1, 1), (-5, "yes"), ("x", None))]
        semantic += [wire(Message("chunkx", 1.0, 0, {"chunk": chunk, "anchor": anchor}, meta))]
        stream = HostileStream(seed, good, semantic, ("chunk", "alive"), BIG_LIMIT)
        sock = rogue.socket
        run = fuzz(stream, lambda _, f: sock.send_multipart(f, copy=False), n, seconds)
        after = _window(2.0, settle=0.5)
        result["fuzzer"] = watched.summary()
        chunks = stats.rate("fast", "chunks", *after)
        result["valid_after"] = {"obeyed": chunks > 0, "fast_chunks_adopted_per_s": chunks,
                                 "slow_plans_per_s": stats.rate("slow", "plans", *after)}
        result["rejects"] = _delta(_rejects(stats.latest("fast")), rejects_before)  # this fuzz's, by kind
        result.update(run_summary(run, _rate(robot.commands, *before), _rate(robot.commands, run["t0"], run["t1"]),
                                  _rate(robot.commands, *after), unit="fast node commands/s"))
    finally:
        watched.close()
        rogue.close()
    return result


def _fuzz_slow_obs(n: int, seconds: float, seed: int, robot: FakeRobot, stats: StatsLog) -> dict[str, Any]:
    rejects_before = _rejects(stats.latest("slow"))
    fast_before = _rejects(stats.latest("fast"))
    before = _window(2.0)
    obs = robot._observation(1, 0.1, 1.0)
    semantic = []
    for m in obs:
        for sim_time in (math.inf, math.nan, 1e300, -1.0, "x", 2**63 - 1, None):
            semantic.append(wire(Message(m.topic, 1.0, 5, m.arrays, {"sim_time": sim_time})))
    semantic += [wire(Message("tactile", 1.0, 5, {"marker_offset": np.zeros((2, 2), np.float32)}, {"sim_time": 0.1})),
                 wire(Message("state", 1.0, 5, {"tcp_pos": np.zeros(3, np.uint8)}, {"sim_time": 0.1})),
                 wire(Message("wrench", 1.0, 5, {"wrench": np.full((1, 6), np.inf)}, {"sim_time": 0.1}))]
    semantic += [wire(Message("episode", 1.0, meta={"event": "reset", "episode": e, "seed": s})) for e, s in
                 ((2**63 - 1, 0), (-1, -1), (3, 2**63 - 1), (4, -(2**63)), ("x", 1.5))]
    semantic += [wire(Message("status", 1.0, meta={"episode": e, "seed": s})) for e, s in
                 ((2**63 - 1, 0), (-(2**63), -7), (True, None))]
    good = [*obs, Message("status", 1.0, meta={"episode": 1, "held": False, "sim_time": 0.1}),
            Message("episode", 1.0, meta={"event": "reset", "episode": 1, "seed": 0})]
    stream = HostileStream(seed, good, semantic, ("state", "tactile", "wrench", "status", "episode"), BIG_LIMIT)
    run = fuzz(stream, lambda _, f: robot.hostile.put(f), n, seconds)
    while not robot.hostile.empty():  # the fake robot sends them between its ticks
        time.sleep(0.01)
    run["t1"] = time.monotonic()
    after = _window(3.0, settle=0.5)
    plans = stats.rate("slow", "plans", *after)
    result: dict[str, Any] = {
        "fuzzer": {"disconnects": None, "reconnected": None, "note": "the fuzzer is the PUB the nodes connect to; "
                   "connecting sockets take no ZMQ_MAXMSGSIZE (bus.transport), so they read oversized frames whole "
                   "and count them as size rejects"},
        "valid_after": {"obeyed": plans > 0 and stats.rate("fast", "chunks", *after) > 0, "slow_plans_per_s": plans,
                        "fast_chunks_adopted_per_s": stats.rate("fast", "chunks", *after),
                        "fast_commands_per_s": _rate(robot.commands, *after)},
        "rejects": _delta(_rejects(stats.latest("slow")), rejects_before),  # this fuzz's, by kind
        "slow_stats_after": {k: v for k, v in stats.latest("slow").items() if k not in ("rejects", "infer_ms")},
        "fast_stats_after": {k: stats.latest("fast").get(k) for k in ("episode", "step", "chunks", "stale_chunks",
                                                                       "outdated_chunks", "holding")},
        "fast_obs_rejects": _delta(_rejects(stats.latest("fast")), fast_before),
    }
    result.update(run_summary(run, stats.rate("slow", "plans", *before), stats.rate("slow", "plans", run["t0"],
                                                                                     run["t1"]), plans,
                              unit="slow node plans/s"))
    return result


def run_summary(run: dict[str, Any], before: float, during: float, after: float, unit: str = "states/s") -> dict:
    return {"tried": run["tried"], "families": run["families"], "fuzz_seconds": round(run["t1"] - run["t0"], 2),
            "rate": {"unit": unit, "before": before, "during": during, "after": after}}


def _exits(stopped: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Node exits during the run: a node not alive when we came to stop it (any exit code)."""
    dead = {name: s["exit_code"] for name, s in stopped.items() if not s["alive_until_stopped"]}
    return {"node_exits": len(dead), "exited": dead, "exit_codes": {n: s["exit_code"] for n, s in stopped.items()}}


# ------------------------------------------------------------------------------------------------ main
KINDS = ("robot_cmd", "robot_tick", "teleop_operator", "fast_chunk", "slow_obs")


@dataclass
class FuzzConfig:
    """``configs/benchmarks/fuzz_nodes.yaml``."""

    messages: int = 3000  # hostile messages per socket kind
    seconds: float = 3.0  # the fuzz of one socket kind is spread over this
    seed: int = 0
    checkpoint: str | None = None  # a training run for the fast/slow nodes; None: a tiny one, trained first
    only: list[str] = field(default_factory=lambda: list(KINDS))  # the socket kinds to fuzz
    out: str = "benchmarks/results/fuzz_nodes.json"

    def __post_init__(self) -> None:
        if self.messages < 1 or self.seconds <= 0:
            raise UsageError(f"messages={self.messages} must be >= 1 and seconds={self.seconds} > 0")
        for kind in self.only:
            choose("only", kind, KINDS, "socket kind")


@command("benchmarks.fuzz_nodes")
def main(argv: Sequence[str] | None = None) -> int:
    args = compose(FuzzConfig, "benchmarks/fuzz_nodes", list(sys.argv[1:] if argv is None else argv), "fuzz_nodes",
                   "messages=300 seconds=1 only=[robot_cmd]")
    chosen = args.only
    os.environ.setdefault("MUJOCO_GL", "egl")
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-nodes-"))
    started = time.monotonic()
    kinds: dict[str, dict[str, Any]] = {}
    n, s = args.messages, args.seconds
    if "robot_cmd" in chosen:
        kinds["robot_cmd"] = fuzz_robot_cmd(n, s, args.seed, tmp)
    if "robot_tick" in chosen:
        kinds["robot_tick"] = fuzz_robot_tick(n, s, args.seed + 1, tmp)
    if "teleop_operator" in chosen:
        kinds["teleop_operator"] = fuzz_teleop_operator(n, s, args.seed + 2, tmp)
    if {"fast_chunk", "slow_obs"} & set(chosen):
        if args.checkpoint:
            run = Path(args.checkpoint)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rdp"))
            from test_runtime_units import make_tiny_run

            run = make_tiny_run(tmp)
        runtime = fuzz_runtime(n, s, args.seed + 3, tmp, run)
        kinds.update({k: v for k, v in runtime.items() if k in chosen})
    _print_table(kinds)
    print(f"node logs: {tmp}", file=sys.stderr)
    publish({
        "benchmark": "fuzz_nodes", "messages_per_kind": n, "fuzz_seconds": s, "seed": args.seed,
        "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "zmq": zmq.zmq_version(), "wall_s": round(time.monotonic() - started, 1),
        "kinds": kinds,
        "goals": {"node_exits": 0, "valid_after": True, "rate_during_and_after": "streams keep flowing"},
    }, Path(args.out))
    return 0


def _print_table(kinds: dict[str, dict[str, Any]]) -> None:
    print(f"{'socket kind':16} {'tried':>6} {'exits':>5} {'rejects':>8}  {'rate before/during/after':>26}  "
          f"{'cut/back':>8}  {'valid after':>11}  top reject kinds")
    for name, r in kinds.items():
        rej = r.get("rejects", {})
        top = ", ".join(f"{k} {v}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1])[:6])
        rate = r["rate"]
        fz = r.get("fuzzer", {})
        cut = "-" if fz.get("disconnects") is None else f"{fz['disconnects']}/{'y' if fz['reconnected'] else 'n'}"
        print(f"{name:16} {r['tried']:6d} {r['node_exits']:5d} {sum(rej.values()):8d}  "
              f"{rate['before']:8.1f}/{rate['during']:7.1f}/{rate['after']:7.1f}  {cut:>8}  "
              f"{str(r['valid_after']['obeyed']):>11}  {top}")
    print("rate units: " + "; ".join(f"{k} {r['rate']['unit']}" for k, r in kinds.items()))


if __name__ == "__main__":
    sys.exit(main())
